"""The autoencoder's loss functions: each term against its formula, the composition, the latent noise."""

import pytest
import torch

from drivesim.models.autoencoder import DiagonalGaussian
from drivesim.models.autoencoder_losses import (
    LossWeights,
    adaptive_weight,
    add_latent_noise,
    flicker,
    flicker_loss,
    flicker_split,
    generator_gan_loss,
    generator_loss,
    reconstruction_loss,
)


def _clip(generator, b=2, t=3, h=8, w=8):
    x = torch.rand(b, t, 3, h, w, generator=generator) * 2 - 1
    return x, x + 0.1 * torch.randn(x.shape, generator=generator)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.ones(3, requires_grad=True)
    rec, gan = (2.0 * w).sum(), (0.5 * w).sum()  # gradients 2 and 0.5 everywhere -> ratio 4
    assert float(adaptive_weight(rec, gan, w)) == pytest.approx(4.0, rel=1e-3)
    tiny = (1e-9 * w).sum()  # a vanishing GAN gradient: the ratio is clamped at 1e4
    assert float(adaptive_weight(rec, tiny, w)) == pytest.approx(1e4)


def test_flicker_metric(generator):
    x = torch.rand(2, 4, 3, 8, 8, generator=generator)
    assert float(flicker(x + 0.3, x)) == pytest.approx(0.0, abs=1e-6)  # a constant error does not flicker
    noisy = x.clone()
    noisy[:, 1] += 0.1  # one frame off by 0.1: differences 1->0 and 1->2 both off by 0.1
    assert float(flicker(noisy, x)) == pytest.approx(0.1 * 2 / 3, rel=1e-4)
    with pytest.raises(ValueError, match="T >= 2"):
        flicker(x[:, :1], x[:, :1])


def test_flicker_split_separates_static_from_moving_pixels():
    x = torch.full((1, 3, 3, 4, 4), 0.5)
    x[:, 1:, :, :, 2:] = 0.9           # right half changes by 0.4 between frames 0 and 1, then stays
    recon = x.clone()
    recon[:, 1, :, :, :2] += 0.1        # frame 1 off by 0.1 on the static left half: the decoder's flicker
    static, moving, frac = flicker_split(recon, x, threshold=0.03)
    # pairs (0,1) and (1,2): moving = the right half of pair (0,1) only, 1/4 of the pixels
    assert float(frac) == pytest.approx(0.25)
    assert float(moving) == pytest.approx(0.0, abs=1e-6)
    assert float(static) == pytest.approx(0.1 * 2 / 3, rel=1e-4)   # 16 of 24 static pixel-pairs are off by 0.1
    assert torch.isnan(flicker_split(x, x, threshold=1.0)[1])     # nothing moves: NaN, not 0
    with pytest.raises(ValueError, match="flicker_split"):
        flicker_split(x[:, :1], x[:, :1])


def test_flicker_loss_is_the_per_pair_pixel_sum(generator):
    x = torch.rand(2, 4, 3, 8, 8, generator=generator)
    noisy = x.clone()
    noisy[:, 2] += 0.1  # pairs (1,2) and (2,3) are off by 0.1 at every pixel
    per_pair = 2 * 0.1 * (3 * 8 * 8) / 3  # two of the three pairs, summed over 3 x 8 x 8 pixels
    assert float(flicker_loss(noisy, x)) == pytest.approx(per_pair, rel=1e-4)
    assert float(flicker_loss(x - 0.2, x)) == pytest.approx(0.0, abs=1e-4)
    assert float(flicker_loss(noisy, x)) == pytest.approx(float(flicker(noisy, x)) * 3 * 8 * 8, rel=1e-5)


def test_reconstruction_loss_terms(generator):
    x, recon = _clip(generator)
    frames, pixels = 2 * 3, 3 * 8 * 8
    plain = reconstruction_loss(x, recon)
    assert float(plain) == pytest.approx(float((x - recon).abs().sum() / frames), rel=1e-5)
    both = reconstruction_loss(x, recon, l2_weight=2.0)
    assert float(both - plain) == pytest.approx(float(2.0 * (x - recon).pow(2).sum() / frames), rel=1e-4)
    # LPIPS [B, T] per frame, counted per pixel like the L1 sum
    seen = []

    def lpips(a, b):
        seen.append((a, b))
        return torch.full(a.shape[:2], 0.25)

    with_lpips = reconstruction_loss(x, recon, lpips=lpips, lpips_weight=0.5)
    assert float(with_lpips - plain) == pytest.approx(0.5 * 0.25 * pixels, rel=1e-5)
    assert seen[0][0] is x and seen[0][1] is recon


