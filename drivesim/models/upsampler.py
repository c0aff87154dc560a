"""Pixel-space video upsampler (Video LDM, Blattmann et al. 2023, sec. 3.3 and app.).

The last stage of the cascade: a diffusion model over high-resolution frames ``[B,T,3,H,W]``
conditioned on the low-resolution frames ``[B,T,3,h,w]`` (H = s h, W = s w, s = ``scale``).
The network is the project's ADM UNet with temporal layers (``models/unet.py``):

- the low-resolution frames, upsampled bicubically to H x W and noise-augmented
  (``upsample_input``, ``augment_lowres``), are concatenated to the noisy frame on channels;
- the augmentation level (0 = clean .. ``max_aug_level``) is a discrete label added to the
  time embedding (the UNet's ``regime`` embedding; as Stable Diffusion's x4 upscaler feeds its
  ``noise_level`` as a class label);
- S clean high-resolution context frames enter the UNet's context path (``models/context.py``)
  with their low-resolution frames, so a chunk of a long video continues the previous chunk's
  last frames (``drivesim.inference.upsampling``) and chunk borders do not flicker;
- ``pixel_unshuffle`` = r > 1 (beyond the paper, for CPU budgets) folds r x r pixel blocks into
  channels before the UNet and back after it, so the UNet runs on an H/r x W/r grid; r = 1 is
  the paper's full-resolution ADM;
- ``residual_scale`` = k > 0 (beyond the paper, as SRDiff, Li et al. 2022) makes the diffusion
  variable the scaled residual k (frame - bicubic input) instead of the frame
  (``to_diffusion`` / ``from_diffusion``): an untrained network already sits at bicubic
  upsampling, and a short training run only has to learn the detail; k = 0 diffuses the frame.

The network is fully convolutional apart from the middle block's self-attention: it trains on
patches and runs on whole frames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from drivesim.models.conditioning import Conditioning
from drivesim.models.unet import UNet
from drivesim.models.unet_blocks import timestep_embedding, zero_
from drivesim.utils.io import DriveSimInputError

if TYPE_CHECKING:  # annotation only: models never import the diffusion package at run time
    from drivesim.diffusion.schedule import DiscreteVPSchedule

UPSAMPLER_KIND = "upsampler"  # model-file kind
HPARAM_NAMES = frozenset({"network", "schedule", "prediction", "aug_level", "max_aug_level", "fps",
                          "num_frames", "scale"})
SCHEDULE_NAMES = frozenset({"num_steps", "kind", "beta_start", "beta_end"})
FRAME_CHANNELS = 3
SKIP_EMBED = 64  # width of the learned skip's timestep MLP


# -- conditioning inputs (pure functions) ----------------------------------------------------
def downsample_frames(video: Tensor, scale: int) -> Tensor:
    """Area downsampling ``[B,T,3,H,W] -> [B,T,3,H/s,W/s]`` (how the module makes its low-res input)."""
    _check_scale(scale, video.shape[-2:], "downsample_frames")
    b = video.shape[0]
    low = F.interpolate(rearrange(video, "b t c h w -> (b t) c h w"), scale_factor=1.0 / scale,
                        mode="area")                                        # [(B T), 3, h, w]
    return rearrange(low, "(b t) c h w -> b t c h w", b=b)


def upsample_input(low: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling ``[B,T,3,h,w] -> [B,T,3,h*s,w*s]``, clamped to [-1, 1]."""
    if low.dim() != 5:
        raise ValueError(f"upsample_input: expected [B,T,3,h,w], got {tuple(low.shape)}")
    if not (isinstance(scale, int) and scale >= 1):
        raise ValueError(f"upsample_input: scale must be an int >= 1, got {scale!r}")
    b = low.shape[0]
    up = F.interpolate(rearrange(low, "b t c h w -> (b t) c h w"), scale_factor=float(scale),
                       mode="bicubic", align_corners=False)                 # [(B T), 3, H, W]
    return rearrange(up.clamp(-1.0, 1.0), "(b t) c h w -> b t c h w", b=b)


