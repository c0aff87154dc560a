"""The VP schedule: LDM's linear-in-sqrt(beta) betas, cosine, helpers and parameterisation."""

import pytest
import torch

from drivesim.diffusion.parameterization import (
    Denoiser,
    eps_from_x0,
    training_target,
    x0_from_output,
)
from drivesim.diffusion.schedule import DiscreteVPSchedule


def test_linear_is_ldm_scaled_linear_and_matches_diffusers():
    from diffusers import DDIMScheduler

    ours = DiscreteVPSchedule(1000, "linear", 0.0015, 0.0195)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                        beta_schedule="scaled_linear")
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-7)
    # linear in sqrt(beta) (constant steps of sqrt(beta)), not linear in beta
    steps = ours.betas.sqrt().diff()
    assert float(steps.max() - steps.min()) < 1e-12
    assert float(ours.betas.diff().max() - ours.betas.diff().min()) > 1e-7
    assert abs(float(ours.betas[0]) - 0.0015) < 1e-12 and abs(float(ours.betas[-1]) - 0.0195) < 1e-12


def test_cosine_schedule_properties():
    sched = DiscreteVPSchedule(1000, "cosine")
    ab = sched.alphas_cumprod
    assert bool((ab[1:] < ab[:-1]).all())
    assert 0.999 < float(ab[0]) < 1.0 and float(ab[-1]) < 1e-4
    assert float(sched.betas.max()) <= 0.999


def test_helpers_and_clean_end_point():
    sched = DiscreteVPSchedule(100)
    t = torch.tensor([-1, 0, 50, 99])
    a, s = sched.a(t), sched.s(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(4, dtype=torch.float64))
    assert float(a[0]) == 1.0 and float(s[0]) == 0.0
    lam = sched.log_snr(t[1:])
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(lam, torch.log(a[1:] ** 2 / s[1:] ** 2))
    with pytest.raises(ValueError, match="out of range"):
        sched.a(torch.tensor([100]))
    with pytest.raises(ValueError, match="kind"):
        DiscreteVPSchedule(10, "quadratic")


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_parameterisation_round_trip(prediction, generator):
    sched = DiscreteVPSchedule(1000)
    x0 = torch.randn(3, 2, 4, 5, 6, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    a, s = sched.coefficients(t, x0)
    x_t = sched.q_sample(x0, t, noise)
    target = training_target(x0, noise, a, s, prediction)
    torch.testing.assert_close(x0_from_output(x_t, target, a, s, prediction), x0)
    torch.testing.assert_close(eps_from_x0(x_t, x0, a, s), noise)
    # the Denoiser with a perfect network returns x0 exactly
    denoiser = Denoiser(lambda x, tt, c: target, sched, prediction)
    torch.testing.assert_close(denoiser(x_t, t, None), x0)
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(lambda x, tt, c: x, sched, "x0")
