"""Autoencoder losses as pure functions (no Lightning, no module state; docs/autoencoder.md).

The LDM ``LPIPSWithDiscriminator`` loss without the learned log-variance, per frame:
``L = sum|x - x_hat| (+ w_2 sum (x - x_hat)^2) (+ w_p LPIPS) + w_kl KL (+ w_f flicker)
+ lambda_adv * w_d * (-E[D(x_hat)])``, with ``lambda_adv = ||grad L_rec|| / (||grad L_gan|| + 1e-4)``
at the last trainable decoder layer. Videos are ``[B, T, 3, H, W]`` in [-1, 1], latents
``[B, T, C, h, w]``. Randomness (the latent noise) comes from an injected ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from drivesim.models.autoencoder import DiagonalGaussian
from drivesim.models.discriminators import hinge_d_loss

__all__ = ["NOISE_MODES", "LossWeights", "adaptive_weight", "add_latent_noise", "flicker", "flicker_loss",
           "flicker_split", "frame_change_error", "generator_gan_loss", "generator_loss", "hinge_d_loss",
           "reconstruction_loss"]

NOISE_MODES = ("fixed", "uniform")
Lpips = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y) [B, T, 3, H, W] -> [B, T]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator loss terms: ``kl`` (w_kl), ``l2`` (w_2, the squared error next to
    the L1 sum), ``lpips`` (w_p, used when an LPIPS network is given), ``flicker`` (w_f, clips
    only) and ``disc`` (w_d, multiplies the adaptive GAN weight)."""

    kl: float = 1e-6
    l2: float = 0.0
    lpips: float = 1.0
    flicker: float = 0.0
    disc: float = 0.5


def frame_change_error(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])| per pixel, ``[B, T - 1, C, H, W]``."""
    return ((recon[:, 1:] - recon[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs()


def flicker(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Temporal flicker: mean |(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])| over ``[B, T, 3, H, W]`` (T >= 2),
    in the units of the inputs; it is zero when the errors are constant in time."""
    if recon.shape[1] < 2:
        raise ValueError(f"flicker needs T >= 2 frames, got shape {tuple(recon.shape)}")
    return frame_change_error(recon, target).mean()


def flicker_split(recon: torch.Tensor, target: torch.Tensor, threshold: float = 0.03) -> tuple[torch.Tensor, ...]:
    """The flicker metric on pixels whose true change ``max_c |x[t+1] - x[t]|`` is at most ``threshold``
    ("static": content that barely changes, so any error change there is the decoder's own flicker)
    and on the others ("moving"), plus the moving fraction of pixels; ``[B, T, 3, H, W]`` in [0, 1].
    A mean over an empty set is NaN."""
    if recon.shape != target.shape or recon.ndim != 5 or recon.shape[1] < 2:
        raise ValueError(f"flicker_split needs two equal [B, T >= 2, C, H, W] tensors, got {tuple(recon.shape)} "
                         f"and {tuple(target.shape)}")
    err = frame_change_error(recon, target)
    moving = ((target[:, 1:] - target[:, :-1]).abs().amax(dim=2, keepdim=True) > threshold).expand_as(err)
    nan = torch.tensor(float("nan"))
    static_err, moving_err = err[~moving], err[moving]
    return (static_err.mean() if static_err.numel() else nan, moving_err.mean() if moving_err.numel() else nan,
            moving.float().mean())


def flicker_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The flicker metric as a loss: the sum over pixels of the frame-change error per frame pair
    (``[B, T >= 2, ...]``), in the units of the per-frame L1 sum."""
    err = frame_change_error(recon, target)  # [B, T - 1, C, H, W]
    return err.sum() / (err.shape[0] * err.shape[1])


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor, l2_weight: float = 0.0, lpips: Lpips | None = None,
                        lpips_weight: float = 1.0) -> torch.Tensor:
    """Per-frame sum of ``|x - x_hat| (+ w_2 (x - x_hat)^2) (+ w_p LPIPS per pixel)``, averaged over
    the ``B * T`` frames (LDM's pixel loss, with an optional squared term: PSNR is a squared error)."""
    frames = x.shape[0] * x.shape[1]
    diff = x - recon
    rec = diff.abs().sum() / frames
    if l2_weight:
        rec = rec + l2_weight * diff.pow(2).sum() / frames
    if lpips is not None:
        rec = rec + lpips_weight * lpips(x, recon).sum() * x[0, 0].numel() / frames
    return rec


def generator_gan_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term ``-E[D(x_hat)]`` (the hinge GAN of LDM)."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """LDM adaptive GAN weight ||grad rec|| / (||grad gan|| + 1e-4) at ``last_layer``, clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def add_latent_noise(z: torch.Tensor, level: float, generator: torch.Generator, mode: str = "fixed") -> torch.Tensor:
    """``z + s * std_c(z) * eps`` for latents ``[B, T, C, h, w]``: ``std_c`` the batch std of latent
    channel c (detached), ``s = level`` (mode ``fixed``) or one ``s ~ U(0, level)`` per sample (mode
    ``uniform``); eps (then the uniform draw) come from ``generator``. ``level == 0`` returns ``z``.

    The decoder learns to render slightly-off latents smoothly: with kl_weight ~1e-6 the posterior
    std collapses to ~1% of the latent std, so without it the decoder only sees exact latents and
    turns a diffusion model's residual latent error into high-frequency texture. Per channel,
    because trained channels differ in scale by up to 4x (one global std drowned the small ones).
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"latent noise mode: expected one of {NOISE_MODES}, got {mode!r}")
    if level == 0.0:
        return z
    eps = torch.randn(z.shape, generator=generator, device=generator.device).to(z)
    levels = torch.full((z.shape[0],), level, device=generator.device)  # [B]
    if mode == "uniform":
        levels *= torch.rand(z.shape[0], generator=generator, device=generator.device)
    levels = levels.to(z).view(-1, *([1] * (z.dim() - 1)))  # [B, 1, 1, 1, 1]
    dims = [d for d in range(z.dim()) if d != 2]  # every dim but the channel: [B, T, C, h, w]
    return z + levels * z.detach().float().std(dim=dims, keepdim=True).to(z) * eps


def generator_loss(x: torch.Tensor, recon: torch.Tensor, posterior: DiagonalGaussian, weights: LossWeights, *,
                   lpips: Lpips | None = None, discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The autoencoder's loss for target ``x`` and reconstruction ``recon`` (both ``[B, T, 3, H, W]``)
    and the posterior they came from: ``(loss, logs)`` with detached log values. The flicker term
    joins for clips (T > 1) with ``weights.flicker > 0``; the GAN term when a ``discriminator`` is
    given, weighted adaptively at ``last_layer`` (required with it)."""
    rec = reconstruction_loss(x, recon, weights.l2, lpips, weights.lpips)
    kl = posterior.kl().mean()
    loss = rec + weights.kl * kl
    logs = {"rec_loss": rec.detach(), "kl": kl.detach(), "l1": (x - recon).abs().mean().detach()}
    if weights.flicker > 0 and x.shape[1] > 1:
        temporal = flicker_loss(recon, x)
        loss = loss + weights.flicker * temporal
        logs["flicker_loss"] = temporal.detach()
    if discriminator is not None:
        if last_layer is None:
            raise ValueError("generator_loss: the GAN term needs last_layer for its adaptive weight")
        g_loss = generator_gan_loss(discriminator(recon))
        weight = adaptive_weight(rec, g_loss, last_layer) * weights.disc
        loss = loss + weight * g_loss
        logs.update(g_loss=g_loss.detach(), d_weight=weight)
    return loss, logs