def augment_lowres(lowres: Tensor, level: Tensor, schedule: DiscreteVPSchedule,
                   generator: torch.Generator | None = None) -> Tensor:
    """Noise augmentation q(x_t | lowres) of the VP ``schedule``: ``a_t lowres + s_t eps``.

    ``lowres`` ``[B,T,C,H,W]``, ``level`` ``[B]`` int64: level 0 is the clean input and level
    l >= 1 the schedule's timestep l - 1, one level per clip (shared by its frames). eps is
    drawn from ``generator`` (on its own device); ``lowres`` is not written to.
    """
    if lowres.dim() != 5 or level.shape != lowres.shape[:1]:
        raise ValueError(f"augment_lowres: expected lowres [B,T,C,H,W] and level [B], got "
                         f"{tuple(lowres.shape)} and {tuple(level.shape)}")
    if level.is_floating_point() or bool(((level < 0) | (level > schedule.num_steps)).any()):
        raise ValueError(f"augment_lowres: levels must be integers in [0, {schedule.num_steps}], "
                         f"got {level.tolist()}")
    gen_device = generator.device if generator is not None else lowres.device
    noise = torch.randn(lowres.shape, generator=generator, device=gen_device, dtype=torch.float32)
    return schedule.q_sample(lowres, level.long().cpu() - 1, noise.to(lowres.device, lowres.dtype))


def _check_scale(scale: int, hw: Sequence[int], what: str) -> None:
    if not (isinstance(scale, int) and scale >= 1) or hw[0] % scale or hw[1] % scale:
        raise ValueError(f"{what}: size {tuple(hw)} is not divisible by scale {scale!r}")


