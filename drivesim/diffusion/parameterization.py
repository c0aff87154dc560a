"""What the network predicts, and the denoiser built from it.

With x_t = a_t x0 + s_t eps (a_t^2 + s_t^2 = 1):
- eps-prediction (Ho et al. 2020): net -> eps;  x0 = (x_t - s_t eps) / a_t.
- v-prediction (Salimans & Ho 2022, eq. 9; Video LDM default): v = a_t eps - s_t x0,
  so x0 = a_t x_t - s_t v and eps = s_t x_t + a_t v.

``Denoiser`` keeps preconditioning apart from the network (EDM's ``EDMPrecond``): the network
only ever sees (x_t, t, cond); the schedule and the prediction type live here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from drivesim.diffusion.schedule import DiscreteVPSchedule

PREDICTIONS = ("v", "eps")

# network(x_t [B,T,C,h,w], t [B], cond) -> prediction [B,T,C,h,w]
Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
# denoiser(x_t [B,T,C,h,w], t [B]) -> x0_hat [B,T,C,h,w] (conditioning bound in)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def training_target(x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                    prediction: str) -> torch.Tensor:
    """The regression target of the network for clean x0 and noise eps."""
    if check_prediction(prediction) == "v":
        return a * noise - s * x0
    return noise


def x0_from_output(x_t: torch.Tensor, out: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                   prediction: str) -> torch.Tensor:
    """x0_hat from the network output (v or eps)."""
    if check_prediction(prediction) == "v":
        return a * x_t - s * out
    return (x_t - s * out) / a


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """eps_hat = (x_t - a_t x0_hat) / s_t (undefined at s_t = 0, the clean end point)."""
    return (x_t - a * x0) / s


class Denoiser:
    """D(x_t, t, cond) -> x0_hat for a network trained with ``prediction`` on ``schedule``."""

    def __init__(self, network: Network, schedule: DiscreteVPSchedule, prediction: str = "v") -> None:
        self.network = network
        self.schedule = schedule
        self.prediction = check_prediction(prediction)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        a, s = self.schedule.coefficients(t, x_t)
        out = self.network(x_t, t, cond)
        if out.shape != x_t.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} != input {tuple(x_t.shape)}")
        return x0_from_output(x_t, out.to(x_t.dtype), a, s, self.prediction)

    def bind(self, cond: Any) -> DenoiseFn:
        """The sampler-facing form D(x_t, t) with ``cond`` fixed."""
        return lambda x_t, t: self(x_t, t, cond)
