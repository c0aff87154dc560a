"""Learning-rate schedules over the training *budget*, and optimizer construction.

A CPU demo stage is bounded by wall time (``trainer.max_time``), a cluster run by steps
(``trainer.max_steps``); Lightning stops at whichever ends first. The schedule follows the
same rule: progress is the larger of ``global_step / max_steps`` and ``elapsed / max_time``,
so a run that is cut by its time budget still ends on a decayed learning rate (its last
weights are the settled ones instead of a noisy high-LR iterate).

    factor = warmup(step) * decay(progress)
    warmup(step) = min(1, (step + 1) / warmup_steps)
    decay(p)     = clamp((1 - p) / decay_fraction, min_ratio, 1)   (linear over the last
                   ``decay_fraction`` of the budget; 1 everywhere when decay_fraction = 0)

Runs bounded by steps only are deterministic (a resumed run follows the same factors);
with ``max_time`` binding, the factor depends on measured time, like the stopping point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def lr_factor(step: int, progress: float, warmup_steps: int = 0, decay_fraction: float = 0.0,
              min_ratio: float = 0.02) -> float:
    """Multiplier of the base learning rate at ``step`` with ``progress`` in [0, 1] of the budget."""
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction: expected a value in [0, 1], got {decay_fraction!r}")
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_fraction > 0.0:
        factor *= min(1.0, max(min_ratio, (1.0 - progress) / decay_fraction))
    return factor


def budget_progress(trainer: Any) -> float:
    """Used fraction of the training budget: max(step / max_steps, elapsed / max_time), in [0, 1].

    0 when neither bound is set (an unbounded run never decays) or there is no trainer.
    """
    if trainer is None:
        return 0.0
    progress = 0.0
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps > 0:
        progress = trainer.global_step / max_steps
    timer = _timer(trainer)
    if timer is not None:
        elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
        if remaining is not None and elapsed + remaining > 0:
            progress = max(progress, elapsed / (elapsed + remaining))
    return float(min(max(progress, 0.0), 1.0))


def _timer(trainer: Any) -> Any:
    from lightning.pytorch.callbacks import Timer

    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, Timer):
            return callback
    return None


def make_adam(params: Iterable[torch.nn.Parameter] | list[dict], lr: float, betas: tuple[float, float],
              weight_decay: float = 0.0, decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam / AdamW with the fused kernel where this torch has one for every parameter's device.

    Why: the per-parameter loop of the default implementation costs ~15% of a tiny UNet's
    CPU training step (hundreds of small tensors); the fused kernel does one pass. It falls
    back to the default implementation when fused is unavailable (older torch, other devices).
    """
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() for p in tensors)
    if fused:
        try:
            return cls(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / torch
            pass
    return cls(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def check_schedule(warmup_steps: int, decay_fraction: float) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected >= 0, got {warmup_steps!r}")
    if not (0.0 <= decay_fraction <= 1.0) or math.isnan(decay_fraction):
        raise ValueError(f"lr_decay_fraction: expected a value in [0, 1], got {decay_fraction!r}")
