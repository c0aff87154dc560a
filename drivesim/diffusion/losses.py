"""The denoising loss (DDPM "simple" loss on the chosen target, Video LDM eq. 1 / v-loss).

One noise level t per *clip*: every frame of a clip shares t, so the temporal layers learn to
denoise a coherent clip (a known peer bug draws t per frame). Frames can be left out of the
loss (``loss_mask``), e.g. the clean context frames of the prediction model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from drivesim.diffusion.parameterization import Network, check_prediction, training_target
from drivesim.diffusion.schedule import DiscreteVPSchedule


@dataclass
class NoisedClip:
    x_t: torch.Tensor    # [B, T, C, h, w]
    t: torch.Tensor      # [B] int64, one level per clip
    noise: torch.Tensor  # [B, T, C, h, w]


TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def sample_timesteps(count: int, num_steps: int, kind: str = "uniform",
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                     mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Training noise levels ``[count]`` int64 in {0..num_steps-1}.

    ``uniform``: t ~ U{0..N-1} (DDPM). ``logit_normal``: t = floor(N * sigmoid(m + s * n)),
    n ~ N(0, 1) (Esser et al. 2024, SD3 Sec. 3.1): more of the training budget on the middle
    noise levels, where the layout and object shapes are decided, fewer on the nearly clean
    and the nearly pure-noise ends.
    """
    if kind == "uniform":
        return torch.randint(0, num_steps, (count,), generator=generator, device=device)
    if kind == "logit_normal":
        if not std > 0:
            raise ValueError(f"logit-normal timestep std: expected > 0, got {std!r}")
        n = torch.randn(count, generator=generator, device=device)
        u = torch.sigmoid(mean + std * n)
        return (u * num_steps).long().clamp_(0, num_steps - 1)
    raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {kind!r}")


def noise_clip(x0: torch.Tensor, schedule: DiscreteVPSchedule,
               generator: torch.Generator | None = None, timesteps: str = "uniform",
               timestep_mean: float = 0.0, timestep_std: float = 1.0) -> NoisedClip:
    """Draw t per clip (``sample_timesteps``: uniform by default) and eps ~ N(0, I); return
    x_t = a_t x0 + s_t eps.

    Random numbers come from ``generator`` (on its own device) and are moved to x0's device.
    """
    if x0.ndim != 5:
        raise ValueError(f"x0: expected [B, T, C, h, w], got shape {tuple(x0.shape)}")
    gen_device = generator.device if generator is not None else x0.device
    t = sample_timesteps(x0.shape[0], schedule.num_steps, timesteps, generator, gen_device,
                         timestep_mean, timestep_std).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=gen_device,
                        dtype=torch.float32).to(x0.device, x0.dtype)
    return NoisedClip(schedule.q_sample(x0, t, noise), t, noise)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared error over [B, T, C, h, w], in float32, over frames with
    loss_mask [B, T] = 1; ``weight`` (broadcastable to [B, T, 1, h, w], >= 0) re-weights cells:
    sum(w * err) / sum(w), so a uniform weight is the plain mean."""
    err = (pred.float() - target.float()) ** 2
    if loss_mask is None and weight is None:
        return err.mean()
    w = torch.ones_like(err)
    if loss_mask is not None:
        if loss_mask.shape != pred.shape[:2]:
            raise ValueError(f"loss_mask: expected shape {tuple(pred.shape[:2])}, got {tuple(loss_mask.shape)}")
        w = w * loss_mask.to(err.dtype)[:, :, None, None, None]
    if weight is not None:
        if weight.ndim != 5 or weight.shape[:2] != pred.shape[:2] or weight.shape[-2:] != pred.shape[-2:]:
            raise ValueError(f"weight: expected shape [B, T, 1 or C, h, w] = {tuple(pred.shape)}, "
                             f"got {tuple(weight.shape)}")
        w = w * weight.to(err.dtype)
    total = w.sum()
    if total == 0:
        raise ValueError("loss_mask / weight exclude every element of the batch")
    return (err * w).sum() / total


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight per clip (Hang et al. 2023, eq. 7 and its v / eps forms).

    The x0-space weight min(SNR, gamma) expressed for the network's target: eps-prediction
    min(SNR, gamma) / SNR, v-prediction min(SNR, gamma) / (SNR + 1). It caps the weight of the
    nearly clean timesteps, whose gradients otherwise dominate and conflict with the rest
    (reported 3.4x faster convergence).
    """
    check_prediction(prediction)
    capped = snr.clamp(max=gamma)
    return capped / (snr if prediction == "eps" else snr + 1.0)


def diffusion_loss(network: Network, x0: torch.Tensor, cond: Any, schedule: DiscreteVPSchedule,
                   generator: torch.Generator | None = None, prediction: str = "v",
                   loss_mask: torch.Tensor | None = None,
                   weight: torch.Tensor | None = None, snr_gamma: float | None = None,
                   timesteps: str = "uniform", timestep_mean: float = 0.0,
                   timestep_std: float = 1.0) -> torch.Tensor:
    """|| net(x_t, t, cond) - target ||^2 with one t per clip; target = v or eps; optional
    per-frame ``loss_mask`` [B, T] and per-cell ``weight`` [B, T, 1, h, w] (see masked_mse);
    ``snr_gamma`` multiplies each clip's error by its min-SNR-gamma weight (not renormalised);
    ``timesteps`` / ``timestep_mean`` / ``timestep_std``: how t is drawn (``sample_timesteps``)."""
    check_prediction(prediction)
    noised = noise_clip(x0, schedule, generator, timesteps, timestep_mean, timestep_std)
    a, s = schedule.coefficients(noised.t, x0)
    target = training_target(x0, noised.noise, a, s, prediction)
    out = network(noised.x_t, noised.t, cond)
    if snr_gamma is not None:
        snr = (a.float() / s.float()).pow(2).reshape(-1)  # [B]: a, s are [B, 1, 1, 1, 1]
        w_t = min_snr_weight(snr, float(snr_gamma), prediction).sqrt()[:, None, None, None, None]
        out, target = out * w_t, target * w_t   # sqrt on both sides: err * w_t, same normalisation
    return masked_mse(out, target, loss_mask, weight)
