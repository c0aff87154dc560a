"""Classifier-free guidance over several conditions, batched into one forward pass.

Nested composition (Ho & Salimans 2022 generalised; Video LDM's context guidance, and the
compositional form of Brooks et al. 2023 / InstructPix2Pix). With the guided conditions
taken in ``order`` c_1, ..., c_K (default context, labels, boxes, ego motion) and D_k the
prediction with c_1..c_k kept and c_{k+1}..c_K dropped:

    D = D_0 + sum_k s_k (D_k - D_{k-1})
      = D(∅) + s_ctx (D(ctx) - D(∅)) + s_lab (D(ctx,lab) - D(ctx)) + s_box (D(ctx,lab,box) - D(ctx,lab))
             + s_ego (D(ctx,lab,box,ego) - D(ctx,lab,box))

Why nested rather than independent differences against D(∅): each difference isolates what
one condition adds given the earlier ones, so all scales = 1 is exactly the fully
conditional model and all scales = 0 the fully unconditional one, and only K + 1 variants
are needed. Guiding x0 is the same as guiding eps or v: for a fixed x_t they are affine in
each other and the weights sum to 1. A scale may be a tensor [T] (one per frame, e.g. lower
on the last frames that become the next rollout context), broadcast over [B, T, C, h, w].
Conditions not named in ``scales`` are kept in every variant (not guided).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from drivesim.diffusion.parameterization import DenoiseFn

CONDITIONS = ("context", "labels", "boxes", "ego")
Scale = float | torch.Tensor
# model_call(x_t [B,T,C,h,w], t [B], cond) -> x0_hat [B,T,C,h,w] (e.g. a Denoiser)
ModelCall = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def guidance_variants(cond: Any, guided: Sequence[str]) -> list[Any]:
    """[cond with guided[:k] kept and guided[k:] dropped for k = 0..K].

    ``cond`` is a ``Conditioning`` (anything with ``with_dropped(boxes=, labels=, context=, ego=)``).
    """
    device = next((v.device for v in vars(cond).values() if isinstance(v, torch.Tensor)), None)
    everyone = torch.ones(cond.batch_size, dtype=torch.bool, device=device)  # drop for all samples
    variants = []
    for k in range(len(guided) + 1):
        dropped = {name: everyone for name in guided[k:]}
        variants.append(cond.with_dropped(**dropped) if dropped else cond)
    return variants


def _scale_tensor(scale: Scale, frames: int, like: torch.Tensor, name: str) -> torch.Tensor | float:
    if not isinstance(scale, torch.Tensor):
        return float(scale)
    if scale.ndim == 0:
        return float(scale)
    if scale.shape != (frames,):
        raise ValueError(f"guidance scale '{name}': expected a number or a tensor [T={frames}], "
                         f"got shape {tuple(scale.shape)}")
    return scale.to(like.device, like.dtype).reshape(1, frames, 1, 1, 1)  # [1, T, 1, 1, 1]


def guided_denoiser(model_call: ModelCall, cond: Any, scales: dict[str, Scale],
                    order: Sequence[str] = CONDITIONS) -> DenoiseFn:
    """D(x_t, t) -> guided x0_hat; all K + 1 variants evaluated in ONE forward pass."""
    unknown = set(order) - set(CONDITIONS) | set(scales) - set(order)
    if unknown:
        raise ValueError(f"guidance: unknown or unordered conditions {sorted(unknown)}; "
                         f"order {tuple(order)} must use names from {CONDITIONS}")
    guided = [name for name in order if name in scales]
    if not guided:
        return lambda x_t, t: model_call(x_t, t, cond)
    variants = guidance_variants(cond, guided)
    batched_cond = type(cond).cat(variants)
    n = len(variants)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in = torch.cat([x_t] * n, dim=0)  # [(K+1) B, T, C, h, w], variant-major
        t_in = torch.cat([t] * n, dim=0)    # [(K+1) B]
        preds = model_call(x_in, t_in, batched_cond).chunk(n, dim=0)  # K+1 x [B, T, C, h, w]
        out = preds[0]
        for k, name in enumerate(guided, start=1):
            s = _scale_tensor(scales[name], x_t.shape[1], x_t, name)
            out = out + s * (preds[k] - preds[k - 1])
        return out

    return denoise


GUIDANCE_SCHEDULES = ("constant", "taper")


def context_guidance_scales(window: int, num_context: int, scale: float, kind: str = "taper",
                            taper_to: float = 0.25) -> torch.Tensor:
    """Per-frame context-guidance scale w [T] for a window whose first ``num_context`` frames are given.

    ``constant``: w everywhere. ``taper``: w on the first new frame, falling linearly to
    1 + (w - 1) * taper_to on the last frame, so the frames that become the next segment's
    context get the least guidance: constant guidance saturates and the saturation builds
    up over rollout rounds (docs/architecture.md, "Design rules"). Context frames are
    re-imposed, so their scale is moot.
    """
    if kind not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance schedule must be one of {GUIDANCE_SCHEDULES}, got {kind!r}")
    w = torch.full((window,), float(scale), dtype=torch.float32)
    new = window - num_context
    if kind == "taper" and new > 1:
        low = 1.0 + (scale - 1.0) * taper_to
        w[num_context:] = torch.linspace(float(scale), low, new)
    return w
