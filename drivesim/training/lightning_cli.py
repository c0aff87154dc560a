"""LightningCLI wiring for `drivesim fit|validate|test|predict --config configs/...yaml`.

Configs name the LightningModule and the DataModule by `class_path` (subclass mode), so one
entry point trains every stage; constructor signatures are the config (DESIGN §5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

_BF16 = ("bf16-mixed", "bf16", "bf16-true")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN: AVX512-BF16 or AMX). Elsewhere
    PyTorch emulates bf16 and ``bf16-mixed`` is slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_cpu_precision(precision: str, accelerator: str, bf16_supported: bool,
                          cuda_available: bool) -> tuple[str, str | None]:
    """``(precision to use, warning or None)``. A CPU run asked for bf16 on a CPU without native bf16
    falls back to ``32-true`` (the tiny configs ask for ``bf16-mixed``: 1.7x faster autoencoder steps
    on AVX512-BF16, docs/benchmarks.md), so the same config trains everywhere."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda_available)
    if on_cpu and precision in _BF16 and not bf16_supported:
        return "32-true", (f"trainer.precision={precision} on a CPU without native bf16 (no AVX512-BF16/AMX) "
                           "would be emulated and slower; training in 32-true instead")
    return precision, None


class DriveSimCLI(LightningCLI):
    """LightningCLI with drivesim defaults (config saved next to the logs, overwrite allowed
    because the log version folder is unique per run; bf16 on CPUs without it falls back)."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        precision, warning = resolve_cpu_precision(str(trainer["precision"]), str(trainer["accelerator"]),
                                                   cpu_bf16_supported(), torch.cuda.is_available())
        if warning:
            warnings.warn(warning, stacklevel=1)
            trainer["precision"] = precision


def run_lightning_cli(args: Sequence[str], run: bool = True) -> DriveSimCLI:
    return DriveSimCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "drivesim"},
    )
