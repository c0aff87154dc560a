"""The real models behind the rollout loop's callables.

- :class:`PredictionSampler` — ``predict_segment`` from the video LDM in prediction mode:
  the S context latents are placed in the first window frames with the mask m_S (Video LDM
  §3.1.1, c_S = (m_S ∘ z, m_S)), re-imposed at every sampler step, and guided with
  *context guidance* (classifier-free guidance on the context, S = 0 as the unconditional
  branch; paper §4.1, FVD 534 -> 509) using a per-frame scale (:func:`context_guidance_scales`).
- :class:`InterpolationSampler` — the same with the key frames at both ends of an
  ``r + 1`` frame window (paper: 3 new frames between each key-frame pair, T -> 4T).
- :class:`ImageStartSampler` — the first frame from the box-conditioned image LDM.
- :func:`load_diffusion_model` — a UNet model file checked for the role it must play.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from drivesim.diffusion.guidance import guided_denoiser
from drivesim.diffusion.masks import with_context
from drivesim.diffusion.parameterization import Denoiser
from drivesim.diffusion.samplers import ddim_sample, dpmpp_2m_sample
from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.models.conditioning import Conditioning
from drivesim.models.context import interpolation_mask, prediction_mask
from drivesim.models.model_files import load_model_file
from drivesim.models.unet import UNet
from drivesim.rollout.engine import SegmentCondition
from drivesim.utils.io import DriveSimInputError

LDM_KIND = "ldm"  # model-file kind of image / video / interpolation UNets (see docs/rollout.md)
ROLES = ("image", "prediction", "interpolation")
GUIDANCE_SCHEDULES = ("constant", "taper")
SAMPLERS = {"ddim": ddim_sample, "dpmpp_2m": dpmpp_2m_sample}


@dataclass
class DiffusionModel:
    unet: UNet
    schedule: DiscreteVPSchedule
    prediction: str
    path: Path
    hparams: dict  # the model file's hyper-parameters (``fps``, ``num_frames`` when recorded)

    def denoiser(self) -> Denoiser:
        return Denoiser(self.unet, self.schedule, self.prediction)


def _role_problem(config: dict, role: str) -> tuple[str, object] | None:
    """(field, value) that disqualifies a UNet config from ``role``, or None."""
    temporal, ctx, regimes = config.get("temporal"), config.get("use_context"), config.get("num_regimes", 0)
    if role == "image" and temporal:
        return "unet.temporal", temporal
    if role in ("prediction", "interpolation") and not temporal:
        return "unet.temporal", temporal
    if role in ("prediction", "interpolation") and not ctx:
        return "unet.use_context", ctx
    if role == "prediction" and regimes:
        return "unet.num_regimes", regimes
    if role == "interpolation" and not regimes:
        return "unet.num_regimes", regimes
    return None


def load_diffusion_model(path: str | Path, role: str) -> DiffusionModel:
    """Load an ``ldm`` model file (hparams ``unet``, ``schedule``, ``prediction``) for ``role``.

    A file that is not an LDM (e.g. an autoencoder) or an LDM of another role (an image
    model given as ``--video-ckpt``) raises ``DriveSimInputError`` naming file and field.
    """
    path = Path(path)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not path.is_file():
        raise DriveSimInputError("checkpoint not found", path=path)
    hparams, state = load_model_file(path, LDM_KIND)
    config = hparams.get("unet")
    if not isinstance(config, dict):
        raise DriveSimInputError("LDM model file has no 'unet' hyper-parameters", path=path,
                                 field="hparams.unet", value=type(config).__name__)
    problem = _role_problem(config, role)
    if problem is not None:
        kind = "a prediction (video, context) model" if role == "prediction" else f"an {role} model"
        raise DriveSimInputError(f"this checkpoint is not {kind}", path=path, field=problem[0],
                                 value=problem[1])
    try:
        unet = UNet(**config)
    except (TypeError, ValueError) as err:  # a config from another UNet version
        raise DriveSimInputError(f"UNet hyper-parameters not accepted: {err}", path=path,
                                 field="hparams.unet") from err
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DriveSimInputError(f"weights do not match the UNet config: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}", path=path, field="state_dict")
    schedule = DiscreteVPSchedule(**hparams.get("schedule", {}))
    return DiffusionModel(unet.eval(), schedule, hparams.get("prediction", "v"), path, hparams)


def context_guidance_scales(window: int, num_context: int, scale: float, kind: str,
                            taper_to: float = 0.25) -> torch.Tensor:
    """Per-frame context-guidance scale w [T].

    ``constant``: w everywhere. ``taper``: w on the first new frame, falling linearly to
    1 + (w - 1) * taper_to on the last frame, so the frames that become the next segment's
    context get the least guidance: constant guidance saturates and the saturation builds
    up over rollout rounds (DESIGN §4). Context frames are re-imposed, their scale is moot.
    """
    if kind not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance schedule must be one of {GUIDANCE_SCHEDULES}, got {kind!r}")
    w = torch.full((window,), float(scale), dtype=torch.float32)
    new = window - num_context
    if kind == "taper" and new > 1:
        low = 1.0 + (scale - 1.0) * taper_to
        w[num_context:] = torch.linspace(float(scale), low, new)
    return w


def _conditioning(cond: SegmentCondition, context: torch.Tensor | None,
                  mask: torch.Tensor | None, regime: torch.Tensor | None = None) -> Conditioning:
    return Conditioning(boxes=cond.boxes, box_classes=cond.box_classes, box_ids=cond.box_ids,
                        daynight=cond.daynight, crowd=cond.crowd, context=context,
                        context_mask=mask, regime=regime)


class _GuidedSampler:
    """Shared plumbing: guidance scales, the sampler loop and noise from the generator."""

    def __init__(self, model: DiffusionModel, steps: int, sampler: str = "ddim",
                 guidance_boxes: float = 1.0, guidance_labels: float = 1.0) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
        self.model, self.steps, self.sample = model, int(steps), SAMPLERS[sampler]
        self.guidance_boxes, self.guidance_labels = float(guidance_boxes), float(guidance_labels)

    def _scales(self, cond: SegmentCondition, extra: dict) -> dict:
        scales = dict(extra)
        if self.guidance_labels != 1.0:
            scales["labels"] = self.guidance_labels
        if self.guidance_boxes != 1.0 and cond.boxes is not None:
            scales["boxes"] = self.guidance_boxes
        return scales

    def _run(self, c: Conditioning, scales: dict, shape: tuple[int, ...], generator: torch.Generator,
             context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        denoise = guided_denoiser(self.model.denoiser(), c, scales)
        if context is not None:
            denoise = with_context(denoise, context, mask)  # re-impose c_S every step
        x_t = torch.randn(shape, generator=generator)
        return self.sample(denoise, x_t, self.model.schedule, self.steps, generator=generator)


class PredictionSampler(_GuidedSampler):
    """``predict_segment(context [B,S,C,h,w], cond, generator) -> [B,T,C,h,w]``."""

    def __init__(self, model: DiffusionModel, steps: int, guidance_context: float = 1.5,
                 guidance_schedule: str = "taper", **kwargs) -> None:
        super().__init__(model, steps, **kwargs)
        self.guidance_context, self.guidance_schedule = float(guidance_context), guidance_schedule
        context_guidance_scales(2, 1, 1.0, guidance_schedule)  # validate the name early

    @torch.no_grad()
    def __call__(self, context: torch.Tensor, cond: SegmentCondition,
                 generator: torch.Generator) -> torch.Tensor:
        b, s = context.shape[:2]
        shape = (b, cond.window, *context.shape[2:])  # [B, T, C, h, w]
        full = context.new_zeros(shape)
        full[:, :s] = context  # clean context latents in the first S frames
        mask = prediction_mask(b, cond.window, s)  # [B, T]
        w = context_guidance_scales(cond.window, s, self.guidance_context, self.guidance_schedule)
        scales = self._scales(cond, {"context": w} if self.guidance_context != 1.0 else {})
        return self._run(_conditioning(cond, full, mask), scales, shape, generator, full, mask)


class InterpolationSampler(_GuidedSampler):
    """``interpolate(pair [B,2,C,h,w], cond, generator) -> [B,r+1,C,h,w]``, keys at both ends."""

    def __init__(self, model: DiffusionModel, steps: int, regime: int = 0,
                 guidance_context: float = 1.0, **kwargs) -> None:
        super().__init__(model, steps, **kwargs)
        self.regime, self.guidance_context = int(regime), float(guidance_context)

    @torch.no_grad()
    def __call__(self, pair: torch.Tensor, cond: SegmentCondition,
                 generator: torch.Generator) -> torch.Tensor:
        b = pair.shape[0]
        shape = (b, cond.window, *pair.shape[2:])  # [B, r + 1, C, h, w]
        full = pair.new_zeros(shape)
        full[:, 0], full[:, -1] = pair[:, 0], pair[:, 1]
        mask = interpolation_mask(b, cond.window)  # ones on frames 0 and r
        regime = torch.full((b,), self.regime, dtype=torch.long)
        scales = self._scales(cond, {"context": self.guidance_context}
                              if self.guidance_context != 1.0 else {})
        return self._run(_conditioning(cond, full, mask, regime), scales, shape, generator, full, mask)


class ImageStartSampler(_GuidedSampler):
    """The start frame from the image LDM for the scenario's first boxes: [B, 1, C, h, w]."""

    @torch.no_grad()
    def __call__(self, cond: SegmentCondition, latent_shape: tuple[int, int, int],
                 generator: torch.Generator) -> torch.Tensor:
        b = cond.daynight.shape[0]
        shape = (b, 1, *latent_shape)
        return self._run(_conditioning(cond, None, None), self._scales(cond, {}), shape, generator)
