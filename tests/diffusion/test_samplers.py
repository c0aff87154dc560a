"""Samplers against diffusers' schedulers and the exact Gaussian denoiser."""

import math

import pytest
import torch

from drivesim.diffusion.masks import with_context
from drivesim.diffusion.parameterization import Denoiser
from drivesim.diffusion.samplers import ddim_sample, dpmpp_2m_sample, sampling_timesteps
from drivesim.diffusion.schedule import DiscreteVPSchedule

BETAS = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
             beta_schedule="scaled_linear")
SCHED = DiscreteVPSchedule(1000, "linear", 0.0015, 0.0195)


def toy_network(x, t, cond=None):
    """A fixed nonlinear 'network' (v or eps output) depending on x and t."""
    tt = t.to(x.dtype).reshape(-1, 1, 1, 1, 1) / 1000.0
    return 0.6 * torch.tanh(x) + 0.3 * tt * x - 0.1 * (1 - tt)


def diffusers_trajectory(scheduler, x_T, steps, prediction, eta=None, generator=None):
    scheduler.set_timesteps(steps)
    x, traj = x_T, []
    for t in scheduler.timesteps:
        out = toy_network(x, torch.full((x.shape[0],), int(t)))
        kwargs = {} if eta is None else {"eta": eta, "generator": generator}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        traj.append(x)
    return traj


def ours_trajectory(sampler, x_T, steps, prediction, spacing="trailing", **kwargs):
    denoise = Denoiser(toy_network, SCHED, prediction).bind(None)
    xs = []

    def callback(i, t, x, x0):
        xs.append(x)

    final = sampler(denoise, x_T, SCHED, steps, callback=callback, spacing=spacing, **kwargs)
    return xs[1:] + [final]  # the state after each step


@pytest.mark.parametrize("prediction,spacing,steps", [("v", "trailing", 10), ("eps", "trailing", 25),
                                                      ("v", "leading", 20)])
def test_ddim_matches_diffusers(prediction, spacing, steps, generator):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing,
                        prediction_type="v_prediction" if prediction == "v" else "epsilon")
    x_T = torch.randn(2, 3, 4, 4, 4, generator=generator)
    ref_traj = diffusers_trajectory(ref, x_T, steps, prediction)
    ours = ours_trajectory(ddim_sample, x_T, steps, prediction, spacing=spacing)
    assert sampling_timesteps(SCHED, steps, spacing)[:-1] == ref.timesteps.tolist()
    assert len(ours) == len(ref_traj) == steps
    for a, b in zip(ours, ref_traj):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ddim_eta1_matches_diffusers_noise_stream(generator):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(**BETAS, clip_sample=False, timestep_spacing="trailing",
                        prediction_type="v_prediction")
    x_T = torch.randn(2, 1, 4, 4, 4, generator=generator)
    ref_traj = diffusers_trajectory(ref, x_T, 10, "v", eta=1.0,
                                    generator=torch.Generator().manual_seed(7))
    ours = ours_trajectory(ddim_sample, x_T, 10, "v", eta=1.0,
                           generator=torch.Generator().manual_seed(7))
    for a, b in zip(ours, ref_traj):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction,steps", [("v", 7), ("v", 20), ("eps", 12)])
def test_dpmpp_2m_matches_diffusers(prediction, steps, generator):
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(
        **BETAS, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
        prediction_type="v_prediction" if prediction == "v" else "epsilon")
    x_T = torch.randn(2, 3, 4, 4, 4, generator=generator)
    ref_traj = diffusers_trajectory(ref, x_T, steps, prediction)
    ours = ours_trajectory(dpmpp_2m_sample, x_T, steps, prediction)
    assert sampling_timesteps(SCHED, steps)[:-1] == ref.timesteps.tolist()
    for a, b in zip(ours, ref_traj):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def gaussian_denoiser(mu, std, sched):
    """Exact E[x0 | x_t] for x0 ~ N(mu, std^2) elementwise."""

    def denoise(x, t):
        a, s = sched.coefficients(t, x)
        return mu + a * std**2 / (a**2 * std**2 + s**2) * (x - a * mu)

    return denoise


def coeffs(t):
    return float(SCHED.a(torch.tensor(t))), float(SCHED.s(torch.tensor(t)))


def standard_normal(shape, generator):
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    return (z - z.mean()) / z.std()  # exact sample moments: the tests measure the sampler only


def exact_x_T(mu, std, z):
    """x_T on the true marginal N(a_T mu, a_T^2 std^2 + s_T^2), standardised noise z."""
    a, s = coeffs(999)
    return a * mu + math.sqrt(a**2 * std**2 + s**2) * z


MU, STD = 0.5, 1.0


