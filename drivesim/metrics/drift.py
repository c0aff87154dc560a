"""Rollout drift: metrics per time window of one long video, last-window / first-window
ratios with their direction, and a comparison of several rollouts (guidance schedules).

Input is an ``evaluate_videos`` result or a ``report.json`` (same keys) of ONE fake video
scored with ``protocol.window_seconds`` set; ``benchmarks/eval_rollout_drift.py`` drives it.

Metrics (``DRIFT_METRICS``; a metric absent from the result is left out):

- ``box_recall`` / ``box_precision`` / ``box_mean_iou``: oracle box fidelity (higher is better);
- ``daynight_accuracy``: oracle day/night label of the window (higher is better; 0 or 1 for
  one video);
- ``temporal_w1``: W1 between the window's consecutive-frame differences and the real
  clips' (lower is better);
- ``frame_diff_gap``: |mean frame difference of the window - that of the real clips|
  (lower is better);
- ``fvd`` / ``fid``: per-window Fréchet distances when the result has them (lower is better).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivesim.utils.io import DriveSimInputError, atomic_path, atomic_write_json

DRIFT_SCHEMA = "drivesim.drift/1"


@dataclass(frozen=True)
class DriftMetric:
    key: str
    label: str
    higher_is_better: bool
    group: str  # top-level key of the eval result holding the per-window rows


def _box(name: str) -> Callable[[dict, dict], float | None]:
    return lambda row, group: row.get("box_fidelity", {}).get(name)


def _diff_gap(row: dict, group: dict) -> float | None:
    real, fake = group.get("real_mean_diff"), row.get("mean_diff")
    return None if real is None or fake is None else abs(float(fake) - float(real))


DRIFT_METRICS: tuple[DriftMetric, ...] = (
    DriftMetric("box_recall", "box recall", True, "oracle"),
    DriftMetric("box_precision", "box precision", True, "oracle"),
    DriftMetric("box_mean_iou", "box mask IoU", True, "oracle"),
    DriftMetric("daynight_accuracy", "day/night accuracy", True, "oracle"),
    DriftMetric("temporal_w1", "temporal W1 vs real", False, "temporal"),
    DriftMetric("frame_diff_gap", "|frame diff - real|", False, "temporal"),
    DriftMetric("fvd", "FVD", False, "fvd"),
    DriftMetric("fid", "FID", False, "fid"),
)
_GETTERS: dict[str, Callable[[dict, dict], float | None]] = {
    "box_recall": _box("recall"),
    "box_precision": _box("precision"),
    "box_mean_iou": _box("mean_iou"),
    "daynight_accuracy": lambda row, group: row.get("daynight", {}).get("accuracy"),
    "temporal_w1": lambda row, group: row.get("w1"),
    "frame_diff_gap": _diff_gap,
    "fvd": lambda row, group: row.get("value"),
    "fid": lambda row, group: row.get("value"),
}
METRICS_BY_KEY = {m.key: m for m in DRIFT_METRICS}


def available_metrics(result: dict) -> list[DriftMetric]:
    """The drift metrics whose group is in ``result`` with per-window rows."""
    return [m for m in DRIFT_METRICS if isinstance(result.get(m.group), dict)
            and "windows" in result[m.group]]


def window_seconds(result: dict) -> float:
    """``protocol.window_seconds`` of the result; an error when it was not windowed."""
    ws = (result.get("protocol") or {}).get("window_seconds")
    if ws is None or not ws > 0:
        raise DriveSimInputError("the evaluation has no time windows (run it with window_seconds)",
                                 field="protocol.window_seconds", value=ws)
    return float(ws)


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def window_metrics(result: dict, num_windows: int | None = None) -> list[dict]:
    """One row per time window: ``window``, ``start_s``, ``end_s``, ``minute`` (window end in
    minutes: window 0 of 60 s is minute 1) and one value (or None) per available metric.

    Windows are those present in any metric group; with ``num_windows`` every window
    ``0 .. num_windows - 1`` gets a row (absent ones all None), so a gap shows as missing.
    """
    ws = window_seconds(result)
    metrics = available_metrics(result)
    values: dict[int, dict[str, float | None]] = {}
    for m in metrics:
        group = result[m.group]
        for row in group["windows"]:
            w = int(row["window"])
            values.setdefault(w, {})[m.key] = _number(_GETTERS[m.key](row, group))
    indices = set(values) | (set(range(num_windows)) if num_windows is not None else set())
    rows = []
    for w in sorted(indices):
        row = {"window": w, "start_s": w * ws, "end_s": (w + 1) * ws, "minute": (w + 1) * ws / 60.0}
        row.update({m.key: values.get(w, {}).get(m.key) for m in metrics})
        rows.append(row)
    return rows


def drift_ratio(rows: list[dict], metric: DriftMetric) -> dict:
    """Last window against the first, for one metric.

    Uses the first and the last window that have a value (``first_window`` / ``last_window``
    say which). ``ratio`` = last / first (None with fewer than two valued windows or a first
    value of 0: see ``note``); ``change`` = last - first; ``worse`` is whether the last value
    is worse than the first in the metric's direction (``higher_is_better``).
    """
    valued = [r for r in rows if r.get(metric.key) is not None]
    out = {"higher_is_better": metric.higher_is_better, "first_window": None, "last_window": None,
           "first": None, "last": None, "ratio": None, "change": None, "worse": None, "note": None}
    if len(valued) < 2:
        out["note"] = f"{len(valued)} window(s) with a value; need 2"
        return out
    first, last = valued[0], valued[-1]
    a, b = first[metric.key], last[metric.key]
    out.update(first_window=first["window"], last_window=last["window"], first=a, last=b,
               change=b - a, worse=(b < a) if metric.higher_is_better else (b > a))
    if a == 0:
        out["note"] = "first value is 0: ratio undefined (see change)"
    else:
        out["ratio"] = b / a
    return out


def drift_ratios(rows: list[dict], metrics: list[DriftMetric]) -> dict[str, dict]:
    return {m.key: drift_ratio(rows, m) for m in metrics}


def summarize_eval(result: dict, num_windows: int | None = None) -> dict:
    """``{"window_seconds", "windows": [...], "ratios": {metric: {...}}}`` for one video."""
    metrics = available_metrics(result)
    rows = window_metrics(result, num_windows)
    return {"window_seconds": window_seconds(result), "windows": rows,
            "ratios": drift_ratios(rows, metrics)}


def compare_schedules(schedules: dict[str, dict]) -> dict[str, dict]:
    """Per metric, which schedule keeps quality best (``schedules``: name -> summarize_eval).

    ``best_last``: best value in the last valued window (direction-aware);
    ``least_drift``: best ratio (highest when higher is better, else lowest). None when no
    schedule has the number.
    """
    out = {}
    for m in DRIFT_METRICS:
        have = {n: s["ratios"][m.key] for n, s in schedules.items() if m.key in s.get("ratios", {})}
        if not have:
            continue
        out[m.key] = {"higher_is_better": m.higher_is_better,
                      "best_last": _best({n: r["last"] for n, r in have.items()}, m.higher_is_better),
                      "least_drift": _best({n: r["ratio"] for n, r in have.items()}, m.higher_is_better)}
    return out


def _best(values: dict[str, float | None], higher: bool) -> str | None:
    valued = {n: v for n, v in values.items() if v is not None}
    if not valued:
        return None
    pick = max if higher else min
    best = pick(valued.values())
    winners = [n for n, v in valued.items() if v == best]
    return winners[0] if len(winners) == 1 else "tie: " + ", ".join(winners)


def drift_outputs(out_dir: str | os.PathLike, schedules: list[str]) -> list[Path]:
    """Everything the drift benchmark writes under ``out_dir``."""
    root = Path(out_dir)
    return [root / "drift.json", root / "drift.png", *(root / s for s in schedules)]


def _exists(path: Path) -> bool:
    """A file, or a non-empty folder (an empty folder is not an output)."""
    return path.is_file() or (path.is_dir() and any(os.scandir(path)))


def check_outputs(out_dir: str | os.PathLike, schedules: list[str], *, overwrite: bool) -> None:
    """Refuse (before any work) when an output exists and ``overwrite`` is False."""
    if overwrite:
        return
    existing = [str(p) for p in drift_outputs(out_dir, schedules) if _exists(p)]
    if existing:
        raise DriveSimInputError("output exists; pass --overwrite to replace it", path=existing[0],
                                 field="--out", value=str(out_dir))


def build_drift_report(schedules: dict[str, dict], *, settings: dict, measurement: str) -> dict:
    """The drift.json document: ``schedules`` maps name -> summary (+ ``rollout`` timings)."""
    metrics = {m.key: {"label": m.label, "higher_is_better": m.higher_is_better}
               for m in DRIFT_METRICS if any(m.key in s.get("ratios", {}) for s in schedules.values())}
    return {"schema": DRIFT_SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "measurement": measurement, "metrics": metrics,
            "schedules": schedules, "comparison": compare_schedules(schedules)}


def write_drift_json(path: str | os.PathLike, report: dict, *, overwrite: bool = False) -> Path:
    """Atomic, strict JSON (NaN -> null); ``FileExistsError`` if present and not ``overwrite``."""
    from drivesim.metrics.report import _jsonable

    atomic_write_json(path, _jsonable(report), overwrite=overwrite)
    return Path(path)


def plot_schedules(schedules: dict[str, dict], path: str | os.PathLike, *,
                   overwrite: bool = False) -> Path | None:
    """One panel per metric, one line per schedule, x = minute (window end); None if no data."""
    keys = [m for m in DRIFT_METRICS if any(
        any(r.get(m.key) is not None for r in s["windows"]) for s in schedules.values())]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.0 * len(keys)), squeeze=False, sharex=True)
    for ax, m in zip(axes[:, 0], keys):
        for name, s in schedules.items():
            pts = [(r["minute"], r[m.key]) for r in s["windows"] if r.get(m.key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        arrow = "higher is better" if m.higher_is_better else "lower is better"
        ax.set_ylabel(f"{m.label}\n({arrow})", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("minute of rollout (window end)")
    fig.suptitle("rollout drift per guidance schedule")
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def format_table(schedules: dict[str, dict]) -> str:
    """Compact text table: one line per (schedule, metric) with first, last, ratio, direction,
    then one line per schedule with its rollout timings when present."""
    lines = [f"{'schedule':<10} {'metric':<18} {'dir':<4} {'first':>8} {'last':>8} {'ratio':>7} worse"]
    for name, s in schedules.items():
        for key, r in s["ratios"].items():
            arrow = "up" if r["higher_is_better"] else "down"
            worse = "-" if r["worse"] is None else ("yes" if r["worse"] else "no")
            lines.append(f"{name:<10} {key:<18} {arrow:<4} {_fmt(r['first']):>8} {_fmt(r['last']):>8} "
                         f"{_fmt(r['ratio']):>7} {worse}")
    for name, s in schedules.items():
        ro = s.get("rollout")
        if ro:
            lines.append(f"{name:<10} rollout: {ro['frames']} frames, wall {ro['wall_s']:.1f} s, "
                         f"{ro['frames_per_s']:.2f} frames/s, CPU {ro['cpu_s']:.1f} s, "
                         f"peak RSS {ro['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)
