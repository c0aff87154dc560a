"""``ThroughputMeter``: training speed and peak accelerator memory of a short run (``drivesim gpu-check``).

Counts training batches after ``warmup`` batches (compilation, cuDNN autotuning and allocator
warm-up fall in the warm-up), timing with the device synchronised at both ends, and writes
``out`` (JSON) at the end of fit: batches, seconds, batches/s, samples/s, peak allocated and
reserved CUDA memory (GiB; None on CPU) and the device name. Rank 0 writes; samples/s counts
one rank's batches (multiply by the world size for the job).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from drivesim.utils.io import DriveSimInputError, atomic_write_json


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
    return 0


class ThroughputMeter(Callback):
    """Args: out: JSON file written at fit end; warmup: batches not timed (>= 0)."""

    def __init__(self, out: str, warmup: int = 3) -> None:
        if not (isinstance(warmup, int) and warmup >= 0):
            raise DriveSimInputError("expected an integer >= 0", field="warmup", value=warmup)
        self.out, self.warmup = Path(out), warmup
        self.batches = self.samples = 0
        self.start: float | None = None

    @staticmethod
    def _sync(module: LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.start is None and batch_idx >= self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.start is not None:
            self.batches += 1
            self.samples += _batch_size(batch)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync(pl_module)
        seconds = time.perf_counter() - self.start if self.start is not None else 0.0
        cuda = pl_module.device.type == "cuda"
        gib = 2.0 ** 30
        report = {"batches": self.batches, "seconds": seconds, "warmup": self.warmup,
                  "batches_per_s": self.batches / seconds if seconds > 0 else None,
                  "samples_per_s": self.samples / seconds if seconds > 0 else None,
                  "peak_allocated_gib": torch.cuda.max_memory_allocated(pl_module.device) / gib if cuda else None,
                  "peak_reserved_gib": torch.cuda.max_memory_reserved(pl_module.device) / gib if cuda else None,
                  "device": torch.cuda.get_device_name(pl_module.device) if cuda else "cpu",
                  "world_size": trainer.world_size, "precision": str(trainer.precision)}
        if trainer.is_global_zero:
            atomic_write_json(self.out, report)
