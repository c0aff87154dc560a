"""Model files: everything needed to rebuild a model (kind + hyper-parameters + weights).

Two containers, chosen by suffix, neither of which executes pickled code on load:
- ``.safetensors``: tensors + string metadata ``drivesim_kind`` / ``drivesim_hparams`` (JSON);
- anything else (``.pt``): a dict of tensors and plain values read with ``torch.load(weights_only=True)``.
A Lightning ``.ckpt`` is read too when its module stored a ``drivesim_model`` entry
(see ``drivesim.training.checkpoints.attach_model_to_checkpoint``).

This lives in ``models`` (not ``training``) so that ``models``/``rollout`` can load weights
without importing the training package; ``drivesim.training.checkpoints`` re-exports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from drivesim.utils.io import DriveSimInputError, atomic_path

FORMAT = "drivesim.model/1"
CKPT_KEY = "drivesim_model"


def save_model_file(path: str | os.PathLike, model_kind: str, hparams: dict, state_dict: dict[str, torch.Tensor],
                    *, overwrite: bool = False) -> Path:
    """Write ``state_dict`` + ``hparams`` (JSON-serialisable) atomically; refuses to overwrite unless asked."""
    path = Path(path)
    try:
        hparams_json = json.dumps(hparams, sort_keys=True)
    except TypeError as err:
        raise DriveSimInputError(f"hyper-parameters are not JSON-serialisable: {err}", path=path,
                                 field="hparams") from err
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={"format": FORMAT, "drivesim_kind": model_kind,
                                                   "drivesim_hparams": hparams_json})
        else:
            torch.save({"format": FORMAT, "kind": model_kind, "hparams": json.loads(hparams_json),
                        "state_dict": tensors}, tmp)
    return path


def _check_kind(path: Path, kind: Any, expected_kind: str | None) -> None:
    if expected_kind is not None and kind != expected_kind:
        raise DriveSimInputError(f"this is a '{kind}' model file, expected '{expected_kind}'", path=path,
                                 field="kind", value=kind)


def _load_safetensors(path: Path) -> tuple[str, dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as err:
        raise DriveSimInputError(f"not a readable safetensors file: {err}", path=path) from err
    if meta.get("format") != FORMAT:
        raise DriveSimInputError(f"no drivesim metadata (expected format {FORMAT})", path=path,
                                 field="format", value=meta.get("format"))
    return meta.get("drivesim_kind"), json.loads(meta.get("drivesim_hparams", "{}")), state


def _load_torch(path: Path) -> tuple[str, dict, dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt / pickled-code files
        raise DriveSimInputError(f"not a weights-only torch file: {err}", path=path) from err
    if not isinstance(obj, dict):
        raise DriveSimInputError("expected a dict", path=path, value=type(obj).__name__)
    if obj.get("format") == FORMAT:
        return obj.get("kind"), obj.get("hparams", {}), obj["state_dict"]
    if CKPT_KEY in obj and "state_dict" in obj:  # a Lightning checkpoint
        info = obj[CKPT_KEY]
        prefix = info.get("prefix", "")
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        state.update({k: torch.as_tensor(v) for k, v in info.get("extra_state", {}).items()})
        return info.get("kind"), info.get("hparams", {}), state
    raise DriveSimInputError(f"neither a drivesim model file (format {FORMAT}) nor a Lightning checkpoint "
                             f"with a '{CKPT_KEY}' entry", path=path, field="format", value=sorted(obj)[:8])


def read_model_file(path: str | os.PathLike) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """``(kind, hparams, state_dict)`` of a model file or Lightning checkpoint, whatever its kind."""
    path = Path(path)
    if not path.is_file():
        raise DriveSimInputError("model file not found", path=path)
    return (_load_safetensors if path.suffix == ".safetensors" else _load_torch)(path)


def load_model_file(path: str | os.PathLike, expected_kind: str | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(hparams, state_dict)``; errors name the file for a missing file or a wrong kind."""
    kind, hparams, state = read_model_file(path)
    _check_kind(Path(path), kind, expected_kind)
    return hparams, state
