"""Samplers: small pure functions over a denoiser D(x_t, t) -> x0_hat (docs/architecture.md,
"Code style").

Each sampler walks a decreasing list of integer timesteps t_0 > t_1 > ... > t_{n-1} and
finally to the clean end point t = -1 (alphabar = 1). Every step goes from t_i to the actual
next timestep t_{i+1}; this equals diffusers' ``DDIMScheduler`` (which steps by
N // steps) whenever N is divisible by the step count, and equals diffusers'
``DPMSolverMultistepScheduler`` (final_sigmas_type="zero") for any count.

Timestep spacing (Lin et al. 2023, "Common diffusion noise schedules...", Table 2):
- ``"trailing"`` (default): t_i = round(N - i N / n) - 1, i.e. starts at t = N - 1;
- ``"leading"``: t_i = (n - 1 - i) * (N // n), i.e. DDIM's original spacing ending at t = 0.
Both match the diffusers options of the same name (steps_offset = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from drivesim.diffusion.parameterization import DenoiseFn
from drivesim.diffusion.schedule import DiscreteVPSchedule

SPACINGS = ("trailing", "leading")
# callback(step index, t, x_t before the step, x0_hat)
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def sampling_timesteps(schedule: DiscreteVPSchedule, steps: int, spacing: str = "trailing") -> list[int]:
    """Decreasing integer timesteps of an n-step sampler, followed by the clean end point -1."""
    n_train = schedule.num_steps
    if not isinstance(steps, int) or not 1 <= steps <= n_train:
        raise ValueError(f"steps: expected an int in [1, {n_train}], got {steps!r}")
    if spacing == "trailing":
        ts = np.round(n_train - np.arange(steps) * (n_train / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(steps) * (n_train // steps))[::-1].astype(np.int64)
    else:
        raise ValueError(f"spacing: expected one of {SPACINGS}, got {spacing!r}")
    return [int(t) for t in ts] + [-1]


def _coeffs(schedule: DiscreteVPSchedule, t: int) -> tuple[float, float]:
    """(a_t, s_t) as Python floats (float64 precision) for one timestep."""
    return float(schedule.a(torch.tensor(t))), float(schedule.s(torch.tensor(t)))


def _call(denoise: DenoiseFn, x: torch.Tensor, t: int) -> torch.Tensor:
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    return denoise(x, t_batch)


def ddim_sample(denoise: DenoiseFn, x_T: torch.Tensor, schedule: DiscreteVPSchedule, steps: int,
                eta: float = 0.0, generator: torch.Generator | None = None,
                callback: StepCallback | None = None, spacing: str = "trailing") -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): from x_T [B, T, C, h, w] to a sample x_0.

    x_{t'} = a_{t'} x0_hat + sqrt(s_{t'}^2 - sigma^2) eps_hat + sigma z,
    sigma = eta * sqrt(s_{t'}^2 / s_t^2 * (1 - alphabar_t / alphabar_{t'})); eta = 0 is the
    deterministic ODE sampler, eta = 1 DDPM-like ancestral sampling (noise from ``generator``).
    """
    if eta < 0:
        raise ValueError(f"eta: expected >= 0, got {eta!r}")
    ts = sampling_timesteps(schedule, steps, spacing)
    x = x_T
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        a, s = _coeffs(schedule, t)
        a_next, s_next = _coeffs(schedule, t_next)
        x0 = _call(denoise, x, t)
        if callback is not None:
            callback(i, t, x, x0)
        eps = (x - a * x0) / s
        sigma = eta * math.sqrt((s_next**2 / s**2) * (1.0 - a**2 / a_next**2))
        x = a_next * x0 + math.sqrt(max(s_next**2 - sigma**2, 0.0)) * eps
        if sigma > 0:
            gen_device = generator.device if generator is not None else x.device
            z = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
            x = x + sigma * z.to(x.device)
    return x


def dpmpp_2m_sample(denoise: DenoiseFn, x_T: torch.Tensor, schedule: DiscreteVPSchedule,
                    steps: int, generator: torch.Generator | None = None,
                    callback: StepCallback | None = None, spacing: str = "trailing") -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data (x0) prediction, midpoint form.

    With lambda = log(a / s) and h = lambda_{t'} - lambda_t:
    x_{t'} = (s_{t'} / s_t) x - a_{t'} (e^{-h} - 1) D,  D = x0_i + (x0_i - x0_{i-1}) / (2 r),
    r = h_{i-1} / h. The first step is first order (D = x0_i) and so is the last one, into the
    clean end point (s = 0), where the update is x = x0_hat exactly. Deterministic: the
    ``generator`` argument exists for a uniform sampler signature and is unused.
    """
    del generator
    ts = sampling_timesteps(schedule, steps, spacing)
    x = x_T
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = _call(denoise, x, t)
        if callback is not None:
            callback(i, t, x, x0)
        if t_next == -1:
            x = x0
            break
        a, s = _coeffs(schedule, t)
        a_next, s_next = _coeffs(schedule, t_next)
        h = math.log(a_next / s_next) - math.log(a / s)
        d = x0 if x0_prev is None else x0 + (x0 - x0_prev) / (2.0 * (h_prev / h))
        x = (s_next / s) * x - a_next * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


# The one sampler table (training validation, `drivesim sample`, rollouts, probes, benchmarks
# all go through drivesim.inference.sample, which looks samplers up here).
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": ddim_sample, "dpmpp_2m": dpmpp_2m_sample}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function called ``name`` (``ddim`` | ``dpmpp_2m``)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {tuple(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
