"""Model files for every stage, and the bridge from Lightning checkpoints.

``save_model_file`` / ``load_model_file`` are implemented in ``drivesim.models.model_files``
(so plain-model code can load weights without importing ``training``) and re-exported here.
A LightningModule makes its ``.ckpt`` readable by ``load_model_file`` by calling
``attach_model_to_checkpoint`` from ``on_save_checkpoint``; ``export_model_file`` turns such
a checkpoint into a standalone ``.safetensors`` (or ``.pt``) model file:

    python -m drivesim.training.checkpoints last.ckpt autoencoder.safetensors --kind autoencoder
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from drivesim.models.model_files import (
    CKPT_KEY,
    FORMAT,
    load_model_file,
    read_model_file,
    save_model_file,
)
from drivesim.utils.io import DriveSimInputError

__all__ = ["CKPT_KEY", "FORMAT", "attach_model_to_checkpoint", "export_model_file", "load_model_file",
           "read_model_file", "save_model_file"]


def attach_model_to_checkpoint(checkpoint: dict, model_kind: str, hparams: dict, prefix: str) -> None:
    """Record kind, hparams and the state-dict prefix of the plain model inside a Lightning checkpoint,
    e.g. ``attach_model_to_checkpoint(ckpt, "autoencoder", self.autoencoder.hparams, "autoencoder.")``."""
    checkpoint[CKPT_KEY] = {"kind": model_kind, "hparams": dict(hparams), "prefix": prefix}


def export_model_file(src: str | os.PathLike, dst: str | os.PathLike, model_kind: str | None = None,
                      overwrite: bool = False) -> Path:
    """Copy the model out of a model file or Lightning checkpoint into ``dst`` (suffix picks the format)."""
    kind, hparams, state = read_model_file(src)
    if model_kind is not None and kind != model_kind:
        raise DriveSimInputError(f"this is a '{kind}' model, expected '{model_kind}'", path=src, field="kind",
                                 value=kind)
    model_kind = model_kind or kind
    return save_model_file(dst, model_kind, hparams, state, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivesim.training.checkpoints",
                                     description="export a checkpoint's model to a .safetensors/.pt model file")
    parser.add_argument("src", help="Lightning .ckpt or model file")
    parser.add_argument("dst", help="output model file (.safetensors or .pt)")
    parser.add_argument("--kind", default=None, help="expected model kind (e.g. autoencoder)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = export_model_file(args.src, args.dst, args.kind, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
