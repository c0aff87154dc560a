"""Building blocks of the KL autoencoder (LDM, Rombach et al. 2022, `ldm/modules/diffusionmodules/model.py`)
and of its temporal decoder (Video LDM, Blattmann et al. 2023, Sec. 3.1.1 / Fig. 3).

All 2D blocks work on frames folded into the batch: ``[(B T), C, H, W]``. The temporal
block unfolds time itself and returns the same layout, so it can follow any 2D block.
Reshapes are torch views (``frames_to_clips`` / ``clips_to_frames``), not einops, which the
compiler would otherwise re-trace at every call site.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (LDM uses 32); fewer when the width is small."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


def frames_to_clips(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[(B T), C, H, W] -> [B, C, T, H, W]``, a view."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


def clips_to_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W] -> [(B T), C, H, W]``, a view where the strides allow (channels-last
    frames do), else a copy."""
    return x.transpose(1, 2).flatten(0, 1)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place when no graph is recorded (inference): one activation-sized buffer less
    per block. Only ever applied to a fresh normalisation output, never to a caller's tensor."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """``x [N, C, H, W]`` in channels-last memory order for CPU inference (no graph recorded), else as is.

    Why: oneDNN's CPU convolutions work in an NHWC-like order; an NCHW input is first copied
    into it, one input-sized buffer per conv. Channels-last skips that copy: an encode+decode of
    4 frames at 64x128 (widths 32x(1,2,2,4)) peaks at 20 instead of 28 MiB and runs ~1.2x faster than
    the same model in NCHW (docs/benchmarks.md). Training keeps NCHW, where channels-last measured 2x
    slower (GroupNorm backward); only a frozen encoder run under ``no_grad`` (the temporal stage) takes
    this path while training. Values are the same up to float rounding.
    """
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        return x.contiguous(memory_format=torch.channels_last)
    return x


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1-projected) skip: ``[N, Cin, H, W] -> [N, Cout, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        if not torch.is_grad_enabled():
            return h.add_(self.skip(x))          # inference: into the fresh conv output, no new buffer
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over the ``H*W`` positions of each frame (LDM mid block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        # [N, C, H, W] -> [N, 1 head, H*W, C]
        q, k, v = (t.flatten(2).transpose(1, 2)[:, None] for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out[:, 0].transpose(1, 2).unflatten(2, (h, w))  # -> [N, C, H, W]
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv with LDM's asymmetric (0, 1, 0, 1) padding: ``[N, C, H, W] -> [N, C, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then conv3x3: ``[N, C, H, W] -> [N, C, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def conv3d_frames(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for ``x [B, C, T, H, W]`` (stride 1, 'same' padding), computed on CPU by 2D convs.

    Why: PyTorch's CPU Conv3d falls back to an im2col path whose buffer is ``k_t*k_h*k_w`` times
    the input (113 MiB for 32 ch x 4 x 64 x 128) and is ~3x slower than the 2D kernels. Here
    ``y[t] = bias + sum_k W[:, :, k] * x[t + k - k_t // 2]``, Conv3d's zero time padding included,
    over frames folded into the batch, ``[(B T), C, H, W]``: the centre tap convolves every frame
    at once; each other tap ``d = k - k_t // 2`` convolves only the frames whose partner
    ``t + d`` exists, per clip, and adds into the matching output frames. No padding frames are
    built or convolved and no frame is copied: a slice of a clip's frames is a view, contiguous
    in the channels-last order of inference (``inference_layout``); docs/benchmarks.md,
    "Autoencoder throughput and memory". Other devices use Conv3d (cuDNN).
    """
    if x.device.type != "cpu":
        return conv(x)
    b, t = x.shape[0], x.shape[2]
    kt, r, pad = conv.kernel_size[0], conv.kernel_size[0] // 2, conv.padding[1:]
    frames = clips_to_frames(x)                                          # a view in channels-last order
    if not (frames.is_contiguous() or frames.is_contiguous(memory_format=torch.channels_last)):
        frames = frames.contiguous()                                     # one copy, not one per tap
    y = F.conv2d(frames, conv.weight[:, :, r], conv.bias, padding=pad)   # centre tap, [(B T), C', H, W]
    for k in range(kt):
        d = k - r                                                        # output frame s reads input s + d
        if d == 0 or abs(d) >= t:
            continue                                                     # centre done; a tap on padding only
        weight = conv.weight[:, :, k]
        for i in range(b):
            first = i * t
            src = frames[first + max(d, 0):first + t + min(d, 0)]         # inputs s + d that exist
            y[first + max(-d, 0):first + t - max(d, 0)].add_(F.conv2d(src, weight, None, padding=pad))
    return frames_to_clips(y, t)


