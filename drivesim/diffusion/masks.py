"""Context masks (prediction model), interpolation masks, and context re-imposition.

Video LDM (Blattmann et al. 2023, Sec. 3.1.1 / App.): the prediction model is trained with
S in {0, 1, 2} clean context frames (the first S frames of the clip), given as
c_S = (m_S * z, m_S); S = 0 doubles as the unconditional branch for context guidance. The
interpolation model uses the same masking with key frames as context (frames 0 and T-1 of
a window: 3 new frames between each key-frame pair for T -> 4T) and a regime label for the
two frame-rate steps (1.875 -> 7.5 fps and 7.5 -> 30 fps) served by one model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from drivesim.diffusion.parameterization import DenoiseFn

# Interpolation regimes, indexed by the `regime` label of the conditioning.
INTERP_REGIMES: tuple[str, ...] = ("1.875->7.5fps", "7.5->30fps")


def _check_probs(probs: Sequence[float], name: str) -> torch.Tensor:
    p = torch.as_tensor(list(probs), dtype=torch.float64)
    if p.ndim != 1 or len(p) == 0 or bool((p < 0).any()) or abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"{name}: expected non-negative probabilities summing to 1, got {list(probs)}")
    return p


def sample_context_counts(batch: int, probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """S per clip [B] int64, P(S = k) = probs[k] (k = 0, 1, 2, ... len(probs) - 1)."""
    p = _check_probs(probs, "context_probs")
    return torch.multinomial(p, batch, replacement=True, generator=generator)


def context_mask_from_counts(counts: torch.Tensor, num_frames: int) -> torch.Tensor:
    """m [B, T] float: 1 on the first S_b frames of clip b, 0 elsewhere."""
    if bool((counts > num_frames).any()) or bool((counts < 0).any()):
        raise ValueError(f"context frames: counts {counts.tolist()} must be in [0, T={num_frames}]")
    frames = torch.arange(num_frames, device=counts.device)
    return (frames[None, :] < counts[:, None]).float()


def sample_context_masks(batch: int, num_frames: int, probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, T], counts S [B]) with S drawn per clip from ``probs``."""
    if len(probs) - 1 > num_frames:
        raise ValueError(f"context_probs allows up to {len(probs) - 1} context frames but T = {num_frames}")
    counts = sample_context_counts(batch, probs, generator)
    return context_mask_from_counts(counts, num_frames), counts


def interpolation_mask(batch: int, num_frames: int = 5,
                       key_frames: Sequence[int] | None = None) -> torch.Tensor:
    """m [B, T]: 1 on the key frames (default 0 and T-1: 3 new frames between them for T=5)."""
    keys = (0, num_frames - 1) if key_frames is None else tuple(key_frames)
    if num_frames < 2 or any(not 0 <= k < num_frames for k in keys):
        raise ValueError(f"interpolation key frames {keys} must lie in [0, T={num_frames}), T >= 2")
    mask = torch.zeros(batch, num_frames)
    mask[:, list(keys)] = 1.0
    return mask


def sample_regimes(batch: int, probs: Sequence[float] = (0.5, 0.5),
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Interpolation regime label [B] int64 (index into INTERP_REGIMES)."""
    p = _check_probs(probs, "regime_probs")
    if len(p) != len(INTERP_REGIMES):
        raise ValueError(f"regime_probs: expected {len(INTERP_REGIMES)} values, got {list(probs)}")
    return torch.multinomial(p, batch, replacement=True, generator=generator)


def masked_context(latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """m * z: latents [B, T, C, h, w] with non-context frames zeroed (a new tensor)."""
    return latents * mask.to(latents.dtype)[:, :, None, None, None]


def with_context(denoise: DenoiseFn, context: torch.Tensor, mask: torch.Tensor) -> DenoiseFn:
    """Re-impose the clean context every step: x0_hat <- m * z_ctx + (1 - m) * x0_hat.

    Every sampler ends with x = x0_hat at the clean end point, so the sample reproduces the
    context frames exactly, and intermediate steps see them noised consistently.
    """
    if context.shape[:2] != mask.shape:
        raise ValueError(f"with_context: mask shape {tuple(mask.shape)} != context [B, T] "
                         f"{tuple(context.shape[:2])}")

    def denoise_with_context(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = denoise(x_t, t)
        m = mask.to(x0.device, x0.dtype)[:, :, None, None, None]  # [B, T, 1, 1, 1]
        return m * context.to(x0.device, x0.dtype) + (1 - m) * x0

    return denoise_with_context