# -- the network ---------------------------------------------------------------------------
class VideoUpsampler(nn.Module):
    """``forward(x_t [B,T,3,H,W], t [B], cond) -> [B,T,3,H,W]``; the constructor is the config.

    x_t is the noisy diffusion variable (``to_diffusion``: the frames, or their scaled residual
    over the bicubic input); ``cond.lowres`` ``[B,T,3,H,W]`` the upsampled, noise-augmented
    low-resolution frames; ``cond.regime`` ``[B]`` the augmentation level; optional
    ``cond.context`` ``[B,S,3,H,W]`` clean context frames (in the diffusion variable's space)
    with ``cond.context_mask`` ``[B,S]``. ``pixel_unshuffle``, ``residual_scale`` and
    ``learned_skip`` are described in docs/upsampler.md; the other arguments are the UNet's
    (``models/unet.py``). Boxes and labels are not used.
    """

    def __init__(self, scale: int = 4, pixel_unshuffle: int = 1, model_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (), num_head_channels: int = 32,
                 num_heads: int = -1, dropout: float = 0.0, norm_groups: int = 32,
                 use_checkpoint: bool = False, max_frames: int = 8, alpha_mode: str = "per_frame",
                 temporal_position: str = "sinusoidal", temporal_ff: bool = True,
                 context_channels: int = 32, context_input: bool = False,
                 max_aug_level: int = 250, residual_scale: float = 0.0, learned_skip: bool = False,
                 attention_backend: str = "auto") -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: (list(v) if isinstance(v, (tuple, list)) else v)
                                       for k, v in locals().items() if k not in ("self", "__class__")}
        for name, value, low in (("scale", scale, 1), ("pixel_unshuffle", pixel_unshuffle, 1),
                                 ("max_aug_level", max_aug_level, 0)):
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"VideoUpsampler: {name} must be an int >= {low}, got {value!r}")
        if isinstance(residual_scale, bool) or not isinstance(residual_scale, (int, float)) \
                or not residual_scale >= 0:
            raise ValueError(f"VideoUpsampler: residual_scale must be a number >= 0, got {residual_scale!r}")
        self.scale, self.pixel_unshuffle, self.max_aug_level = scale, pixel_unshuffle, max_aug_level
        self.residual_scale = float(residual_scale)
        self.in_channels = self.out_channels = FRAME_CHANNELS  # the diffusion variable's channels
        r2 = pixel_unshuffle ** 2
        self.unet = UNet(in_channels=2 * FRAME_CHANNELS * r2, out_channels=FRAME_CHANNELS * r2,
                         model_channels=model_channels, channel_mult=channel_mult,
                         num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                         num_head_channels=num_head_channels, num_heads=num_heads, dropout=dropout,
                         norm_groups=norm_groups, use_checkpoint=use_checkpoint, use_labels=False,
                         use_boxes=False, temporal=True, max_frames=max_frames, alpha_mode=alpha_mode,
                         temporal_position=temporal_position, temporal_ff=temporal_ff,
                         use_context=True, context_channels=context_channels,
                         num_regimes=max_aug_level + 1, attention_backend=attention_backend,
                         context_input=context_input)
        # out += g(t) x_t, g a small zero-initialised MLP of the timestep (see forward)
        self.skip_gain = (nn.Sequential(nn.Linear(SKIP_EMBED, SKIP_EMBED), nn.SiLU(),
                                        zero_(nn.Linear(SKIP_EMBED, 1))) if learned_skip else None)
        # H, W must be multiples of this: the pixel blocks times the UNet's downsampling
        self.size_multiple = pixel_unshuffle * 2 ** (len(channel_mult) - 1)

    @property
    def image_only(self) -> bool:
        """Temporal layers off (alpha = 1, context ignored): frames are upsampled independently."""
        return self.unet.image_only

    @image_only.setter
    def image_only(self, value: bool) -> None:
        self.unet.image_only = bool(value)

    def to_diffusion(self, frames: Tensor, base: Tensor) -> Tensor:
        """The diffusion variable of ``frames`` [B,T,3,H,W] given their clean bicubic input ``base``
        (same shape): k (frames - base), or the frames themselves when k = 0."""
        k = self.residual_scale
        return frames if k == 0 else (frames - base) * k

    def from_diffusion(self, x: Tensor, base: Tensor) -> Tensor:
        """Frames [B,T,3,H,W] from the diffusion variable ``x`` (inverse of ``to_diffusion``)."""
        k = self.residual_scale
        return x if k == 0 else base + x / k

    def _fold(self, x: Tensor) -> Tensor:
        """[B,T,C,H,W] -> [B,T,C*r*r,H/r,W/r] (r x r pixel blocks into channels, pixel_unshuffle order)."""
        r = self.pixel_unshuffle
        return x if r == 1 else rearrange(x, "b t c (h p) (w q) -> b t (c p q) h w", p=r, q=r)

    def _unfold(self, x: Tensor) -> Tensor:
        """[B,T,C*r*r,H/r,W/r] -> [B,T,C,H,W] (inverse of ``_fold``)."""
        r = self.pixel_unshuffle
        return x if r == 1 else rearrange(x, "b t (c p q) h w -> b t c (h p) (w q)", p=r, q=r)

    def _check(self, x_t: Tensor, t: Tensor, cond: Conditioning | None) -> Conditioning:
        if x_t.dim() != 5 or x_t.shape[2] != FRAME_CHANNELS:
            raise ValueError(f"VideoUpsampler: x_t must be [B,T,3,H,W], got {tuple(x_t.shape)}")
        m = self.size_multiple
        if x_t.shape[-2] % m or x_t.shape[-1] % m:
            raise ValueError(f"VideoUpsampler: frame size {tuple(x_t.shape[-2:])} must be divisible by {m}")
        if cond is None or cond.lowres is None or cond.lowres.shape != x_t.shape:
            got = None if cond is None or cond.lowres is None else tuple(cond.lowres.shape)
            raise ValueError(f"VideoUpsampler: cond.lowres must be [B,T,3,H,W] = {tuple(x_t.shape)}, got {got}")
        level = cond.regime
        if level is None or level.shape != t.shape or level.is_floating_point() \
                or bool(((level < 0) | (level > self.max_aug_level)).any()):
            raise ValueError(f"VideoUpsampler: cond.regime must hold the augmentation level [B] int64 "
                             f"in [0, {self.max_aug_level}], got "
                             f"{None if level is None else level.flatten()[:8].tolist()}")
        return cond

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        """x_t [B,T,3,H,W] noisy frames, t [B] timesteps -> prediction [B,T,3,H,W]."""
        cond = self._check(x_t, t, cond)
        lowres = cond.lowres.to(x_t.dtype)
        x = torch.cat([x_t, lowres], dim=2)                                   # [B, T, 6, H, W]
        context = None
        if cond.context is not None:
            given = cond.context.shape[1]
            context = torch.cat([cond.context.to(x_t.dtype), lowres[:, :given]], dim=2)  # [B, S, 6, H, W]
            context = self._fold(context)                                     # [B, S, 6 r^2, H/r, W/r]
        inner = Conditioning(context=context, context_mask=cond.context_mask, regime=cond.regime)
        out = self._unfold(self.unet(self._fold(x), t, inner))                # [B, T, 3, H, W]
        if self.skip_gain is not None:
            # v-prediction needs a_t / s_t x_t (a gain from ~80 to 0 over t) on every pixel; the
            # UNet would have to carry x_t's 3 r^2 values per cell through its narrow first level
            gain = self.skip_gain(timestep_embedding(t, SKIP_EMBED).to(out.dtype))  # [B, 1]
            out = out + gain[:, :, None, None, None] * x_t
        return out


