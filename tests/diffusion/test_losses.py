"""The diffusion loss: one noise level per clip, frame masks, targets."""

import pytest
import torch

from drivesim.diffusion.losses import diffusion_loss, masked_mse, min_snr_weight, noise_clip
from drivesim.diffusion.schedule import DiscreteVPSchedule

SCHED = DiscreteVPSchedule(1000)


def test_one_noise_level_per_clip(generator):
    """Every frame of a clip must be noised with the same t (a peer bug draws t per frame)."""
    B, T = 6, 5
    x0 = torch.full((B, T, 4, 16, 16), 5.0)
    seen = {}

    def network(x_t, t, cond):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    diffusion_loss(network, x0, None, SCHED, generator=generator)
    t, x_t = seen["t"], seen["x_t"]
    assert t.shape == (B,) and t.dtype == torch.long
    frame_signal = x_t.mean(dim=(2, 3, 4)) / 5.0   # [B, T] ~ a_t of each frame
    expect = SCHED.a(t).float()[:, None].expand(B, T)
    torch.testing.assert_close(frame_signal, expect, atol=0.03, rtol=0)
    frame_noise = x_t.std(dim=(2, 3, 4))            # [B, T] ~ s_t of each frame
    torch.testing.assert_close(frame_noise, SCHED.s(t).float()[:, None].expand(B, T), atol=0.05, rtol=0)
    assert len(set(t.tolist())) > 1                # and clips differ


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_perfect_network_has_zero_loss_and_mask_excludes_frames(prediction, generator):
    """With x0 = 0: x_t = s eps, so v = a eps = (a / s) x_t and eps = x_t / s exactly."""
    B, T = 3, 4
    x0 = torch.zeros(B, T, 2, 4, 4)
    mask = torch.ones(B, T)
    mask[:, :2] = 0  # context frames left out of the loss

    def network(x_t, t, cond):
        a, s = SCHED.coefficients(t, x_t)
        perfect = (a / s) * x_t if prediction == "v" else x_t / s
        return torch.cat([torch.full_like(perfect[:, :2], 1e3), perfect[:, 2:]], dim=1)

    masked = diffusion_loss(network, x0, None, SCHED, generator, prediction, loss_mask=mask)
    assert float(masked) < 1e-8
    unmasked = diffusion_loss(network, x0, None, SCHED, generator, prediction)
    assert float(unmasked) > 1e5


def test_seeded_and_masked_mean(generator):
    x0 = torch.randn(2, 3, 2, 4, 4, generator=generator)
    net = torch.nn.Conv3d(3, 3, 1)

    def network(x_t, t, cond):
        return net(x_t)

    a = diffusion_loss(network, x0, None, SCHED, torch.Generator().manual_seed(5))
    b = diffusion_loss(network, x0, None, SCHED, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.requires_grad
    a.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    pred, target = torch.zeros(1, 2, 1, 1, 1), torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1, 1)
    assert float(masked_mse(pred, target, torch.tensor([[0.0, 1.0]]))) == 9.0
    with pytest.raises(ValueError, match="exclude every element"):
        masked_mse(pred, target, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="B, T, C, h, w"):
        noise_clip(torch.zeros(2, 3, 4, 4), SCHED)


def test_weighted_mse_reweights_cells_and_combines_with_the_frame_mask():
    pred = torch.zeros(1, 2, 1, 1, 2)
    target = torch.tensor([[1.0, 3.0], [2.0, 4.0]]).reshape(1, 2, 1, 1, 2)  # errors 1, 9 | 4, 16
    uniform = torch.full((1, 2, 1, 1, 2), 3.0)
    assert float(masked_mse(pred, target, weight=uniform)) == pytest.approx(float(masked_mse(pred, target)))
    # weight 1 on the first cell, 3 on the second: (1*1 + 3*9 + 1*4 + 3*16) / 8
    w = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 1, 2).expand(1, 2, 1, 1, 2)
    assert float(masked_mse(pred, target, weight=w)) == pytest.approx((1 + 27 + 4 + 48) / 8)
    # frame 0 masked out: (4 + 48) / 4
    assert float(masked_mse(pred, target, torch.tensor([[0.0, 1.0]]), w)) == pytest.approx(52 / 4)
    with pytest.raises(ValueError, match="weight"):
        masked_mse(pred, target, weight=torch.ones(1, 2, 1, 3, 3))


def test_min_snr_weight_caps_the_clean_timesteps_for_each_target():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))


def test_diffusion_loss_with_min_snr_is_the_weighted_mean(generator):
    x0 = torch.randn(3, 2, 2, 4, 4, generator=generator)
    net = torch.nn.Conv3d(2, 2, 1)

    def network(x_t, t, cond):
        return net(x_t)

    loss = diffusion_loss(network, x0, None, SCHED, torch.Generator().manual_seed(3), snr_gamma=5.0)
    noised = noise_clip(x0, SCHED, torch.Generator().manual_seed(3))  # the same draws
    a, s = SCHED.coefficients(noised.t, x0)
    err = (network(noised.x_t, noised.t, None) - (a * noised.noise - s * x0)) ** 2
    w = min_snr_weight((a / s).pow(2).reshape(-1), 5.0, "v")
    expect = (err.mean(dim=(1, 2, 3, 4)) * w).mean()
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-7)


def test_timestep_sampling_uniform_and_logit_normal():
    from drivesim.diffusion.losses import sample_timesteps

    g = torch.Generator().manual_seed(0)
    uni = sample_timesteps(20000, 1000, "uniform", g)
    ln = sample_timesteps(20000, 1000, "logit_normal", torch.Generator().manual_seed(0))
    for t in (uni, ln):
        assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    mid = lambda t: float(((t >= 250) & (t < 750)).float().mean())  # noqa: E731
    assert mid(uni) == pytest.approx(0.5, abs=0.02)
    # P(|n| < logit(0.75) = 1.0986) = 0.728 for the standard logit-normal
    assert mid(ln) == pytest.approx(0.728, abs=0.02)
    shifted = sample_timesteps(20000, 1000, "logit_normal", torch.Generator().manual_seed(0), mean=1.0)
    assert float(shifted.float().mean()) > float(ln.float().mean()) + 150  # mean > 0: noisier
    torch.testing.assert_close(sample_timesteps(8, 1000, "logit_normal", torch.Generator().manual_seed(4)),
                               sample_timesteps(8, 1000, "logit_normal", torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="must be one of"):
        sample_timesteps(4, 1000, "cosine")
    with pytest.raises(ValueError, match="std"):
        sample_timesteps(4, 1000, "logit_normal", std=0.0)
    x0 = torch.zeros(4, 1, 1, 2, 2)
    noised = noise_clip(x0, SCHED, torch.Generator().manual_seed(1), timesteps="logit_normal")
    assert noised.t.shape == (4,)
