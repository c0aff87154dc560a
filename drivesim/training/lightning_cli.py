"""LightningCLI wiring for `drivesim fit|validate|test|predict --config configs/...yaml`.

Configs name the LightningModule and the DataModule by `class_path` (subclass mode), so one
entry point trains every stage; constructor signatures are the config (docs/architecture.md,
"Code style").
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from drivesim.utils.io import DriveSimInputError, input_error_in

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


def _plain(value: Any) -> Any:
    """A config value in comparable form (jsonargparse Namespaces as dicts, tuples as lists)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def explicit_model_args(args: Iterable[str]) -> set[str]:
    """Model init-arg names given on the command line itself (``--model.init_args.NAME`` or the
    shorthand ``--model.NAME``, with or without ``=``), as opposed to config files and defaults."""
    names = set()
    for arg in args:
        key = arg.split("=", 1)[0]
        for prefix in ("--model.init_args.", "--model."):
            if key.startswith(prefix) and key != "--model.class_path":
                names.add(key[len(prefix):].split(".", 1)[0])
                break
    return names


def reconcile_resume_args(given: dict[str, Any], from_ckpt: dict[str, Any],
                          explicit: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Model init args for a resumed run, and one message per field that differs.

    The checkpoint's hyperparameters are the run's own, so they win over config files and defaults
    (a resume repeats the run; a config edited since, or a flag the first run had on its command
    line and the resume lacks, does not silently change it). A field given explicitly on the
    resume's command line wins over the checkpoint (a new ``model_file``, a changed lr): upstream
    LightningCLI drops such flags silently (Lightning-AI/pytorch-lightning#21455)."""
    merged, messages = dict(from_ckpt), []
    for name in sorted(set(given) | set(from_ckpt)):
        if name not in from_ckpt or name not in given:
            if name in given:
                merged[name] = given[name]
            continue
        ours, theirs = _plain(given[name]), _plain(from_ckpt[name])
        if ours == theirs:
            continue
        if name in explicit:
            merged[name] = given[name]
            messages.append(f"model.init_args.{name}: the command line's {ours!r} replaces the checkpoint's "
                            f"{theirs!r}")
        else:
            messages.append(f"model.init_args.{name}: resuming with the checkpoint's {theirs!r} "
                            f"(the config says {ours!r}; give --model.init_args.{name} to change it)")
    return merged, messages


def find_last_checkpoint(roots: Iterable[str | os.PathLike], dirpaths: Iterable[str | os.PathLike] = ()) -> Path | None:
    """The newest ``last*.ckpt`` of earlier runs: in ``dirpaths`` (ModelCheckpoint's explicit folders)
    and in every logger version under ``roots`` (``ROOT/<logger>/version_*/checkpoints``, or
    ``ROOT/checkpoints`` without a logger). Lightning itself only looks in the *new* run's version
    folder, which is empty, so ``--ckpt_path last`` would silently start from scratch."""
    found: list[Path] = []
    for folder in dirpaths:
        found += Path(folder).glob("last*.ckpt")
    for root in roots:
        found += Path(root).glob("*/version_*/checkpoints/last*.ckpt")
        found += Path(root).glob("checkpoints/last*.ckpt")
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p))) if found else None


def name_config_field(err: DriveSimInputError, config: Any) -> DriveSimInputError:
    """``err`` with its field set to the config key holding its path (``fit.model.init_args.
    autoencoder_path``), when the error names a file but no field and the config names that file."""
    if err.path is None or err.field is not None or not hasattr(config, "items"):
        return err
    keys = [k for k, v in config.items() if isinstance(v, (str, os.PathLike)) and str(v) == str(err.path)]
    if not keys:
        return err
    return DriveSimInputError(err.message, path=err.path, field=keys[0], value=str(err.path))


def _checkpoint_dirpaths(callbacks: Any) -> list[str]:
    out = []
    for cb in callbacks or []:
        class_path = str(getattr(cb, "class_path", "") or "")
        dirpath = getattr(getattr(cb, "init_args", None), "dirpath", None)
        if class_path.endswith("ModelCheckpoint") and dirpath:
            out.append(str(dirpath))
    return out


class DriveSimCLI(LightningCLI):
    """LightningCLI with drivesim defaults (config saved next to the logs, overwrite allowed
    because the log version folder is unique per run; bf16 on CPUs without it falls back; on
    ``--ckpt_path`` the checkpoint's model hyperparameters win over config files, and explicit
    command-line model flags win over the checkpoint, each difference reported)."""

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """As LightningCLI's, minus its warning about ``args`` and ``sys.argv`` both being set (the
        ``drivesim`` entry point always passes its own argv on), and keeping the raw arguments for
        :func:`explicit_model_args`."""
        if isinstance(args, (dict, Namespace)):
            self._raw_args = []
            self.config = parser.parse_object(args)
        else:
            self._raw_args = list(sys.argv[1:] if args is None else args)
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path") == "last":
            trainer = self.config[sub]["trainer"]
            last = find_last_checkpoint([trainer.get("default_root_dir") or os.getcwd()],
                                        _checkpoint_dirpaths(trainer.get("callbacks")))
            if last is not None:
                rank_zero_info(f"--ckpt_path last: resuming from {last}")
                self.config[sub]["ckpt_path"] = str(last)
        model = self.config[sub].get("model") if sub else None
        init_args = getattr(model, "init_args", None) if model is not None else None
        if init_args is None:
            super()._parse_ckpt_path()
            return
        given = dict(vars(init_args))
        super()._parse_ckpt_path()
        resumed = self.config[sub]["model"]["init_args"]
        from_ckpt = dict(vars(resumed))
        merged, messages = reconcile_resume_args(given, from_ckpt, explicit_model_args(self._raw_args))
        for name, value in merged.items():
            resumed[name] = value
        for message in messages:
            rank_zero_warn(f"--ckpt_path {self.config[sub].get('ckpt_path')}: {message}")

    def _set_seed(self) -> None:
        """As LightningCLI's, but its "Seed set to N" line waits until the classes are built, so a
        config error is the only line a failed start prints."""
        seed_log = logging.getLogger("lightning.fabric.utilities.seed")
        level = seed_log.level
        seed_log.setLevel(logging.WARNING)
        try:
            super()._set_seed()
        finally:
            seed_log.setLevel(level)

    def instantiate_classes(self) -> None:
        """As LightningCLI's; a ``DriveSimInputError`` raised while building the classes (a model
        file named in the config that does not exist) is re-raised naming the config key."""
        try:
            super().instantiate_classes()
        except Exception as err:
            found = input_error_in(err)
            if found is None:
                raise
            raise name_config_field(found, self.config) from err
        seed = self._get(self.config, "seed_everything")
        if seed is not False:
            rank_zero_info(f"Seed set to {seed}")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        precision, warning = resolve_cpu_precision(str(trainer["precision"]), str(trainer["accelerator"]),
                                                   cpu_bf16_supported(), torch.cuda.is_available())
        if warning:
            warnings.warn(warning, stacklevel=1)
            trainer["precision"] = precision


_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def run_lightning_cli(args: Sequence[str], run: bool = True) -> DriveSimCLI:
    """Parse, instantiate and run. Parse errors raise jsonargparse's ``ArgumentError`` instead of
    printing the usage and exiting (``drivesim`` prints them as one line); a model constructor's
    ``DriveSimInputError`` (a config naming a missing model file) stays in the cause chain of
    jsonargparse's instantiation error, where ``drivesim.cli.user_error`` finds it."""
    return DriveSimCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "drivesim", "exit_on_error": False,
                       **{name: {"exit_on_error": False} for name in _SUBCOMMANDS}},
    )