class FrameGroupNorm(nn.Module):
    """GroupNorm applied per frame to ``[B, C, T, H, W]``.

    Why per frame: statistics pooled over time would make every output frame depend on the
    whole clip, so the decoder's temporal receptive field would be infinite and chunked
    decoding could never equal whole-clip decoding. Per-frame statistics keep the field finite.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[2]
        return frames_to_clips(self.norm(clips_to_frames(x)), t)


class TemporalConvBlock(nn.Module):
    """Residual 3D-conv block, Video LDM temporal decoder (kernel (3, 3, 3) by default).

    ``[B, C, T, H, W] -> [B, C, T, H, W]``; the last conv is zero-initialised so the block is
    the identity at init. Each conv sees ``kernel_t // 2`` frames either side, so the block's
    temporal receptive radius is ``2 * (kernel_t // 2)`` frames. ``kernel_s = 1`` gives the
    cheaper time-only ``(3, 1, 1)`` convs of Stable Video Diffusion's decoder.
    """

    def __init__(self, channels: int, kernel_t: int = 3, dropout: float = 0.0, kernel_s: int = 3) -> None:
        super().__init__()
        for name, k in (("temporal_kernel", kernel_t), ("temporal_spatial_kernel", kernel_s)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name}: must be an odd positive int, got {k!r}")
        kernel, pad = (kernel_t, kernel_s, kernel_s), (kernel_t // 2, kernel_s // 2, kernel_s // 2)
        self.norm1 = FrameGroupNorm(channels)
        self.conv1 = nn.Conv3d(channels, channels, kernel, padding=pad)
        self.norm2 = FrameGroupNorm(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(channels, channels, kernel, padding=pad)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.receptive_radius = 2 * (kernel_t // 2)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch alone (zero at init): ``forward(x) = x + branch(x)``."""
        h = conv3d_frames(self.conv1, silu(self.norm1(x)))
        return conv3d_frames(self.conv2, self.dropout(silu(self.norm2(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class TemporalMix(nn.Module):
    """``out = alpha * spatial + (1 - alpha) * temporal``, alpha = sigmoid(mix_logit) (Video LDM Eq. 2 style).

    Takes and returns frames folded into the batch, ``[(B T), C, H, W]``; unfolds to
    ``[B, C, T, H, W]`` for the 3D convs. ``image_only`` forces alpha = 1 (the image decoder).
    """

    def __init__(self, channels: int, kernel_t: int = 3, dropout: float = 0.0, alpha_init: float = 0.5,
                 kernel_s: int = 3) -> None:
        super().__init__()
        self.block = TemporalConvBlock(channels, kernel_t, dropout, kernel_s)
        self.mix_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))
        self.receptive_radius = self.block.receptive_radius

    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_logit)

    def forward(self, h: torch.Tensor, num_frames: int, image_only: bool = False) -> torch.Tensor:
        if image_only:
            return h
        if h.shape[0] % num_frames:
            raise ValueError(f"num_frames: batch {h.shape[0]} is not a multiple of {num_frames}")
        x = frames_to_clips(h, num_frames)
        alpha = self.alpha()
        if not torch.is_grad_enabled():
            # inference: alpha * h + (1 - alpha) * (h + branch) = h + (1 - alpha) * branch, in one pass
            # into the fresh branch output instead of four passes and three new buffers (compiled: the
            # same formula without ``out=``, which the compiler fuses and places itself)
            branch = clips_to_frames(self.block.branch(x))
            if torch.compiler.is_compiling():
                return torch.addcmul(h, branch, 1.0 - alpha)
            return torch.addcmul(h, branch, 1.0 - alpha, out=branch)
        temporal = clips_to_frames(self.block(x))
        return alpha * h + (1.0 - alpha) * temporal
