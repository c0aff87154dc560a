"""Temporal layers of the video UNet (Video LDM, Blattmann et al. CVPR 2023, sec. 3.1).

After every spatial layer l_theta^i a temporal layer l_phi^i is inserted and the two are
blended: z' = alpha * z_spatial + (1 - alpha) * l_phi(z_spatial), alpha = sigmoid(param)
(paper eq. 3 / Fig. 4; docs/architecture.md, "Temporal blend"). Residual blocks get a
residual 3D-conv block with kernel (3,1,1); spatial transformers get temporal attention over
the T frames at each spatial position, with sinusoidal frame positions. The last layer of
every temporal block is zero-initialised, so a fresh video UNet equals the image UNet on every
frame.

`VideoResBlock` / `VideoSpatialTransformer` subclass the spatial blocks, so the spatial
parameter names (and an image UNet's state dict) are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drivesim.models.attention import MultiHeadAttention
from drivesim.models.unet_blocks import (
    BlockState,
    FeedForward,
    ResBlock,
    SpatialTransformer,
    group_norm,
    zero_,
)

ALPHA_MODES = ("per_frame", "scalar")
POSITION_MODES = ("sinusoidal", "relative")


def check_frames(frames: int, max_frames: int, what: str) -> None:
    if frames > max_frames:
        raise ValueError(f"{what}: T={frames} frames exceeds max_frames={max_frames} supported "
                         f"by the temporal position embedding / per-frame alpha")


class AlphaBlender(nn.Module):
    """out = alpha * spatial + (1 - alpha) * temporal, alpha = sigmoid(mix) per frame or scalar."""

    def __init__(self, mode: str = "per_frame", max_frames: int = 16, init: float = 0.5) -> None:
        super().__init__()
        if mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {mode!r}")
        self.mode, self.max_frames = mode, max_frames
        self.mix = nn.Parameter(torch.full((max_frames if mode == "per_frame" else 1,), init))

    def alpha(self, frames: int) -> Tensor:
        """-> alpha [T] (per frame) or [1]."""
        if self.mode == "scalar":
            return torch.sigmoid(self.mix)
        check_frames(frames, self.max_frames, "AlphaBlender")
        return torch.sigmoid(self.mix[:frames])

    def forward(self, spatial: Tensor, temporal: Tensor, frames: int) -> Tensor:
        """spatial, temporal [(B T), C, H, W] -> blended [(B T), C, H, W]."""
        alpha = self.alpha(frames)
        if self.mode == "per_frame":
            alpha = alpha.repeat(spatial.shape[0] // frames)[:, None, None, None]  # [T] -> [(B T), 1, 1, 1]
        alpha = alpha.to(spatial.dtype)
        return alpha * spatial + (1 - alpha) * temporal


class TemporalConvBlock(nn.Module):
    """Residual 3D-conv block, kernels (3,1,1) over [B, C, T, H, W] (paper sec. 3.1).

    With ``context_channels`` > 0 the downsampled context c_S is added after the first conv
    by its own zero-initialised (3,1,1) conv: this equals concatenating c_S to the conv input
    (paper sec. 3.1.1), and keeps identity at init.
    """

    def __init__(self, channels: int, context_channels: int = 0, dropout: float = 0.0,
                 norm_groups: int = 32) -> None:
        super().__init__()
        kernel, pad = (3, 1, 1), (1, 0, 0)
        self.norm1 = group_norm(channels, norm_groups)
        self.conv1 = nn.Conv3d(channels, channels, kernel, padding=pad)
        self.context_in = (zero_(nn.Conv3d(context_channels, channels, kernel, padding=pad))
                           if context_channels else None)
        self.norm2 = group_norm(channels, norm_groups)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv3d(channels, channels, kernel, padding=pad))

    def forward(self, h: Tensor, frames: int, context: Tensor | None = None) -> Tensor:
        """h [(B T), C, H, W], context [(B T), Cc, H, W] | None -> [(B T), C, H, W]."""
        height, width = h.shape[-2:]
        x = _time_major(h, frames)  # [B, C, T, (H W)]: GroupNorm stats as in 5-D
        y = _conv_t(self.conv1, self.act(self.norm1(x)))
        if self.context_in is not None:
            if context is None:
                raise ValueError("TemporalConvBlock: built with context but none was given")
            y = y + _conv_t(self.context_in, _time_major(context, frames))
        y = _conv_t(self.conv2, self.drop(self.act(self.norm2(y))))
        # [B, C, T, (H W)] -> [(B T), C, H, W]
        return (x + y).transpose(1, 2).reshape(-1, h.shape[1], height, width)


def _time_major(h: Tensor, frames: int) -> Tensor:
    """[(B T), C, H, W] -> [B, C, T, (H W)], a view (torch ops rather than einops, which the
    compiler would otherwise re-trace at every call site)."""
    return h.unflatten(0, (-1, frames)).transpose(1, 2).flatten(3)


def _conv_t(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """A (3,1,1) Conv3d applied to [B, C, T, (H W)] as the identical (3,1) Conv2d: same
    weights and math, but CPU Conv3d has no oneDNN kernel (slow_conv3d) while Conv2d has."""
    return F.conv2d(x, conv.weight.squeeze(-1), conv.bias, padding=(1, 0))


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Frame-position table [length, dim] (Vaswani et al. 2017, sec. 3.5)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freqs)
    table[:, 1::2] = torch.cos(pos * freqs)[:, : dim // 2]
    return table


class TemporalAttentionBlock(nn.Module):
    """Self-attention over the T frames at each spatial position (paper sec. 3.1).

    Space is folded into the batch, ``(b t) c h w -> (b h w) t c``. Frame positions enter as
    a projected sinusoidal embedding added to the normed input; ``position="relative"``
    adds a learned per-head bias over the frame offset j - i to the attention logits instead.
    out = x + proj_out(FF(Attn(LN(x) + pos))) with proj_out zero-initialised.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, max_frames: int = 16,
                 position: str = "sinusoidal", use_ff: bool = True, dropout: float = 0.0,
                 backend: str = "auto") -> None:
        super().__init__()
        if position not in POSITION_MODES:
            raise ValueError(f"temporal_position must be one of {POSITION_MODES}, got {position!r}")
        self.max_frames, self.position, self.heads = max_frames, position, heads
        self.norm = nn.LayerNorm(channels)
        if position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(max_frames, channels),
                                 persistent=False)
            self.pos_proj = nn.Linear(channels, channels)
        else:
            self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_frames - 1))
        self.attn = MultiHeadAttention(channels, heads, dim_head, backend=backend)
        self.norm_ff = nn.LayerNorm(channels) if use_ff else None
        self.ff = FeedForward(channels, dropout=dropout) if use_ff else None
        self.proj_out = zero_(nn.Linear(channels, channels))

    def _relative_bias(self, frames: int) -> Tensor:
        """-> [1, H, T, T] with entry (i, j) = rel_bias[:, j - i + max_frames - 1]."""
        idx = torch.arange(frames, device=self.rel_bias.device)
        offsets = idx[None, :] - idx[:, None] + self.max_frames - 1  # [T, T]
        return self.rel_bias[:, offsets][None]

    def forward(self, h: Tensor, frames: int) -> Tensor:
        """h [(B T), C, H, W] -> [(B T), C, H, W]."""
        check_frames(frames, self.max_frames, "TemporalAttentionBlock")
        channels, height, width = h.shape[-3:]
        # [(B T), C, H, W] -> [(B H W), T, C]
        x = h.unflatten(0, (-1, frames)).permute(0, 3, 4, 1, 2).reshape(-1, frames, channels)
        y = self.norm(x)
        bias = None
        if self.position == "sinusoidal":
            y = y + self.pos_proj(self.pos_table[:frames].to(y.dtype))
        else:
            bias = self._relative_bias(frames).to(y.dtype)
        y = y + self.attn(y, bias=bias)
        if self.ff is not None:
            y = y + self.ff(self.norm_ff(y))
        x = x + self.proj_out(y)
        # [(B H W), T, C] -> [(B T), C, H, W]
        return x.unflatten(0, (-1, height, width)).permute(0, 3, 4, 1, 2).reshape(-1, channels, height, width)


