"""Temporal layers: alpha blending, (3,1,1) conv block, temporal attention, positions."""

import pytest
import torch

from drivesim.models.temporal import (
    AlphaBlender,
    TemporalAttentionBlock,
    TemporalConvBlock,
    sinusoidal_positions,
)


def perturb_(module, generator):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return module


def test_alpha_blender_per_frame_and_scalar(generator):
    blend = AlphaBlender("per_frame", max_frames=4)
    with torch.no_grad():
        blend.mix.copy_(torch.tensor([10.0, 0.0, -10.0, 3.0]))
    spatial = torch.ones(2 * 3, 1, 2, 2)  # B=2, T=3 folded
    temporal = torch.zeros(2 * 3, 1, 2, 2)
    out = blend(spatial, temporal, frames=3)
    alpha = torch.sigmoid(torch.tensor([10.0, 0.0, -10.0]))
    torch.testing.assert_close(out[:, 0, 0, 0], alpha.repeat(2))
    with pytest.raises(ValueError, match="T=5 frames exceeds max_frames=4"):
        blend(torch.ones(5, 1, 1, 1), torch.ones(5, 1, 1, 1), frames=5)
    scalar = AlphaBlender("scalar")
    assert scalar.mix.shape == (1,)
    out = scalar(spatial, temporal, frames=3)
    torch.testing.assert_close(out, torch.sigmoid(scalar.mix).expand_as(out))
    with pytest.raises(ValueError, match="alpha_mode"):
        AlphaBlender("per_pixel")


def test_conv_block_identity_then_local_in_time(generator):
    block = TemporalConvBlock(8, norm_groups=4).eval()
    h = torch.randn(2 * 5, 8, 3, 3, generator=generator)  # B=2, T=5
    torch.testing.assert_close(block(h, 5), h, atol=0, rtol=0)
    perturb_(block, generator)
    base = block(h, 5)
    h2 = h.clone()
    h2[0] += 1.0  # sample 0, frame 0
    diff = (block(h2, 5) - base).abs().amax(dim=(1, 2, 3)).view(2, 5)
    # two (3,1,1) convs: frame 0 reaches frames 0..2 of its own clip; GroupNorm statistics
    # span the clip, so the far frames move only through the norm; the other clip not at all.
    assert diff[0, 0] > 1e-3 and diff[0, 1] > 1e-3 and diff[1].max() == 0


def test_conv_block_context_input_zero_init(generator):
    block = TemporalConvBlock(8, context_channels=3, norm_groups=4)
    h = torch.randn(2 * 4, 8, 3, 3, generator=generator)
    ctx = torch.randn(2 * 4, 3, 3, 3, generator=generator)
    torch.testing.assert_close(block(h, 4, ctx), h, atol=0, rtol=0)
    perturb_(block, generator)
    assert (block(h, 4, ctx) - block(h, 4, torch.zeros_like(ctx))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="built with context"):
        block(h, 4)


@pytest.mark.parametrize("position", ["sinusoidal", "relative"])
def test_temporal_attention_identity_then_per_position(generator, position):
    block = TemporalAttentionBlock(8, heads=2, dim_head=4, max_frames=6, position=position)
    h = torch.randn(2 * 4, 8, 3, 3, generator=generator)  # B=2, T=4
    torch.testing.assert_close(block(h, 4), h, atol=0, rtol=0)
    perturb_(block, generator)
    base = block(h, 4)
    h2 = h.clone()
    h2[1, :, 0, 0] += torch.randn(8, generator=generator)  # sample 0, frame 1, pixel (0, 0)
    diff = (block(h2, 4) - base).abs().amax(dim=1)  # [(B T), H, W]
    assert diff[:4, 0, 0].min() > 1e-4  # all frames of that pixel see it
    assert diff[:, 1:, :].max() == 0 and diff[:, :, 1:].max() == 0 and diff[4:].max() == 0
    # frame positions matter: reversing time does not just reverse the output
    rev = block(h.view(2, 4, 8, 3, 3).flip(1).reshape(8, 8, 3, 3), 4).view(2, 4, 8, 3, 3).flip(1)
    assert (rev.reshape(8, 8, 3, 3) - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="T=7 frames exceeds max_frames=6"):
        block(torch.randn(7, 8, 3, 3), 7)


def test_relative_bias_indexing():
    block = TemporalAttentionBlock(8, heads=2, dim_head=4, max_frames=5, position="relative")
    with torch.no_grad():
        block.rel_bias.copy_(torch.arange(18.0).view(2, 9))
    bias = block._relative_bias(3)[0]  # [H, T, T]
    for i in range(3):
        for j in range(3):
            assert bias[1, i, j] == 9 + (j - i + 4)


def test_sinusoidal_positions():
    table = sinusoidal_positions(6, 8)
    assert table.shape == (6, 8)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * 4))
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    torch.testing.assert_close(table[3, 3], torch.cos(torch.tensor(3.0 * 10000 ** (-2 / 8))))
