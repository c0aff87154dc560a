"""Training-safety callbacks shared by every stage."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite."""


def _loss_values(outputs: Any) -> dict[str, float]:
    """The scalar losses in a training_step output (a tensor, or a dict of tensors)."""
    if isinstance(outputs, torch.Tensor):
        return {"loss": float(outputs.detach())} if outputs.numel() == 1 else {}
    if isinstance(outputs, Mapping):
        values = {}
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1 and "loss" in key:
                values[key] = float(value.detach())
        return values
    return {}


class _BatchStepCallback(Callback):
    """Remembers the global step a training batch ran under: optimizers increment
    ``global_step`` before ``on_train_batch_end``, and manual optimisation with two optimizers
    increments it twice, so the end-of-batch value is not the step the batch was logged at."""

    def __init__(self) -> None:
        self._step_at_start = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_start = trainer.global_step


class FiniteLossGuard(_BatchStepCallback):
    """Stop training on a NaN/Inf loss, naming the step, before any checkpoint is written.

    Runs in ``on_train_batch_end``, which Lightning calls before ``ModelCheckpoint`` saves
    (checkpoint callbacks always run last), so the last checkpoint on disk stays the last
    good one. The exception propagates out of ``trainer.fit``; Lightning does not save on
    an exception.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        for name, value in _loss_values(outputs).items():
            if not math.isfinite(value):
                last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none yet"
                raise NonFiniteLossError(
                    f"{name} is {value} at global step {self._step_at_start} "
                    f"(epoch {trainer.current_epoch}, batch {batch_idx}); training stopped. "
                    f"The last good checkpoint is kept: {last}. Lower the learning rate, "
                    f"enable gradient clipping, or check the data of this batch.")


class LossRecorder(_BatchStepCallback):
    """Append every training step's losses (and the clip ids it saw) to a JSON-lines file.

    One file per rank (``{path}.rank{r}.jsonl``), flushed per line so a killed run keeps what
    it logged. Used by the resume and DDP tests and handy for quick loss-curve plots.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        record = {"step": self._step_at_start, "epoch": trainer.current_epoch,
                  "rank": trainer.global_rank, **_loss_values(outputs)}
        if isinstance(batch, Mapping) and "clip_id" in batch:
            record["clip_id"] = list(batch["clip_id"])
        out = Path(f"{self.path}.rank{trainer.global_rank}.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _check_warmup_ema(decay: float, warmup: float) -> None:
    if not (0 <= decay < 1 and warmup > 1):
        raise ValueError(f"warmup EMA: need 0 <= decay < 1 and warmup > 1, got decay={decay}, warmup={warmup}")


def _warmup_decay(decay: float, warmup: float, num_averaged: torch.Tensor) -> float:
    n = float(num_averaged)
    return min(decay, (1.0 + n) / (warmup + n))


def warmup_ema_avg_fn(decay: float, warmup: float = 10.0):
    """EMA update with the usual warm-up: after ``n`` updates the decay is
    ``min(decay, (1 + n) / (warmup + n))``, so a short run's average is not dominated by the
    initial weights (a fixed 0.999 keeps 0.999**400 = 67% of the step-0 weights after 400
    steps, which is all a CPU demo stage gets). Signature of ``AveragedModel``'s ``avg_fn``."""
    _check_warmup_ema(decay, warmup)

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = _warmup_decay(decay, warmup, num_averaged)
        return averaged * d + current * (1.0 - d)

    return avg_fn


def warmup_ema_multi_avg_fn(decay: float, warmup: float = 10.0):
    """:func:`warmup_ema_avg_fn` over lists of tensors, in place: one fused
    ``torch._foreach_lerp_`` per (device, dtype) group instead of a new tensor per parameter
    (``AveragedModel``'s ``multi_avg_fn`` signature). Non-floating tensors (integer buffers)
    take the current value. Same numbers as the per-tensor form (tested)."""
    _check_warmup_ema(decay, warmup)

    def multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor],
                     num_averaged: torch.Tensor) -> None:
        if not averaged:
            return
        d = _warmup_decay(decay, warmup, num_averaged)
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)  # a + (1 - d)(x - a) = d a + (1 - d) x
        else:
            for a, x in zip(averaged, current, strict=True):
                a.copy_(x)

    return multi_avg_fn


class WarmupEMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with the decay warm-up of :func:`warmup_ema_avg_fn`,
    applied with the fused :func:`warmup_ema_multi_avg_fn` (the per-tensor update took 11% of
    a tiny image-LDM step on CPU); the averaged weights are what validation and the exported
    model file use."""

    def __init__(self, decay: float = 0.999, warmup: float = 10.0, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None, use_buffers: bool = True) -> None:
        super().__init__(decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step, use_buffers=use_buffers)
        self._kwargs["avg_fn"] = None
        self._kwargs["multi_avg_fn"] = warmup_ema_multi_avg_fn(decay, warmup)
