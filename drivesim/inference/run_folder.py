"""Run folders: one model file per stage plus a manifest (``run.json``).

``make train`` / ``drivesim train`` and ``make demo`` write a run folder; ``make rollout
RUN=name`` and ``drivesim.Simulator.from_run`` read it. Layout::

    RUN/run.json                              {"schema": "drivesim.run/1", "models": {role: path}, ...}
    RUN/autoencoder/model.safetensors         image-stage autoencoder
    RUN/autoencoder_temporal/model.safetensors  temporal decoder (used for decoding when present)
    RUN/image_ldm/model.safetensors           image LDM (start frames)
    RUN/video_ldm/model.safetensors           prediction model (key frames)
    RUN/interpolation/model.safetensors       interpolation model (optional)
    RUN/upsampler/model.safetensors           video upsampler (optional)

Paths in ``run.json`` are relative to the run folder. Without a manifest the stage folders
above are looked up (the demo's layout), newest format first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drivesim.utils.io import DriveSimInputError, atomic_write_json, read_json

RUN_SCHEMA = "drivesim.run/1"
MANIFEST = "run.json"
MODEL_SUFFIXES = (".safetensors", ".pt", ".ckpt")
# Simulator argument -> stage folders that can provide it, preferred first
STAGE_DIRS: dict[str, tuple[str, ...]] = {
    "autoencoder": ("autoencoder_temporal", "autoencoder"),
    "video": ("video_ldm",),
    "image": ("image_ldm",),
    "interpolation": ("interpolation",),
    "upsampler": ("upsampler",),
}
REQUIRED = ("autoencoder", "video")


def _model_in(folder: Path) -> Path | None:
    return next((folder / f"model{s}" for s in MODEL_SUFFIXES if (folder / f"model{s}").is_file()), None)


def read_run_manifest(run: str | Path) -> dict[str, Any] | None:
    """The parsed ``run.json`` of ``run`` (None when the folder has none)."""
    path = Path(run) / MANIFEST
    if not path.is_file():
        return None
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("schema") != RUN_SCHEMA or not isinstance(doc.get("models"), dict):
        raise DriveSimInputError(f"not a run manifest (expected schema {RUN_SCHEMA!r} and a 'models' object)",
                                 path=path, field="schema", value=doc.get("schema") if isinstance(doc, dict) else doc)
    return doc


def resolve_run(run: str | Path) -> dict[str, Path]:
    """{simulator argument: model file} of a run folder; the autoencoder and video model are required."""
    run = Path(run)
    if not run.is_dir():
        raise DriveSimInputError("run folder not found (train one with `make train` or `make demo`)", path=run)
    doc = read_run_manifest(run)
    if doc is not None:
        unknown = sorted(set(doc["models"]) - set(STAGE_DIRS))
        if unknown:
            raise DriveSimInputError(f"unknown model roles; expected {sorted(STAGE_DIRS)}", path=run / MANIFEST,
                                     field="models", value=unknown)
        files = {role: run / rel for role, rel in doc["models"].items() if rel}
        for role, path in files.items():
            if not path.is_file():
                raise DriveSimInputError("model file named in the run manifest not found", path=run / MANIFEST,
                                         field=f"models.{role}", value=str(path))
    else:
        files = {}
        for role, folders in STAGE_DIRS.items():
            found = next((m for m in (_model_in(run / f) for f in folders) if m is not None), None)
            if found is not None:
                files[role] = found
    missing = [r for r in REQUIRED if r not in files]
    if missing:
        raise DriveSimInputError(f"the run has no {missing[0]} model (stage folders {STAGE_DIRS[missing[0]]} "
                                 f"or {MANIFEST}); train it first", path=run, field=missing[0])
    return files


def _relative(path: Path, run: Path) -> str:
    """``path`` relative to ``run`` when it lies inside it, else absolute."""
    for p, r in ((path, run), (path.resolve(), run.resolve())):
        try:
            return str(p.relative_to(r))
        except ValueError:
            continue
    return str(path.resolve())


def write_run_manifest(run: str | Path, models: dict[str, str | Path], **info: Any) -> Path:
    """Write ``run.json`` (atomically) naming each role's model file relative to ``run``."""
    run = Path(run)
    rel = {}
    for role, path in models.items():
        if role not in STAGE_DIRS:
            raise ValueError(f"unknown model role {role!r}; expected one of {sorted(STAGE_DIRS)}")
        rel[role] = _relative(Path(path), run)
    out = run / MANIFEST
    atomic_write_json(out, {"schema": RUN_SCHEMA, "models": rel, **json.loads(json.dumps(info, default=str))})
    return out
