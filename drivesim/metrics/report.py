"""report.json: metrics, protocol, inputs, extractor files, versions, sample counts, timings."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torchmetrics

import drivesim
from drivesim.utils.io import atomic_write_json

REPORT_SCHEMA = "drivesim.eval/1"


def versions() -> dict[str, str]:
    return {"drivesim": drivesim.__version__, "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def build_report(result: dict, *, inputs: dict, extractors: dict, plots: list[str] | None = None) -> dict:
    """Wrap an ``evaluate_videos`` result with everything needed to reproduce it."""
    return {"schema": REPORT_SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "inputs": inputs, "protocol": result.get("protocol"), "extractors": extractors,
            "versions": versions(), "plots": plots or [],
            **{k: v for k, v in result.items() if k != "protocol"}}


def mark_weights(result: dict, extractors: dict) -> dict:
    """Record in the FVD / FID groups which detector file produced them and whether it is the
    published one; a non-published file makes the metric ``standard: false``."""
    for metric, kind in (("fvd", "i3d"), ("fid", "inception")):
        if metric in result and kind in extractors:
            info = extractors[kind]
            result[metric]["weights_sha256"] = info["sha256"]
            result[metric]["standard"] = bool(info["published"])
            if not info["published"]:
                result[metric]["note"] = (f"non-standard: {kind} file {info['file']} is not the published "
                                          "one (SHA-256 unknown); not comparable with published numbers")
    return result


def write_report(path: str | os.PathLike, report: dict, *, overwrite: bool = False) -> Path:
    atomic_write_json(path, _jsonable(report), overwrite=overwrite)
    return Path(path)


def _jsonable(obj):
    """numpy scalars / NaN-free conversion so the file is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
