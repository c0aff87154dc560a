"""Attention backend: SDPA numerics, bias, zero-init adapters, backend selection."""

import math

import pytest
import torch

from drivesim.models.attention import (
    MultiHeadAttention,
    attention,
    heads_for,
    resolve_backend,
    xformers_available,
)


def reference_attention(q, k, v, bias=None):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


def test_sdpa_matches_softmax_formula(generator):
    q, k, v = (torch.randn(2, 3, 5, 8, generator=generator) for _ in range(3))
    k, v = k[:, :, :4], v[:, :, :4]
    bias = torch.randn(1, 3, 5, 4, generator=generator)
    torch.testing.assert_close(attention(q, k, v, backend="sdpa"), reference_attention(q, k, v))
    torch.testing.assert_close(attention(q, k, v, bias, backend="sdpa"),
                               reference_attention(q, k, v, bias))


def test_cross_attention_shapes_and_zero_init(generator):
    attn = MultiHeadAttention(dim=16, heads=2, dim_head=8, context_dim=12, zero_init_out=True)
    x = torch.randn(3, 10, 16, generator=generator)
    tokens = torch.randn(3, 4, 12, generator=generator)
    out = attn(x, tokens)
    assert out.shape == (3, 10, 16) and torch.equal(out, torch.zeros_like(out))
    self_attn = MultiHeadAttention(dim=16, heads=4, dim_head=4)
    y = self_attn(x)
    assert y.shape == (3, 10, 16) and y.abs().max() > 0
    # self-attention is permutation-equivariant over the sequence
    perm = torch.randperm(10, generator=generator)
    torch.testing.assert_close(self_attn(x[:, perm]), y[:, perm], atol=1e-6, rtol=1e-5)


def test_backend_selection():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("sdpa", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="'flash'"):
        resolve_backend("flash", torch.device("cpu"))
    if xformers_available():
        assert resolve_backend("xformers", torch.device("cpu")) == "xformers"
    else:
        with pytest.raises(ValueError, match="xformers is not installed"):
            resolve_backend("xformers", torch.device("cpu"))


def test_heads_for():
    assert heads_for(224, num_head_channels=32) == (7, 32)
    assert heads_for(64, num_heads=4) == (4, 16)
    with pytest.raises(ValueError, match="exactly one"):
        heads_for(64, num_heads=4, num_head_channels=32)
    with pytest.raises(ValueError, match="not divisible"):
        heads_for(48, num_head_channels=32)


@pytest.mark.gpu
def test_xformers_matches_sdpa_on_cuda():
    assert torch.cuda.is_available() and xformers_available(), "needs CUDA and xformers"
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, device="cuda", generator=g) for _ in range(3))
    bias = torch.randn(2, 4, 64, 64, device="cuda", generator=g)
    for b in (None, bias):
        torch.testing.assert_close(attention(q, k, v, b, backend="xformers"),
                                   attention(q, k, v, b, backend="sdpa"), atol=2e-3, rtol=2e-3)
    assert resolve_backend("auto", q.device) == "xformers"


def test_cross_attention_needs_tokens(generator):
    attn = MultiHeadAttention(dim=16, heads=2, dim_head=8, context_dim=12)
    with pytest.raises(ValueError, match="needs context tokens"):
        attn(torch.randn(1, 3, 16, generator=generator))