@pytest.mark.parametrize("sampler,kwargs,steps,tol", [
    (ddim_sample, {}, 100, 0.03), (ddim_sample, {"eta": 1.0}, 250, 0.04),
    (dpmpp_2m_sample, {}, 50, 0.02), (dpmpp_2m_sample, {}, 20, 0.05)])
def test_gaussian_oracle_moments(sampler, kwargs, steps, tol, generator):
    """Data ~ N(mu, std^2) elementwise, exact denoiser: samples have mean mu and std std."""
    x_T = exact_x_T(MU, STD, standard_normal((20000, 1, 1, 1, 1), generator))
    gen = torch.Generator().manual_seed(1) if kwargs else None
    out = sampler(gaussian_denoiser(MU, STD, SCHED), x_T, SCHED, steps, generator=gen, **kwargs)
    assert abs(float(out.mean()) - MU) < (0.03 if kwargs else 0.002)
    assert abs(float(out.std()) / STD - 1.0) < tol, float(out.std())


@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("leading", 13)])
def test_ddim_gaussian_exact_recurrence(spacing, steps, generator):
    """With the exact Gaussian denoiser one DDIM step maps the deviation d_t = x_t - a_t mu to
    d_t' = (a_t a_t' std^2 + s_t s_t') / (a_t^2 std^2 + s_t^2) d_t: the whole run is analytic."""
    x_T = exact_x_T(MU, STD, standard_normal((32, 2, 1, 2, 2), generator))
    ts = sampling_timesteps(SCHED, steps, spacing)
    a_T, _ = coeffs(ts[0])
    d = x_T - a_T * MU
    for t, t_next in zip(ts[:-1], ts[1:]):
        (a, s), (a2, s2) = coeffs(t), coeffs(t_next)
        d = d * (a * a2 * STD**2 + s * s2) / (a**2 * STD**2 + s**2)
    out = ddim_sample(gaussian_denoiser(MU, STD, SCHED), x_T, SCHED, steps, spacing=spacing)
    torch.testing.assert_close(out, MU + d, rtol=0, atol=1e-10)


@pytest.mark.parametrize("steps,tol", [(50, 0.02), (100, 0.01)])
def test_dpmpp_gaussian_follows_the_ode(steps, tol, generator):
    """The probability-flow ODE of a Gaussian keeps z = (x_t - a_t mu)/sqrt(a_t^2 std^2 + s_t^2)
    constant; DPM-Solver++ must reach that state at its last noisy step t_l and return its
    exact denoised value (its final step is x = D(x_{t_l}))."""
    z = standard_normal((256, 1, 1, 2, 2), generator)
    x_T = exact_x_T(MU, STD, z)
    t_last = sampling_timesteps(SCHED, steps)[-2]
    a, s = coeffs(t_last)
    den = gaussian_denoiser(MU, STD, SCHED)
    expect = den(a * MU + math.sqrt(a**2 * STD**2 + s**2) * z, torch.full((256,), t_last))
    out = dpmpp_2m_sample(den, x_T, SCHED, steps)
    torch.testing.assert_close(out, expect, atol=tol, rtol=0)


def test_ddim_eta1_is_seeded():
    den = gaussian_denoiser(0.0, 1.0, SCHED)
    x_T = torch.randn(2, 2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    run = [ddim_sample(den, x_T, SCHED, 10, eta=1.0, generator=torch.Generator().manual_seed(s))
           for s in (3, 3, 4)]
    torch.testing.assert_close(run[0], run[1], rtol=0, atol=0)
    assert (run[0] - run[2]).abs().max() > 1e-3
    x_T_copy = x_T.clone()
    ddim_sample(den, x_T, SCHED, 10)
    assert torch.equal(x_T, x_T_copy)  # the caller's tensor is never mutated


@pytest.mark.parametrize("sampler", [ddim_sample, dpmpp_2m_sample])
def test_context_is_reproduced_exactly(sampler, generator):
    B, T = 2, 5
    context = torch.randn(B, T, 4, 3, 3, generator=generator)
    mask = torch.zeros(B, T)
    mask[0, :2] = 1
    mask[1, :1] = 1
    den = with_context(gaussian_denoiser(0.0, 1.0, SCHED), context, mask)
    x_T = torch.randn(B, T, 4, 3, 3, generator=generator)
    out = sampler(den, x_T, SCHED, 8)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], context[keep], rtol=0, atol=1e-5)
    assert (out[~keep] - context[~keep]).abs().mean() > 0.1


def test_timesteps_and_bad_input():
    assert sampling_timesteps(SCHED, 4) == [999, 749, 499, 249, -1]
    assert sampling_timesteps(SCHED, 4, "leading") == [750, 500, 250, 0, -1]
    assert len(sampling_timesteps(SCHED, 3)) == 4  # not 5: no float-arange overshoot
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(SCHED, 0)
    with pytest.raises(ValueError, match="spacing"):
        sampling_timesteps(SCHED, 10, "linspace")