# -- model files ---------------------------------------------------------------------------
def _check_int(path: Any, name: str, value: Any, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DriveSimInputError(f"expected an int in [{low}, {high}]", path=path, field=f"hparams.{name}",
                                 value=value)
    return value


def _check_hparams(hparams: Any, path: Any) -> dict[str, Any]:
    """The upsampler file's hyper-parameters, checked field by field (``DriveSimInputError``)."""
    if not isinstance(hparams, dict):
        raise DriveSimInputError("upsampler hyper-parameters must be a mapping", path=path, field="hparams",
                                 value=type(hparams).__name__)
    unknown, missing = sorted(set(hparams) - HPARAM_NAMES), sorted(HPARAM_NAMES - {"fps"} - set(hparams))
    if unknown or missing:
        raise DriveSimInputError(f"upsampler hyper-parameters: unknown {unknown}, missing {missing}",
                                 path=path, field="hparams", value=unknown or missing)
    network, schedule = hparams["network"], hparams["schedule"]
    if not isinstance(network, dict):
        raise DriveSimInputError("expected the VideoUpsampler config", path=path, field="hparams.network",
                                 value=type(network).__name__)
    if not isinstance(schedule, dict) or set(schedule) - SCHEDULE_NAMES:
        raise DriveSimInputError(f"expected a schedule mapping with keys from {sorted(SCHEDULE_NAMES)}",
                                 path=path, field="hparams.schedule", value=schedule)
    max_level = _check_int(path, "max_aug_level", hparams["max_aug_level"], 0)
    if network.get("max_aug_level", 250) != max_level:
        raise DriveSimInputError(f"differs from hparams.max_aug_level = {max_level}", path=path,
                                 field="hparams.network.max_aug_level", value=network.get("max_aug_level", 250))
    _check_int(path, "aug_level", hparams["aug_level"], 0, max_level)
    _check_int(path, "schedule.num_steps", schedule.get("num_steps", 1000), max_level + 1)
    scale = _check_int(path, "scale", hparams["scale"], 1)
    if network.get("scale", 4) != scale:
        raise DriveSimInputError(f"differs from hparams.scale = {scale}", path=path,
                                 field="hparams.network.scale", value=network.get("scale", 4))
    _check_int(path, "num_frames", hparams["num_frames"], 1, network.get("max_frames", 8))
    if hparams["prediction"] not in ("v", "eps"):
        raise DriveSimInputError("expected 'v' or 'eps'", path=path, field="hparams.prediction",
                                 value=hparams["prediction"])
    fps = hparams.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
        raise DriveSimInputError("expected a frame rate > 0", path=path, field="hparams.fps", value=fps)
    return hparams


def build_upsampler(hparams: dict[str, Any], state_dict: dict[str, Tensor],
                    path: str | os.PathLike | None = None) -> VideoUpsampler:
    """Rebuild a VideoUpsampler (eval mode) from an ``upsampler`` model file's hparams and weights (strict)."""
    hparams = _check_hparams(hparams, path)
    try:
        network = VideoUpsampler(**hparams["network"])
    except (TypeError, ValueError) as err:  # a config from another version
        raise DriveSimInputError(f"VideoUpsampler config not accepted: {err}", path=path,
                                 field="hparams.network") from err
    try:
        missing, unexpected = network.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # tensor shapes disagree with the config
        raise DriveSimInputError(f"weights do not match the upsampler config: {str(err)[:300]}", path=path,
                                 field="state_dict") from err
    if missing or unexpected:
        raise DriveSimInputError(f"weights do not match the upsampler config: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}", path=path, field="state_dict")
    return network.eval()


