"""Ego motion: per-frame speed and yaw rate labels, and commanded ego tracks.

Conventions (docs/data-format.md): speed in m/s (>= 0, the speed of the ego's origin over
the ground), yaw rate in rad/s about the up axis, positive to the left (counter-clockwise
seen from above, ISO 8855). A frame's ego motion may be unknown.

- :class:`EgoSeries`: labels of n frames, ``speed`` / ``yaw_rate`` float32 ``[n]`` and
  ``known`` bool ``[n]`` (values are 0 where unknown), the batch keys ``ego_speed``,
  ``ego_yaw_rate`` and ``ego_known``.
- :class:`EgoTrack`: speed and yaw rate over time (linear between knots), held after the
  last knot or repeated (``cycle``); what a scenario commands and the world follows.
- :func:`track_from_waypoints` / :func:`motion_from_poses`: speed and yaw rate of a planar
  trajectory (positions over time, optionally headings).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivesim.utils.io import DriveSimInputError

MAX_SPEED = 70.0      # m/s (252 km/h): faster labels are rejected as implausible
MAX_YAW_RATE = 2.5    # rad/s: a car turning a 2 m radius at 5 m/s; beyond is not a car
MIN_HEADING_SPEED = 0.3  # m/s: below this a trajectory's heading is held (standing still)


@dataclass
class EgoSeries:
    """Ego motion of n frames: ``speed`` float32 [n] m/s, ``yaw_rate`` float32 [n] rad/s (left
    positive), ``known`` bool [n]; unknown frames hold 0 in both values."""

    speed: np.ndarray
    yaw_rate: np.ndarray
    known: np.ndarray

    @staticmethod
    def unknown(n: int) -> EgoSeries:
        return EgoSeries(np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, bool))

    @staticmethod
    def of(speed: Sequence[float] | np.ndarray, yaw_rate: Sequence[float] | np.ndarray,
           known: Sequence[bool] | np.ndarray | None = None) -> EgoSeries:
        """Typed copy; unknown entries are zeroed so that unknown never carries a value."""
        s = np.asarray(speed, np.float64).reshape(-1)
        y = np.asarray(yaw_rate, np.float64).reshape(-1)
        k = np.ones(len(s), bool) if known is None else np.asarray(known, bool).reshape(-1)
        if not len(s) == len(y) == len(k):
            raise ValueError(f"EgoSeries: lengths differ ({len(s)}, {len(y)}, {len(k)})")
        return EgoSeries(np.where(k, s, 0.0).astype(np.float32), np.where(k, y, 0.0).astype(np.float32), k.copy())

    def take(self, indices: Sequence[int] | np.ndarray) -> EgoSeries:
        idx = np.asarray(indices, np.int64).reshape(-1)
        return EgoSeries(self.speed[idx], self.yaw_rate[idx], self.known[idx])

    def __len__(self) -> int:
        return len(self.speed)


def check_ego_value(speed: object, yaw_rate: object, *, path: object, field: str) -> tuple[float, float]:
    """Validate one frame's ego motion (finite; 0 <= speed <= MAX_SPEED; |yaw rate| <= MAX_YAW_RATE)."""
    for name, value in (("speed", speed), ("yaw_rate", yaw_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(value)):
            raise DriveSimInputError("must be a finite number", path=path, field=f"{field}.{name}", value=value)
    if not 0.0 <= float(speed) <= MAX_SPEED:
        raise DriveSimInputError(f"speed must be in [0, {MAX_SPEED:g}] m/s", path=path, field=f"{field}.speed",
                                 value=speed)
    if abs(float(yaw_rate)) > MAX_YAW_RATE:
        raise DriveSimInputError(f"yaw rate must be within +-{MAX_YAW_RATE:g} rad/s", path=path,
                                 field=f"{field}.yaw_rate", value=yaw_rate)
    return float(speed), float(yaw_rate)


def parse_frame_ego(raw: object, *, path: object, field: str) -> tuple[float, float] | None:
    """A clip.json frame's ``ego``: ``{"speed": m/s, "yaw_rate": rad/s}``, or null / absent (unknown)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"speed", "yaw_rate"}:
        raise DriveSimInputError('expected {"speed": m/s, "yaw_rate": rad/s} or null', path=path, field=field,
                                 value=raw)
    return check_ego_value(raw["speed"], raw["yaw_rate"], path=path, field=field)


# ----------------------------------------------------------------------------- tracks
@dataclass(frozen=True)
class EgoTrack:
    """Commanded ego motion: knots ``times`` (s, strictly increasing, from >= 0), ``speed`` (m/s)
    and ``yaw_rate`` (rad/s, left positive), linear in between. Before the first knot the
    first values hold; after the last one the last values hold, or, with ``cycle``, the track
    starts over (its last knot should equal its first). ``name`` says where it came from."""

    times: tuple[float, ...]
    speed: tuple[float, ...]
    yaw_rate: tuple[float, ...]
    cycle: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        validate_track(self.times, self.speed, self.yaw_rate, path=self.name or "EgoTrack", field="ego")

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    def at(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(speed, yaw rate) float64 at times ``t`` (seconds; any shape)."""
        t = np.asarray(t, np.float64)
        if self.cycle and self.times[-1] > self.times[0]:
            t0, span = self.times[0], self.times[-1] - self.times[0]
            t = np.where(t > t0, t0 + np.mod(t - t0, span), t)
        return np.interp(t, self.times, self.speed), np.interp(t, self.times, self.yaw_rate)

    def series(self, times: np.ndarray) -> EgoSeries:
        speed, yaw = self.at(times)
        return EgoSeries.of(speed, yaw)

    def digest(self) -> str:
        """Stable identity (resume fingerprints, caches)."""
        text = json.dumps([self.times, self.speed, self.yaw_rate, self.cycle], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.digest(), "cycle": self.cycle, "duration": self.duration}


def validate_track(times: Sequence[float], speed: Sequence[float], yaw_rate: Sequence[float], *,
                   path: object, field: str) -> None:
    """Knots of an ego track: equal lengths >= 1, finite, times increasing from >= 0, plausible values."""
    for name, values in (("times", times), ("speed", speed), ("yaw_rate", yaw_rate)):
        if not isinstance(values, (list, tuple)) or not values:
            raise DriveSimInputError("must be a non-empty list of numbers", path=path, field=f"{field}.{name}",
                                     value=values)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DriveSimInputError("must be a finite number", path=path, field=f"{field}.{name}[{i}]", value=v)
    if not len(times) == len(speed) == len(yaw_rate):
        raise DriveSimInputError("times, speed and yaw_rate must have the same length", path=path, field=field,
                                 value=[len(times), len(speed), len(yaw_rate)])
    if times[0] < 0:
        raise DriveSimInputError("times start at >= 0 s", path=path, field=f"{field}.times[0]", value=times[0])
    for i in range(1, len(times)):
        if not times[i] > times[i - 1]:
            raise DriveSimInputError("times must increase strictly", path=path, field=f"{field}.times[{i}]",
                                     value=times[i])
    for i, (s, y) in enumerate(zip(speed, yaw_rate)):
        check_ego_value(s, y, path=path, field=f"{field}[{i}]")


def track_from_waypoints(times: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speed and yaw rate [n] of a planar trajectory: positions ``xy`` [n, 2] (metres, any
    right-handed ground frame, x and y as seen from above) at ``times`` [n] (s, increasing).

    Velocities are second-order finite differences (``np.gradient`` on the uneven time grid,
    exact for positions quadratic in time); the heading is the direction of motion, held
    while the speed is below ``MIN_HEADING_SPEED``, and the yaw rate its unwrapped derivative.
    A point driven at speed v on a circle of radius R gives v and v / R.
    """
    t = np.asarray(times, np.float64)
    p = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(t) < 2:
        return np.zeros(len(t)), np.zeros(len(t))
    order = 2 if len(t) >= 3 else 1
    vel = np.stack([np.gradient(p[:, k], t, edge_order=order) for k in (0, 1)], axis=1)   # [n, 2]
    speed = np.linalg.norm(vel, axis=1)
    return speed, _yaw_rate(t, np.arctan2(vel[:, 1], vel[:, 0]), speed, order)


def motion_from_poses(times: np.ndarray, xy: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speed and yaw rate [n] of poses over time: positions ``xy`` [n, 2] and headings ``yaw`` [n]
    (rad) at ``times`` [n]. Speed from the positions as in :func:`track_from_waypoints`; the
    yaw rate from the headings themselves (a vehicle turns its body, whatever it moves along)."""
    t = np.asarray(times, np.float64)
    p = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(t) < 2:
        return np.zeros(len(t)), np.zeros(len(t))
    order = 2 if len(t) >= 3 else 1
    vel = np.stack([np.gradient(p[:, k], t, edge_order=order) for k in (0, 1)], axis=1)
    return np.linalg.norm(vel, axis=1), np.gradient(np.unwrap(np.asarray(yaw, np.float64)), t, edge_order=order)


def _yaw_rate(t: np.ndarray, heading: np.ndarray, speed: np.ndarray, order: int) -> np.ndarray:
    moving = speed >= MIN_HEADING_SPEED
    if not moving.any():
        return np.zeros(len(t))
    held = heading.copy()
    first = int(np.argmax(moving))
    held[:first] = heading[first]
    for i in range(first + 1, len(t)):  # standing still: keep the last heading
        if not moving[i]:
            held[i] = held[i - 1]
    return np.gradient(np.unwrap(held), t, edge_order=order)


def parse_track(raw: object, *, path: object, field: str = "ego", cycle: bool = False) -> EgoTrack:
    """An ego track from JSON: ``{"times": [...], "speed": [...], "yaw_rate": [...]}`` or
    ``{"waypoints": [[t, x, y], ...]}`` (converted with :func:`track_from_waypoints`)."""
    if not isinstance(raw, dict):
        raise DriveSimInputError('expected {"times", "speed", "yaw_rate"} or {"waypoints"}', path=path,
                                 field=field, value=raw)
    keys = set(raw)
    if keys == {"waypoints"}:
        times, speed, yaw = _waypoint_knots(raw["waypoints"], path=path, field=f"{field}.waypoints")
    elif keys == {"times", "speed", "yaw_rate"}:
        times, speed, yaw = raw["times"], raw["speed"], raw["yaw_rate"]
    else:
        raise DriveSimInputError('expected exactly the keys "times", "speed", "yaw_rate", or "waypoints"',
                                 path=path, field=field, value=sorted(keys))
    validate_track(times, speed, yaw, path=path, field=field)
    return EgoTrack(tuple(float(v) for v in times), tuple(float(v) for v in speed),
                    tuple(float(v) for v in yaw), cycle=cycle, name=str(path))


def _waypoint_knots(points: object, *, path: object, field: str) -> tuple[list, list, list]:
    if not isinstance(points, list) or len(points) < 2:
        raise DriveSimInputError("needs at least two [t, x, y] waypoints", path=path, field=field, value=points)
    for i, pt in enumerate(points):
        ok = isinstance(pt, list) and len(pt) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pt)
        if not ok:
            raise DriveSimInputError("each waypoint is [t, x, y]: three finite numbers (s, m, m)", path=path,
                                     field=f"{field}[{i}]", value=pt)
        if i and not pt[0] > points[i - 1][0]:
            raise DriveSimInputError("waypoint times must increase strictly", path=path, field=f"{field}[{i}]",
                                     value=pt)
    arr = np.asarray(points, np.float64)
    speed, yaw = track_from_waypoints(arr[:, 0], arr[:, 1:])
    for i, (s, y) in enumerate(zip(speed, yaw)):  # name the waypoint whose motion is implausible
        check_ego_value(float(s), float(y), path=path, field=f"{field}[{i}] (derived)")
    return arr[:, 0].tolist(), speed.tolist(), yaw.tolist()


def load_track(spec: str) -> EgoTrack:
    """``--ego``-style argument: a preset name (``drivesim.data.ego_presets.PRESETS``) or a JSON
    file holding an ego track, bare or as the ``ego`` section of a scenario."""
    from drivesim.data.ego_presets import PRESETS, preset
    from drivesim.utils.io import read_json

    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise DriveSimInputError(f"not an ego preset {tuple(PRESETS)} nor a JSON file", path=spec, field="ego",
                                 value=spec)
    doc = read_json(path)
    raw = doc.get("ego") if isinstance(doc, dict) and "ego" in doc else doc
    return parse_track(raw, path=path, field="ego" if isinstance(doc, dict) and "ego" in doc else "<root>")


def resample_motion(t_src: np.ndarray, speed: np.ndarray, yaw_rate: np.ndarray, t_out: np.ndarray, *,
                    max_gap: float) -> EgoSeries:
    """Ego motion at times ``t_out`` [m] from samples at ``t_src`` [n] (seconds, increasing):
    linear between the two samples around each time, known where they are at most ``max_gap``
    seconds apart (a time on a sample is known); before the first or after the last sample
    (or with no samples) unknown."""
    ts = np.asarray(t_src, np.float64).reshape(-1)
    out = np.asarray(t_out, np.float64).reshape(-1)
    if len(ts) == 0:
        return EgoSeries.unknown(len(out))
    j = np.clip(np.searchsorted(ts, out, side="right") - 1, 0, len(ts) - 1)   # sample at or before
    k = np.minimum(j + 1, len(ts) - 1)
    on_sample = np.isclose(ts[j], out, rtol=0.0, atol=1e-6)
    inside = (out >= ts[0] - 1e-6) & (out <= ts[-1] + 1e-6)
    known = inside & (on_sample | ((ts[k] - ts[j]) <= max_gap))
    return EgoSeries.of(np.interp(out, ts, speed), np.interp(out, ts, yaw_rate), known)
