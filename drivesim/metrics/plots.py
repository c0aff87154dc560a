"""PNG plots next to report.json: drift curves per time window (with the real clips' level
beside each metric) and a sample grid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from drivesim.data.labels import VEHICLE_CLASSES
from drivesim.metrics.sources import VideoSource
from drivesim.utils.io import atomic_path, atomic_write_bytes


def drift_series(result: dict) -> dict[str, tuple[list[float], list[float]]]:
    """``name -> (window start seconds, values)`` for every metric with per-window values."""
    series: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, rows: list[dict], get) -> None:
        pts = [(r["start_s"] or 0.0, get(r)) for r in rows if get(r) is not None]
        if pts:
            series[name] = ([p[0] for p in pts], [float(p[1]) for p in pts])

    for name in ("fvd", "fid"):
        if name in result:
            add(name.upper(), result[name]["windows"], lambda r: r["value"])
    if "temporal" in result:
        add("temporal W1 (frame diff)", result["temporal"]["windows"], lambda r: r["w1"])
    if "oracle" in result:
        rows = result["oracle"]["windows"]
        for key in ("recall", "precision", "mean_iou"):
            add(f"box {key}", rows, lambda r, k=key: r["box_fidelity"][k])
        add("day/night accuracy", rows, lambda r: r["daynight"]["accuracy"])
    for variant in ("frame", "clip"):
        if result.get("c2st", {}).get(variant, {}).get("windows"):
            add(f"C2ST {variant} accuracy", result["c2st"][variant]["windows"], lambda r: r["accuracy"])
    return series


def real_levels(result: dict) -> dict[str, float]:
    """``name -> value`` of the real clips for the series of :func:`drift_series`: FVD / FID
    and temporal W1 between two halves of the real videos, the oracle's scores on the real
    clips, and 0.5 (indistinguishable) for the C2ST."""
    levels: dict[str, float | None] = {}
    for name in ("fvd", "fid"):
        if name in result:
            levels[name.upper()] = result[name].get("real_level")
    if "temporal" in result:
        levels["temporal W1 (frame diff)"] = result["temporal"].get("real_level")
    oracle = result.get("oracle", {}).get("real_level", {})
    for key in ("recall", "precision", "mean_iou"):
        levels[f"box {key}"] = oracle.get(key)
    levels["day/night accuracy"] = oracle.get("daynight_accuracy")
    if "c2st" in result:
        for variant in ("frame", "clip"):
            levels[f"C2ST {variant} accuracy"] = result["c2st"].get("real_level")
    return {k: float(v) for k, v in levels.items() if v is not None}


def plot_drift(result: dict, path: str | os.PathLike, *, overwrite: bool = False) -> Path | None:
    """One panel per metric against the window start time, the real clips' level as a dashed
    line (see :func:`real_levels`); None when nothing is windowed."""
    series, levels = drift_series(result), real_levels(result)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(6, 2.2 * len(series)), squeeze=False)
    for ax, (name, (x, y)) in zip(axes[:, 0], series.items()):
        ax.plot(x, y, marker="o", label="generated")
        if name in levels:
            ax.axhline(levels[name], color="tab:green", linestyle="--", label="real clips")
            ax.legend(fontsize=6, loc="best")
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("window start (s)")
    fig.suptitle("drift over time windows (fake videos)")
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def sample_grid(sources: Sequence[VideoSource], *, frames_per_video: int = 6, height: int = 96) -> np.ndarray:
    """uint8 ``[rows * height, cols * width, 3]``: one row per video, frames evenly spaced in
    time; conditioned vehicle boxes are drawn in green when the video carries them."""
    rows = []
    for src in sources:
        idx = np.linspace(0, src.num_frames - 1, frames_per_video).round().astype(np.int64)
        frames = src.read(idx)                                       # [n, H, W, 3]
        scale = height / frames.shape[1]
        width = max(1, round(frames.shape[2] * scale))
        tiles = []
        for k, frame in enumerate(frames):
            tile = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            if src.boxes is not None:
                boxes, classes = src.boxes(idx[k:k + 1])
                for (x1, y1, x2, y2), c in zip(boxes[0], classes[0]):
                    if c in VEHICLE_CLASSES:
                        cv2.rectangle(tile, (int(x1 * width), int(y1 * height)),
                                      (int(x2 * width) - 1, int(y2 * height) - 1), (0, 255, 0), 1)
            tiles.append(np.pad(tile, ((1, 1), (1, 1), (0, 0))))
        rows.append(np.concatenate(tiles, axis=1))
        src.close()
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)


def save_png(path: str | os.PathLike, rgb: np.ndarray, *, overwrite: bool = False) -> Path:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, data.tobytes(), overwrite=overwrite)
    return Path(path)