class VideoResBlock(ResBlock):
    """Spatial ResBlock followed by a TemporalConvBlock, blended by alpha."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int | None = None,
                 dropout: float = 0.0, norm_groups: int = 32, context_channels: int = 0,
                 alpha_mode: str = "per_frame", max_frames: int = 16) -> None:
        super().__init__(channels, emb_dim, out_channels, dropout, norm_groups)
        out_channels = out_channels or channels
        self.temporal = TemporalConvBlock(out_channels, context_channels, dropout, norm_groups)
        self.blend = AlphaBlender(alpha_mode, max_frames)

    def forward(self, h: Tensor, state: BlockState) -> Tensor:
        spatial = super().forward(h, state)
        if state.image_only:
            return spatial
        context = state.context.get(tuple(spatial.shape[-2:])) if state.context else None
        temporal = self.temporal(spatial, state.frames, context)
        return self.blend(spatial, temporal, state.frames)


class VideoSpatialTransformer(SpatialTransformer):
    """Spatial transformer followed by a TemporalAttentionBlock, blended by alpha."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1,
                 token_dim: int | None = None, dropout: float = 0.0, norm_groups: int = 32,
                 backend: str = "auto", alpha_mode: str = "per_frame", max_frames: int = 16,
                 temporal_position: str = "sinusoidal", temporal_ff: bool = True) -> None:
        super().__init__(channels, heads, dim_head, depth, token_dim, dropout, norm_groups, backend)
        self.temporal = TemporalAttentionBlock(channels, heads, dim_head, max_frames,
                                               temporal_position, temporal_ff, dropout, backend)
        self.blend = AlphaBlender(alpha_mode, max_frames)

    def forward(self, h: Tensor, state: BlockState) -> Tensor:
        spatial = super().forward(h, state)
        if state.image_only:
            return spatial
        return self.blend(spatial, self.temporal(spatial, state.frames), state.frames)
