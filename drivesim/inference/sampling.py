"""The one guided sampling call: a model record + conditioning -> latents.

Every generator of latents goes through :func:`sample` — validation samples, `drivesim
sample`, Lightning ``predict``, the rollout engine's segment / interpolation / start-frame
samplers, the probes and the benchmarks — so guidance, context re-imposition, the sampler
table and the noise draw exist once.

Guidance (``drivesim.diffusion.guidance``): ``scales`` maps ``context`` / ``labels`` /
``boxes`` / ``ego`` to a number or a per-frame tensor ``[T]``; a condition left out is kept in
every branch (scale 1 = the plain conditional model, one forward pass).
Context (Video LDM §3.1.1): ``cond.context`` ``[B, T', C, h, w]`` with ``cond.context_mask``
``[B, T']`` (T' <= T) is the clean c_S; it is re-imposed at every step, so the sample
reproduces it exactly.
"""

from __future__ import annotations

import torch

from drivesim.diffusion.guidance import Scale, guided_denoiser
from drivesim.diffusion.masks import with_context
from drivesim.diffusion.samplers import get_sampler
from drivesim.inference.loading import ModelRecord
from drivesim.models.conditioning import Conditioning


def guidance_scales(cond: Conditioning, *, context: Scale = 1.0, labels: float = 1.0,
                    boxes: float = 1.0, ego: Scale = 1.0) -> dict[str, Scale]:
    """The ``scales`` dict for :func:`sample`: conditions at scale 1 (or absent) are left out,
    so they cost no extra forward pass. ``context`` and ``ego`` may be per-frame tensors ``[T]``."""
    scales: dict[str, Scale] = {}
    if cond.context is not None and _guided(context):
        scales["context"] = context
    if labels != 1.0:
        scales["labels"] = float(labels)
    if boxes != 1.0 and cond.boxes is not None:
        scales["boxes"] = float(boxes)
    if _has_ego(cond) and _guided(ego):
        scales["ego"] = ego if isinstance(ego, torch.Tensor) else float(ego)
    return scales


def _has_ego(cond: Conditioning) -> bool:
    """Whether any frame carries known ego motion (all unknown: the ego branch would equal the
    conditional one)."""
    return cond.ego_speed is not None and (cond.ego_known is None or bool(cond.ego_known.any()))


def _guided(scale: Scale) -> bool:
    """A scale that needs its own guidance branch: a per-frame tensor, or a number other than 1."""
    return isinstance(scale, torch.Tensor) or scale != 1.0


def _padded_context(cond: Conditioning, shape: tuple[int, ...], device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [B, T, C, h, w], mask [B, T]) with the T' given frames first, zeros after."""
    b, t = shape[:2]
    given = cond.context.shape[1]
    if cond.context_mask is None or tuple(cond.context_mask.shape) != (b, given):
        got = None if cond.context_mask is None else tuple(cond.context_mask.shape)
        raise ValueError(f"context_mask: expected [B, T'] = {(b, given)}, got {got}")
    ctx = torch.zeros(shape, device=device)
    ctx[:, :given] = cond.context.to(device)
    mask = torch.zeros(b, t, device=device)
    mask[:, :given] = cond.context_mask.to(device)
    return ctx, mask


@torch.no_grad()
def sample(model: ModelRecord, cond: Conditioning, num_frames: int, latent_hw: tuple[int, int], *,
           steps: int, sampler: str = "ddim", scales: dict[str, Scale] | None = None,
           generator: torch.Generator | None = None, eta: float = 0.0,
           batch_size: int | None = None) -> torch.Tensor:
    """Latents ``[B, T, C, h, w]`` sampled from ``model`` for ``cond``.

    ``generator`` draws x_T (on its own device, then moved to the network's) and any
    stochastic sampler noise: same generator state, same latents. ``eta`` > 0 is
    stochastic DDIM; ``dpmpp_2m`` is deterministic. ``batch_size`` is needed only when
    ``cond`` carries no per-sample tensor to read it from.
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps!r}")
    run = get_sampler(sampler)
    if eta and sampler != "ddim":
        raise ValueError(f"eta={eta!r} is a DDIM option; {sampler} is deterministic")
    device = model.device
    b = batch_size or cond.batch_size
    shape = (b, num_frames, model.network.in_channels, *latent_hw)
    gen_device = generator.device if generator is not None else device
    x_T = torch.randn(shape, generator=generator, device=gen_device).to(device)
    cond = cond.to(device)
    denoise = guided_denoiser(model.denoiser(), cond, dict(scales or {}))
    if cond.context is not None:
        denoise = with_context(denoise, *_padded_context(cond, shape, device))
    kwargs = {"eta": eta} if sampler == "ddim" else {}
    return run(denoise, x_T, model.schedule, steps, generator=generator, **kwargs)
