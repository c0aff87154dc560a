"""The rollout loop's model callables, built on the one inference path (``drivesim.inference``).

- :class:`PredictionSampler` — ``predict_segment`` from the video LDM in prediction mode:
  the S context latents are given as the first frames of the window with mask m_S (Video
  LDM §3.1.1, c_S = (m_S ∘ z, m_S)), re-imposed at every sampler step, and guided with
  *context guidance* (classifier-free guidance on the context, S = 0 as the unconditional
  branch; paper §4.1, FVD 534 -> 509) using a per-frame scale
  (:func:`drivesim.diffusion.guidance.context_guidance_scales`). A model with ego-motion
  conditioning also gets the window's commanded ego motion, guided with ``guidance_ego``.
- :class:`InterpolationSampler` — the same with the key frames at both ends of an
  ``r + 1`` frame window (paper: 3 new frames between each key-frame pair, T -> 4T).
- :class:`ImageStartSampler` — the first frame from the box-conditioned image LDM.
- :class:`UpsamplerSampler` (``drivesim.inference.upsampling``) — the pixel-space video
  upsampler over a chunk of decoded frames.
"""

from __future__ import annotations

import torch

from drivesim.diffusion.guidance import context_guidance_scales
from drivesim.diffusion.masks import interpolation_mask
from drivesim.diffusion.samplers import get_sampler
from drivesim.inference import ModelRecord, guidance_scales, sample
from drivesim.inference.upsampling import UpsamplerSampler
from drivesim.models.conditioning import Conditioning
from drivesim.rollout.engine import SegmentCondition

__all__ = ["ImageStartSampler", "InterpolationSampler", "PredictionSampler", "UpsamplerSampler"]


def _conditioning(cond: SegmentCondition, context: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, regime: torch.Tensor | None = None,
                  ego: bool = True) -> Conditioning:
    """The window's conditioning; ``ego`` False leaves the ego motion out (a model without it)."""
    motion = dict(ego_speed=cond.ego_speed, ego_yaw_rate=cond.ego_yaw_rate, ego_known=cond.ego_known) \
        if ego else {}
    return Conditioning(boxes=cond.boxes, box_classes=cond.box_classes, box_ids=cond.box_ids,
                        daynight=cond.daynight, crowd=cond.crowd, context=context,
                        context_mask=mask, regime=regime, **motion)


class _GuidedSampler:
    """Shared settings: the model record, steps, sampler name and label / box / ego guidance."""

    def __init__(self, model: ModelRecord, steps: int, sampler: str = "ddim",
                 guidance_boxes: float = 1.0, guidance_labels: float = 1.0,
                 guidance_ego: float | torch.Tensor = 1.0) -> None:
        get_sampler(sampler)  # an unknown name fails here, before any sampling
        self.model, self.steps, self.sampler = model, int(steps), sampler
        self.guidance_boxes, self.guidance_labels = float(guidance_boxes), float(guidance_labels)
        self.guidance_ego = guidance_ego if isinstance(guidance_ego, torch.Tensor) else float(guidance_ego)
        # a model file without ego conditioning ignores the motion, and scale 0 is the model with
        # the motion dropped (the null embedding): leaving it out spares the ego guidance branch
        self.uses_ego = bool(model.config.get("use_ego", False)) and not (
            isinstance(self.guidance_ego, float) and self.guidance_ego == 0.0)

    def _cond(self, cond: SegmentCondition, context: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, regime: torch.Tensor | None = None) -> Conditioning:
        return _conditioning(cond, context, mask, regime, ego=self.uses_ego)

    def _sample(self, c: Conditioning, context_scale: float | torch.Tensor, num_frames: int,
                latent_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        scales = guidance_scales(c, context=context_scale, labels=self.guidance_labels,
                                 boxes=self.guidance_boxes, ego=self.guidance_ego)
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
        return self._sample(self._cond(cond, context, mask), w, cond.window, context.shape, generator)


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
        c = self._cond(cond, full, mask, regime)
        return self._sample(c, self.guidance_context, cond.window, pair.shape, generator)


class ImageStartSampler(_GuidedSampler):
    """The start frame from the image LDM for the scenario's first boxes: [B, 1, C, h, w]."""

    @torch.no_grad()
    def __call__(self, cond: SegmentCondition, latent_shape: tuple[int, int, int],
                 generator: torch.Generator) -> torch.Tensor:
        return self._sample(self._cond(cond), 1.0, 1, latent_shape, generator)
