"""Spatial building blocks of the ADM-style UNet (Dhariwal & Nichol 2021; LDM, Rombach et al.
2022): residual blocks with scale-shift timestep conditioning, spatial transformers with
self- and cross-attention, and resampling layers.

Every block is called as ``block(h, state)`` with ``h`` [(B T), C, H, W] (frames folded into
the batch) and a `BlockState` carrying the per-forward inputs, so that the video UNet can
subclass a block (temporal.py) without renaming its spatial parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drivesim.models.attention import MultiHeadAttention


@dataclass
class BlockState:
    """Inputs shared by all blocks of one UNet forward.

    emb [(B T), E] timestep (+ label) embedding; tokens [(B T), L, D] cross-attention tokens
    or None; frames = T; image_only forces alpha = 1 in temporal blends; context maps a
    feature resolution (H, W) to the downsampled context c_S [(B T), Cc, H, W].
    """

    emb: Tensor
    tokens: Tensor | None
    frames: int
    image_only: bool = False
    context: dict[tuple[int, int], Tensor] = field(default_factory=dict)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of float timesteps t [B] -> [B, dim] (Vaswani et al.; ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    groups = min(groups, channels)
    if channels % groups:
        raise ValueError(f"GroupNorm: channels {channels} not divisible by norm_groups {groups}")
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (a new branch that starts as exactly zero)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block; the timestep embedding enters by scale-shift norm:
    h = GN(h) * (1 + scale) + shift (Dhariwal & Nichol 2021, sec. 3)."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int | None = None,
                 dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(group_norm(channels, norm_groups), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels, norm_groups)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = (nn.Identity() if out_channels == channels
                     else nn.Conv2d(channels, out_channels, 1))

    def forward(self, h: Tensor, state: BlockState) -> Tensor:
        x = self.in_layers(h)
        scale, shift = self.emb_layers(state.emb)[..., None, None].chunk(2, dim=1)
        x = self.out_layers(torch.addcmul(shift, self.out_norm(x), 1 + scale))
        return self.skip(h) + x


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, state: BlockState) -> Tensor:
        return self.op(h)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, state: BlockState) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class _GEGLU(torch.autograd.Function):
    """a * gelu(gate) for [a, gate] = x.chunk(2): saves only x and recomputes gelu in the
    backward pass (the plain version also keeps gelu(gate): ~1/3 of the FF activations)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # d/da = grad * gelu(g); d/dg = grad * a * (Phi(g) + g * phi(g)); computed in place
        # into the two halves of one output buffer to keep the backward's peak memory low.
        (x,) = ctx.saved_tensors
        a, gate = x.chunk(2, dim=-1)
        cdf = torch.erf(gate * 2.0 ** -0.5).add_(1.0).mul_(0.5)  # Phi(g)
        pdf = gate.square().mul_(-0.5).exp_().mul_((2.0 * math.pi) ** -0.5)  # phi(g)
        out = torch.empty_like(x)
        grad_a, grad_gate = out.chunk(2, dim=-1)
        torch.mul(gate, cdf, out=grad_a).mul_(grad)
        torch.mul(gate, pdf, out=grad_gate).add_(cdf).mul_(a).mul_(grad)
        return out


def geglu(x: Tensor) -> Tensor:
    """[..., 2n] -> [..., n]: a * gelu(gate) (Shazeer 2020), memory-lean backward.

    Under ``torch.compile`` the plain formula is traced instead: the compiler derives and fuses
    the backward itself (its partitioner decides what to save and what to recompute), and the
    hand-written backward's ``out=`` writes into strided halves would break the graph.
    """
    if torch.compiler.is_compiling():
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)
    return _GEGLU.apply(x)


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020), as in the LDM transformer."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * dim * mult)
        self.drop = nn.Dropout(dropout)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(self.drop(geglu(self.proj_in(x))))


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to condition tokens, GEGLU feed-forward (pre-norm).

    The cross-attention output projection is zero-initialised: the block output does not
    depend on the tokens at init, so adding conditioning leaves a pretrained layer unchanged.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, token_dim: int | None,
                 dropout: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = MultiHeadAttention(dim, heads, dim_head, backend=backend)
        self.norm_cross = nn.LayerNorm(dim) if token_dim else None
        self.attn_cross = (MultiHeadAttention(dim, heads, dim_head, context_dim=token_dim,
                                              zero_init_out=True, backend=backend)
                           if token_dim else None)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, tokens: Tensor | None) -> Tensor:
        """x [M, L, dim], tokens [M, Lk, token_dim] -> [M, L, dim]."""
        x = x + self.attn1(self.norm1(x))
        if self.attn_cross is not None:
            if tokens is None:
                raise ValueError("TransformerBlock: this UNet has cross-attention but got no tokens")
            x = x + self.attn_cross(self.norm_cross(x), tokens)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM spatial transformer: GN -> linear in -> depth x TransformerBlock -> linear out,
    residual. Operates per frame on [(B T), C, H, W]."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1,
                 token_dim: int | None = None, dropout: float = 0.0, norm_groups: int = 32,
                 backend: str = "auto") -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = group_norm(channels, norm_groups)
        self.proj_in = nn.Linear(channels, inner)
        self.blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head, token_dim, dropout, backend) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, h: Tensor, state: BlockState) -> Tensor:
        height, width = h.shape[-2:]
        x = self.norm(h).flatten(2).transpose(1, 2)  # [M, C, H, W] -> [M, (H W), C], M = (B T)
        x = self.proj_in(x)
        for block in self.blocks:
            x = block(x, state.tokens)
        x = self.proj_out(x).transpose(1, 2).unflatten(2, (height, width))  # -> [M, C, H, W]
        return h + x
