"""Multi-head attention with a selectable backend.

`scaled_dot_product_attention` (PyTorch SDPA: flash / memory-efficient / math kernels) is
the default; `xformers.ops.memory_efficient_attention` is used when the backend is
"xformers", or "auto" with xformers importable and the tensors on CUDA. Both compute
softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, eq. 1) with the same scale.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "sdpa", "xformers")
_HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


def xformers_available() -> bool:
    return _HAS_XFORMERS


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'xformers' on CUDA when installed, else 'sdpa'; validates the name.

    Under ``torch.compile`` 'auto' is 'sdpa': the compiler traces PyTorch's own kernel (flash
    attention on CUDA) into the graph, where an external op would be opaque to it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        use_xformers = _HAS_XFORMERS and device.type == "cuda" and not torch.compiler.is_compiling()
        return "xformers" if use_xformers else "sdpa"
    if backend == "xformers" and not _HAS_XFORMERS:
        raise ValueError("attention backend 'xformers' requested but xformers is not installed "
                         "(pip install drivesim[xformers])")
    return backend


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
              backend: str = "auto") -> Tensor:
    """q [B,H,Lq,d], k/v [B,H,Lk,d], optional additive bias broadcastable to [B,H,Lq,Lk]
    -> [B,H,Lq,d]."""
    if resolve_backend(backend, q.device) == "xformers":
        import xformers.ops as xops

        # xformers wants [B, L, H, d]; an additive bias must be materialised to full shape.
        qx, kx, vx = (a.transpose(1, 2) for a in (q, k, v))
        if bias is not None:
            bias = bias.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class MultiHeadAttention(nn.Module):
    """Self-attention (context None) or cross-attention over tokens [B, Lk, context_dim].

    ``zero_init_out`` zero-initialises the output projection so that a freshly added
    attention branch is exactly zero (adapters that must leave a pretrained layer unchanged).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 zero_init_out: bool = False, backend: str = "auto") -> None:
        super().__init__()
        resolve_backend(backend, torch.device("cpu"))  # validate the name early
        inner = heads * dim_head
        self.heads, self.backend, self.is_cross = heads, backend, context_dim is not None
        # fused projections: one matmul for q,k,v (self) or k,v (cross) instead of three
        if self.is_cross:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        if zero_init_out:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """x [B, Lq, dim], context [B, Lk, context_dim] (cross only), bias [B|1, H|1, Lq, Lk]."""
        if self.is_cross:
            if context is None:
                raise ValueError("MultiHeadAttention: cross-attention needs context tokens")
            q = _split_heads(self.to_q(x), 1, self.heads)[0]
            k, v = _split_heads(self.to_kv(context), 2, self.heads)
        else:
            q, k, v = _split_heads(self.to_qkv(x), 3, self.heads)
        out = attention(q, k, v, bias=bias, backend=self.backend)  # [B, H, Lq, d]
        return self.to_out(out.transpose(1, 2).flatten(2))        # [B, Lq, H * d]


def _split_heads(x: Tensor, n: int, heads: int) -> Tensor:
    """[B, L, (n H d)] -> [n, B, H, L, d] (views; torch ops rather than einops, which the
    compiler would otherwise re-trace at every call site)."""
    return x.unflatten(-1, (n, heads, -1)).permute(2, 0, 3, 1, 4)


def heads_for(channels: int, num_heads: int = -1, num_head_channels: int = -1) -> tuple[int, int]:
    """(heads, dim_head) from either a head count or channels per head (ADM convention)."""
    if (num_heads == -1) == (num_head_channels == -1):
        raise ValueError(f"set exactly one of num_heads ({num_heads}) and "
                         f"num_head_channels ({num_head_channels})")
    if num_head_channels != -1:
        if channels % num_head_channels:
            raise ValueError(f"channels {channels} not divisible by num_head_channels "
                             f"{num_head_channels}")
        return channels // num_head_channels, num_head_channels
    if channels % num_heads:
        raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
    return num_heads, channels // num_heads
