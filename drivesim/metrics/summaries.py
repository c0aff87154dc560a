"""JSON-ready result groups of an evaluation: overall value, sample counts, per-window rows
and ``real_level`` (what the real clips score against themselves, the reference line of the
drift plot)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from drivesim.metrics.frechet import FeatureStats, frechet_distance_stats
from drivesim.metrics.oracle.scores import BoxFidelity, wasserstein_1d

Bounds = Callable[[int], dict]


def real_halves_note(halves: list[FeatureStats] | None, cached: bool) -> tuple[list[FeatureStats] | None, str | None]:
    if cached:
        return None, "real statistics came from the cache (no per-video halves)"
    if halves is None or min(h.count for h in halves) < 2:
        return None, "fewer than 2 real samples in a half"
    return halves, None


def frechet_result(value: float, real: FeatureStats, windows: dict[int, FeatureStats], unit: str, *,
                   bounds: Bounds, ddof: int, min_window: int, cached: bool,
                   halves: list[FeatureStats] | None) -> dict:
    """FVD / FID group. A window with fewer than ``min_window`` samples gets ``value: None``
    and a note. ``real_level``: the distance between the real videos split in two halves (even
    and odd videos in listing order), each with about half the real samples."""
    rows = []
    for w in sorted(windows):
        st = windows[w]
        row = {**bounds(w), "value": None, unit: st.count}
        if st.count >= max(2, min_window):
            row["value"] = frechet_distance_stats(real, st, ddof)
        else:
            row["note"] = f"only {st.count} {unit} (< {min_window}): not computed"
        rows.append(row)
    fake = sum(st.count for st in windows.values())
    usable, note = real_halves_note(halves, cached)
    level = None if usable is None else frechet_distance_stats(usable[0], usable[1], ddof)
    return {"value": value, f"real_{unit}": real.count, f"fake_{unit}": fake, "real_from_cache": cached,
            f"min_window_{unit}": min_window, "real_level": level,
            "real_level_note": note or "real videos split in halves (even / odd), about half the samples each",
            "windows": rows}


def temporal_result(real_halves: list[list[np.ndarray]], fake: list[np.ndarray],
                    win_diffs: dict[int, list[np.ndarray]], bounds: Bounds) -> dict:
    """Temporal group: W1 of consecutive-frame differences against the real ones; ``real_level``
    is the W1 between the two halves of the real videos."""
    halves = [np.concatenate(h) if h else np.zeros(0) for h in real_halves]
    real = np.concatenate(halves)
    fk = np.concatenate(fake) if fake else np.zeros(0)
    out = {"real_pairs": len(real), "fake_pairs": len(fk),
           "real_mean_diff": float(real.mean()) if len(real) else None,
           "fake_mean_diff": float(fk.mean()) if len(fk) else None,
           "w1": wasserstein_1d(real, fk) if len(real) and len(fk) else None,
           "real_level": wasserstein_1d(*halves) if all(len(h) for h in halves) else None,
           "windows": []}
    for w in sorted(win_diffs):
        d = np.concatenate(win_diffs[w])
        out["windows"].append({**bounds(w), "pairs": len(d), "mean_diff": float(d.mean()),
                               "w1": wasserstein_1d(real, d) if len(real) else None})
    return out


def _accuracy(c: list[int]) -> dict:
    return {"accuracy": c[0] / c[1] if c[1] else None, "scored": c[1]}


def oracle_result(box: dict[bool, BoxFidelity], win_box: dict[int, BoxFidelity],
                  daynight: dict[bool, list[int]], win_daynight: dict[int, list[int]],
                  luma_threshold: float, calibration: dict, bounds: Bounds) -> dict:
    """Oracle group; the real side's box fidelity and day/night accuracy are its real level."""
    windows = sorted(set(win_box) | set(win_daynight))
    real_box = box[True].summary()
    return {"box_fidelity": {"fake": box[False].summary(), "real": real_box},
            "daynight": {"fake": _accuracy(daynight[False]), "real": _accuracy(daynight[True]),
                         "luma_threshold": luma_threshold},
            "calibration": calibration,
            "real_level": {**{k: real_box.get(k) for k in ("recall", "precision", "mean_iou")},
                           "daynight_accuracy": _accuracy(daynight[True])["accuracy"]},
            "windows": [{**bounds(w), "box_fidelity": win_box[w].summary(),
                         "daynight": _accuracy(win_daynight[w])} for w in windows]}
