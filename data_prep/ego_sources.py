"""Ego motion for the converters: BDD100K info files (GPS) and per-video CSV time series.

Both give samples of speed and yaw rate over time that are interpolated linearly to the
output frames (``drivesim.data.ego.resample_motion``); frames outside the samples' span, or
between two samples further apart than the source's gap limit, are unknown.

- BDD100K ``info/<split>/<video>.json`` (the GPS/IMU log recorded with each video):
  ``startTime`` (ms since the epoch, the video's first frame) and ``locations``, fixes of
  ``timestamp`` (ms), ``speed`` (m/s) and ``course`` (degrees clockwise from north), about one
  per second; a negative speed or course marks an invalid fix. The yaw rate is the
  derivative of the course (heading = -course, left positive); below ``MIN_COURSE_SPEED`` the
  course is noise and the yaw rate is taken as 0. Fixes whose speed or derived yaw rate is
  implausible (``drivesim.data.ego.check_ego_value``) are GPS glitches and dropped. The
  phone's gyro is not used: its axes depend on how the phone was mounted.
- dashcam CSV (``videos --ego DIR``): ``DIR/<video path without suffix>.csv`` with the columns
  ``time`` (s from the start of the video), ``speed`` (m/s) and ``yaw_rate`` (rad/s, left
  positive); every value is checked (a bad one names the file, line and column).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from drivesim.data.ego import MAX_SPEED, MAX_YAW_RATE, EgoSeries, check_ego_value, resample_motion
from drivesim.utils.io import DriveSimInputError, read_json

INFO_MAX_GAP = 2.5       # s: BDD100K GPS fixes come about once a second
CSV_MAX_GAP = 1.0        # s: a dashcam CSV is expected to be denser
MIN_COURSE_SPEED = 1.0   # m/s: slower, the GPS course is noise
CSV_COLUMNS = ("time", "speed", "yaw_rate")


def index_files(root: Path, suffix: str, field: str) -> dict[str, Path]:
    """``stem -> path`` of the files ending in ``suffix`` under ``root`` (recursive)."""
    if not root.is_dir():
        raise DriveSimInputError("folder not found", path=root, field=field)
    return {p.stem: p for p in sorted(root.rglob(f"*{suffix}")) if p.is_file()}


def frame_ego(series: EgoSeries | None, j: int) -> dict:
    """``ClipWriter.add_frame`` keywords of output frame ``j`` (empty where unknown)."""
    if series is None or not series.known[j]:
        return {}
    return {"ego_speed": float(series.speed[j]), "ego_yaw_rate": float(series.yaw_rate[j])}


def _number(obj: object, key: str, path: Path, where: str) -> float:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DriveSimInputError("missing or not a finite number", path=path, field=f"{where}.{key}", value=value)
    return float(value)


def load_bdd_info(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid fixes of a BDD100K info file: times (s since ``startTime``), speed, yaw rate [n]."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DriveSimInputError("an info file is a JSON object", path=path, field="<root>", value=type(doc).__name__)
    start = _number(doc, "startTime", path, "<root>")
    fixes = doc.get("locations") or []
    if not isinstance(fixes, list):
        raise DriveSimInputError("must be a list of GPS fixes", path=path, field="locations", value=fixes)
    rows = sorted((_number(f, "timestamp", path, f"locations[{i}]"), _number(f, "speed", path, f"locations[{i}]"),
                   _number(f, "course", path, f"locations[{i}]")) for i, f in enumerate(fixes))
    rows = [r for k, r in enumerate(rows) if r[1] >= 0 and r[2] >= 0 and (k == 0 or r[0] > rows[k - 1][0])]
    if len(rows) < 2:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    arr = np.array(rows, np.float64)
    t, speed = (arr[:, 0] - start) / 1000.0, arr[:, 1]
    heading = np.unwrap(-np.radians(arr[:, 2]))
    yaw = np.where(speed >= MIN_COURSE_SPEED, np.gradient(heading, t), 0.0)
    plausible = (speed <= MAX_SPEED) & (np.abs(yaw) <= MAX_YAW_RATE)   # the clip format's limits
    return t[plausible], speed[plausible], yaw[plausible]


def bdd_info_motion(path: Path, video_times: np.ndarray) -> EgoSeries:
    """Ego motion at ``video_times`` (s from the video's first frame) from an info file."""
    t, speed, yaw = load_bdd_info(path)
    return resample_motion(t, speed, yaw, video_times, max_gap=INFO_MAX_GAP)


def load_ego_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dashcam ego CSV's samples: times (s), speed (m/s), yaw rate (rad/s) [n], all checked."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not set(CSV_COLUMNS) <= {c.strip() for c in reader.fieldnames}:
            raise DriveSimInputError(f"the header must have the columns {', '.join(CSV_COLUMNS)}", path=path,
                                     field="header", value=reader.fieldnames)
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            values = [_csv_number(row.get(col), path, f"line {line}.{col}") for col in CSV_COLUMNS]
            check_ego_value(values[1], values[2], path=path, field=f"line {line}")
            if rows and not values[0] > rows[-1][0]:
                raise DriveSimInputError("times must increase strictly", path=path, field=f"line {line}.time",
                                         value=values[0])
            rows.append(values)
    arr = np.array(rows, np.float64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def _csv_number(text: str | None, path: Path, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DriveSimInputError("must be a finite number", path=path, field=field, value=text)
    return value


def csv_motion(path: Path, video_times: np.ndarray) -> EgoSeries:
    """Ego motion at ``video_times`` (s from the start of the video) from a dashcam ego CSV."""
    t, speed, yaw = load_ego_csv(path)
    return resample_motion(t, speed, yaw, video_times, max_gap=CSV_MAX_GAP)
