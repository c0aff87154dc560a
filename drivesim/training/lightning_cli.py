"""LightningCLI wiring for `drivesim fit|validate|test|predict --config configs/...yaml`.

Configs name the LightningModule and the DataModule by `class_path` (subclass mode), so one
entry point trains every stage; constructor signatures are the config (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class DriveSimCLI(LightningCLI):
    """LightningCLI with drivesim defaults (config saved next to the logs, overwrite allowed
    because the log version folder is unique per run)."""


def run_lightning_cli(args: Sequence[str]) -> DriveSimCLI:
    return DriveSimCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "drivesim"},
    )