def test_generator_loss_composes_the_terms(generator):
    x, recon = _clip(generator, t=3)
    recon.requires_grad_(True)
    last = torch.ones((), requires_grad=True)
    recon_l = recon * last  # a "last layer" the adaptive weight can differentiate through
    posterior = DiagonalGaussian(torch.randn(2, 3, 4, 2, 2, generator=generator), torch.zeros(2, 3, 4, 2, 2))
    weights = LossWeights(kl=0.01, l2=1.0, flicker=3.0, disc=0.5)
    disc = lambda v: v.mean(dim=(2, 3, 4))  # noqa: E731  logits [B, T]
    loss, logs = generator_loss(x, recon_l, posterior, weights, discriminator=disc, last_layer=last)
    rec = reconstruction_loss(x, recon_l, l2_weight=1.0)
    g = generator_gan_loss(disc(recon_l))
    expect = rec + 0.01 * posterior.kl().mean() + 3.0 * flicker_loss(recon_l, x) + logs["d_weight"] * g
    assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-5)
    assert float(logs["d_weight"]) == pytest.approx(float(adaptive_weight(rec, g, last)) * 0.5, rel=1e-5)
    assert set(logs) == {"rec_loss", "kl", "l1", "flicker_loss", "g_loss", "d_weight"}
    assert all(not v.requires_grad for v in logs.values())
    # no GAN without a discriminator, no flicker term on single frames
    _, logs1 = generator_loss(x[:, :1], recon[:, :1], posterior, weights)
    assert set(logs1) == {"rec_loss", "kl", "l1"}
    assert float(generator_gan_loss(torch.tensor([1.0, 3.0]))) == -2.0
    with pytest.raises(ValueError, match="last_layer"):
        generator_loss(x, recon, posterior, weights, discriminator=disc)


def test_uniform_latent_noise_draws_one_level_per_sample():
    z = torch.randn(64, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5.0
    noise = add_latent_noise(z, 0.4, torch.Generator().manual_seed(1), "uniform") - z
    level = noise.std(dim=(1, 2, 3, 4)) / z.std()  # per sample: its level s in units of the latent std
    assert float(level.min()) < 0.05 and 0.35 < float(level.max()) < 0.42  # spans U(0, 0.4)
    assert float(level.mean()) == pytest.approx(0.2, abs=0.04)
    # one level per sample: both frames and all channels of a sample share it
    per_frame = noise.std(dim=(2, 3, 4)) / z.std()
    torch.testing.assert_close(per_frame[:, 0], per_frame[:, 1], rtol=0.15, atol=0.01)


def test_fixed_latent_noise_is_relative_to_each_channel_and_seeded():
    z = torch.randn(4, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3.0
    assert add_latent_noise(z, 0.0, torch.Generator().manual_seed(1)) is z
    out = add_latent_noise(z, 0.5, torch.Generator().manual_seed(1))
    assert float((out - z).std() / z.std()) == pytest.approx(0.5, rel=0.1)  # relative to the latents' scale
    assert torch.equal(out, add_latent_noise(z, 0.5, torch.Generator().manual_seed(1)))  # seeded
    assert not torch.equal(out, add_latent_noise(z, 0.5, torch.Generator().manual_seed(2)))
    # relative to each channel's own scale: a small channel is not drowned by a large one's std
    scales = torch.tensor([0.1, 1.0, 10.0, 40.0]).view(1, 1, 4, 1, 1)
    zc = torch.randn(8, 1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * scales
    noise = add_latent_noise(zc, 0.5, torch.Generator().manual_seed(3)) - zc
    ratio = noise.std(dim=(0, 1, 3, 4)) / zc.std(dim=(0, 1, 3, 4))
    torch.testing.assert_close(ratio, torch.full((4,), 0.5), rtol=0.1, atol=0.0)
    # the noise scale is a constant of the graph: gradients reach z through the identity only
    zg = z.clone().requires_grad_(True)
    add_latent_noise(zg, 0.5, torch.Generator().manual_seed(1)).sum().backward()
    assert torch.equal(zg.grad, torch.ones_like(z))
    with pytest.raises(ValueError, match="noise mode"):
        add_latent_noise(z, 0.5, torch.Generator(), "gaussian")
