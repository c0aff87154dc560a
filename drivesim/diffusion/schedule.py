"""Discrete-time variance-preserving (VP) noise schedule.

The forward process is q(x_t | x_0) = N(a_t x_0, s_t^2 I) with a_t = sqrt(alphabar_t) and
s_t = sqrt(1 - alphabar_t) (DDPM, Ho et al. 2020, eq. 4), for integer t in [0, num_steps).
The sampler's "clean" end point is written t = -1 (alphabar = 1, s = 0).

``kind="linear"`` is the *LDM* linear schedule: linear in sqrt(beta), i.e.
beta_t = (sqrt(beta_start) + t/(N-1) (sqrt(beta_end) - sqrt(beta_start)))^2 (what diffusers
calls ``"scaled_linear"``; Video LDM / Stable Diffusion use 0.0015 -> 0.0195 over 1000 steps).
``kind="cosine"`` is Nichol & Dhariwal 2021 (eq. 17, offset 0.008, betas clipped at 0.999).
"""

from __future__ import annotations

import math

import torch

KINDS = ("linear", "cosine")


class DiscreteVPSchedule:
    """alphabar_t tables (float64) and the helpers a_t, s_t, log-SNR, q-sample."""

    def __init__(self, num_steps: int = 1000, kind: str = "linear",
                 beta_start: float = 0.0015, beta_end: float = 0.0195) -> None:
        if kind not in KINDS:
            raise ValueError(f"schedule kind: expected one of {KINDS}, got {kind!r}")
        if not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"schedule num_steps: expected an int >= 2, got {num_steps!r}")
        if kind == "linear" and not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"schedule betas: need 0 < beta_start < beta_end < 1, got "
                             f"{beta_start!r} -> {beta_end!r}")
        self.num_steps = num_steps
        self.kind = kind
        self.beta_start = beta_start
        self.beta_end = beta_end
        if kind == "linear":
            root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps,
                                  dtype=torch.float64)
            self.betas = root**2
        else:
            self.betas = _cosine_betas(num_steps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def __repr__(self) -> str:
        return (f"DiscreteVPSchedule(num_steps={self.num_steps}, kind={self.kind!r}, "
                f"beta_start={self.beta_start}, beta_end={self.beta_end})")

    def alphabar(self, t: torch.Tensor) -> torch.Tensor:
        """alphabar_t for integer timesteps ``t`` (any shape); t = -1 means clean (1.0)."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if bool(((t < -1) | (t >= self.num_steps)).any()):
            raise ValueError(f"timestep out of range [-1, {self.num_steps}): {t.tolist()}")
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return padded[t + 1]

    def a(self, t: torch.Tensor) -> torch.Tensor:
        """Signal scale a_t = sqrt(alphabar_t), float64."""
        return self.alphabar(t).sqrt()

    def s(self, t: torch.Tensor) -> torch.Tensor:
        """Noise scale s_t = sqrt(1 - alphabar_t), float64."""
        return (1.0 - self.alphabar(t)).sqrt()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(a_t^2 / s_t^2) (Kingma et al. 2021), +inf at t = -1."""
        ab = self.alphabar(t)
        return torch.log(ab) - torch.log1p(-ab)

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) for per-sample timesteps t [B], shaped [B, 1, 1, 1, 1] to broadcast
        over a ``like`` tensor [B, T, C, h, w], on its device and dtype."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        a = self.a(t).to(like.device, like.dtype).reshape(shape)
        s = self.s(t).to(like.device, like.dtype).reshape(shape)
        return a, s

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = a_t x0 + s_t eps (DDPM eq. 4); t [B] (one level per clip), x0 [B, T, C, h, w]."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise


def _cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved-DDPM cosine schedule: alphabar(u) = cos^2((u + o)/(1 + o) * pi/2)."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = 1.0 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)
