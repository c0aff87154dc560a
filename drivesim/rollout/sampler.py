"""The rollout loop's model callables, built on the one inference path (``drivesim.inference``).

- :class:`PredictionSampler` — ``predict_segment`` from the video LDM in prediction mode:
  the S context latents are given as the first frames of the window with mask m_S (Video
  LDM §3.1.1, c_S = (m_S ∘ z, m_S)), re-imposed at every sampler step, and guided with
  *context guidance* (classifier-free guidance on the context, S = 0 as the unconditional
  branch; paper §4.1, FVD 534 -> 509) using a per-frame scale
  (:func:`drivesim.diffusion.guidance.context_guidance_scales`).
- :class:`InterpolationSampler` — the same with the key frames at both ends of an
  ``r + 1`` frame window (paper: 3 new frames between each key-frame pair, T -> 4T).
- :class:`ImageStartSampler` — the first frame from the box-conditioned image LDM.
- :class:`UpsamplerSampler` — the pixel-space video upsampler over a chunk of decoded frames:
  the low-resolution frames, bicubic-upsampled and noise-augmented at level ``aug_level``
  (paper: 150), condition every frame; the previous chunk's last output frames are the context.
"""

from __future__ import annotations

import torch

from drivesim.diffusion.guidance import context_guidance_scales
from drivesim.diffusion.masks import interpolation_mask
from drivesim.diffusion.samplers import get_sampler
from drivesim.inference import ModelRecord, guidance_scales, sample
from drivesim.models.conditioning import Conditioning
from drivesim.rollout.engine import SegmentCondition


def _conditioning(cond: SegmentCondition, context: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, regime: torch.Tensor | None = None) -> Conditioning:
    return Conditioning(boxes=cond.boxes, box_classes=cond.box_classes, box_ids=cond.box_ids,
                        daynight=cond.daynight, crowd=cond.crowd, context=context,
                        context_mask=mask, regime=regime)


class _GuidedSampler:
    """Shared settings: the model record, steps, sampler name and label / box guidance."""

    def __init__(self, model: ModelRecord, steps: int, sampler: str = "ddim",
                 guidance_boxes: float = 1.0, guidance_labels: float = 1.0) -> None:
        get_sampler(sampler)  # an unknown name fails here, before any sampling
        self.model, self.steps, self.sampler = model, int(steps), sampler
        self.guidance_boxes, self.guidance_labels = float(guidance_boxes), float(guidance_labels)

    def _sample(self, c: Conditioning, context_scale: float | torch.Tensor, num_frames: int,
                latent_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        scales = guidance_scales(c, context=context_scale, labels=self.guidance_labels,
                                 boxes=self.guidance_boxes)
        return sample(self.model, c, num_frames, tuple(latent_shape[-2:]), steps=self.steps,
                      sampler=self.sampler, scales=scales, generator=generator)


class PredictionSampler(_GuidedSampler):
    """``predict_segment(context [B,S,C,h,w], cond, generator) -> [B,T,C,h,w]``."""

    def __init__(self, model: ModelRecord, steps: int, guidance_context: float = 1.5,
                 guidance_schedule: str = "taper", **kwargs) -> None:
        super().__init__(model, steps, **kwargs)
        self.guidance_context, self.guidance_schedule = float(guidance_context), guidance_schedule
        context_guidance_scales(2, 1, 1.0, guidance_schedule)  # validate the name early

    @torch.no_grad()
    def __call__(self, context: torch.Tensor, cond: SegmentCondition,
                 generator: torch.Generator) -> torch.Tensor:
        b, s = context.shape[:2]
        mask = torch.ones(b, s)  # the S given frames come first: m_S = 1 on them
        w = (context_guidance_scales(cond.window, s, self.guidance_context, self.guidance_schedule)
             if self.guidance_context != 1.0 else 1.0)
        return self._sample(_conditioning(cond, context, mask), w, cond.window, context.shape, generator)


class InterpolationSampler(_GuidedSampler):
    """``interpolate(pair [B,2,C,h,w], cond, generator) -> [B,r+1,C,h,w]``, keys at both ends."""

    def __init__(self, model: ModelRecord, steps: int, regime: int = 0,
                 guidance_context: float = 1.0, **kwargs) -> None:
        super().__init__(model, steps, **kwargs)
        self.regime, self.guidance_context = int(regime), float(guidance_context)

    @torch.no_grad()
    def __call__(self, pair: torch.Tensor, cond: SegmentCondition,
                 generator: torch.Generator) -> torch.Tensor:
        b = pair.shape[0]
        full = pair.new_zeros(b, cond.window, *pair.shape[2:])  # [B, r + 1, C, h, w]
        full[:, 0], full[:, -1] = pair[:, 0], pair[:, 1]
        mask = interpolation_mask(b, cond.window)  # ones on frames 0 and r
        regime = torch.full((b,), self.regime, dtype=torch.long)
        c = _conditioning(cond, full, mask, regime)
        return self._sample(c, self.guidance_context, cond.window, pair.shape, generator)


class ImageStartSampler(_GuidedSampler):
    """The start frame from the image LDM for the scenario's first boxes: [B, 1, C, h, w]."""

    @torch.no_grad()
    def __call__(self, cond: SegmentCondition, latent_shape: tuple[int, int, int],
                 generator: torch.Generator) -> torch.Tensor:
        return self._sample(_conditioning(cond), 1.0, 1, latent_shape, generator)


class UpsamplerSampler:
    """``upsample(low [B,S+n,3,h,w], hi_context [B,S,3,H,W] | None, generator) -> [B,S+n,3,H,W]``.

    ``chunk`` frames per call (the upsampler's training window, 8) with ``context`` output
    frames carried from the previous chunk; the context frames come back unchanged.
    """

    def __init__(self, model: ModelRecord, steps: int, aug_level: int | None = None, sampler: str = "ddim",
                 context: int = 2) -> None:
        get_sampler(sampler)
        self.model, self.steps, self.sampler = model, int(steps), sampler
        self.scale = int(model.hparams.get("scale") or model.network.scale)
        self.aug_level = int(model.hparams.get("aug_level", 150) if aug_level is None else aug_level)
        self.chunk, self.context = int(model.hparams.get("num_frames") or 8), int(context)

    @torch.no_grad()
    def __call__(self, low: torch.Tensor, hi_context: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        from drivesim.models.upsampler import augment_lowres, upsample_input

        b, t = low.shape[:2]
        level = torch.full((b,), self.aug_level, dtype=torch.long)
        lowres = augment_lowres(upsample_input(low, self.scale), level, self.model.schedule, generator)
        s = 0 if hi_context is None else hi_context.shape[1]
        c = Conditioning(lowres=lowres, regime=level, context=hi_context,
                         context_mask=None if hi_context is None else torch.ones(b, s))
        return sample(self.model, c, t, tuple(lowres.shape[-2:]), steps=self.steps, sampler=self.sampler,
                      generator=generator)
