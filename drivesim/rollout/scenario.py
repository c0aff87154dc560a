"""Scenarios: what a rollout must show, frame by frame.

A scenario gives per-frame boxes (classes, track ids) on its own timeline (``fps``), the ego
motion (speed and yaw rate over time, possibly unknown) plus day/night and crowdedness labels
for the whole drive. Sources:

- a JSON file with the versioned schema ``drivesim.scenario/1`` (docs/rollout.md), with an
  optional ``ego`` section (``{"times", "speed", "yaw_rate"}`` or ``{"waypoints"}``),
- ``synthetic:SEED[:EGO]``: the synthetic driving world stepped with ``render=False`` (lazy:
  boxes are produced only for the frames asked for, so memory does not grow with the
  duration); ``EGO`` (an ego preset or an ego-track JSON file) commands the world's ego and
  the traffic follows it; the ego motion is the world's exact one,
- ``clip:DIR``: the boxes and ego motion recorded in a clip folder,
- ``none[:EGO]``: no boxes (unconditional on boxes; labels and the ego track still apply).

The rollout asks for frames at *its* rate with :meth:`Scenario.frames_at` and
:meth:`Scenario.ego_at`; frame ``i`` at rate ``r`` takes the scenario frame shown at time
``i / r`` (sample-and-hold); an ego track is read at ``i / r`` itself (linear between knots).

Too-short scenarios: ``end="fail"`` (default) raises before anything is generated;
``end="hold"`` repeats the last scenario frame for the rest of the drive.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivesim.data import labels as L
from drivesim.data.boxes import pad_boxes
from drivesim.data.ego import EgoSeries, EgoTrack, load_track, parse_track
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE
from drivesim.utils.io import DriveSimInputError, read_json

SCHEMA = "drivesim.scenario/1"
END_POLICIES = ("fail", "hold")
# crowd knob of the synthetic world -> number of simulated vehicles
SYNTHETIC_VEHICLES = {"quiet": 1, "moderate": 4, "crowded": 9}


@dataclass
class ScenarioFrames:
    """Boxes of ``n`` frames padded to ``N``: boxes ``[n, N, 4]`` float32 (x1, y1, x2, y2 in
    [0, 1]), classes ``[n, N]`` int64 (0 = padding), track_ids ``[n, N]`` int64."""

    boxes: np.ndarray
    classes: np.ndarray
    track_ids: np.ndarray


def _pad(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_boxes: int) -> ScenarioFrames:
    """Stack frames padded to ``max_boxes`` (the largest boxes are kept, as in the datasets)."""
    padded = [pad_boxes(b, c, t, max_boxes, warn=False) for b, c, t in frames]
    if not padded:
        return ScenarioFrames(np.zeros((0, max_boxes, 4), np.float32),
                              np.zeros((0, max_boxes), np.int64), np.zeros((0, max_boxes), np.int64))
    return ScenarioFrames(np.stack([p.boxes for p in padded]), np.stack([p.classes for p in padded]),
                          np.stack([p.ids for p in padded]))


class Scenario(ABC):
    """Base class: subclasses provide ``_source(indices)`` for indices on their timeline."""

    def __init__(self, *, fps: float, daynight: int, crowd: int, max_boxes: int,
                 length: int | None, end: str = "fail", origin: str = "",
                 ego_track: EgoTrack | None = None) -> None:
        if end not in END_POLICIES:
            raise DriveSimInputError(f"expected one of {END_POLICIES}", path=origin or None,
                                     field="end", value=end)
        self.fps, self.daynight, self.crowd = float(fps), int(daynight), int(crowd)
        self.max_boxes, self.length, self.end, self.origin = int(max_boxes), length, end, origin
        self.ego_track = ego_track

    has_boxes = True

    @abstractmethod
    def _source(self, indices: list[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Unpadded (boxes [k,4], classes [k], ids [k]) for each source frame index."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the scenario (goes into the resume fingerprint)."""

    def source_index(self, i: int, rate: float) -> int:
        # + 1e-6 so that i / rate landing exactly on a source frame is not rounded down
        return int(math.floor(i / rate * self.fps + 1e-6))

    def check_duration(self, num_frames: int, rate: float) -> None:
        """Fail now (before generating anything) if the scenario is too short for the drive."""
        self._check_ego_duration(num_frames, rate)
        if self.length is None or self.end == "hold" or num_frames == 0:
            return
        need = self.source_index(num_frames - 1, rate) + 1
        if need > self.length:
            raise DriveSimInputError(
                f"scenario has {self.length} frames at {self.fps:g} fps "
                f"({self.length / self.fps:.2f} s) but the drive needs {need} "
                f"({num_frames / rate:.2f} s); shorten --seconds or use end='hold' "
                "(--scenario-end hold) to hold the last frame",
                path=self.origin or None, field="frames", value=self.length)

    def _source_indices(self, indices: list[int] | range, rate: float) -> list[int]:
        src = [self.source_index(i, rate) for i in indices]
        if self.length is not None:
            if self.end == "fail" and src and max(src) >= self.length:
                self.check_duration(max(indices) + 1, rate)
            src = [min(s, self.length - 1) for s in src]
        return src

    def frames_at(self, indices: list[int] | range, rate: float) -> ScenarioFrames:
        """Padded boxes for frames ``indices`` of a video at ``rate`` fps."""
        return _pad(self._source(self._source_indices(indices, rate)), self.max_boxes)

    def ego_at(self, indices: list[int] | range, rate: float) -> EgoSeries:
        """Ego motion of frames ``indices`` of a video at ``rate`` fps: ``speed`` (m/s) and
        ``yaw_rate`` (rad/s, left positive) float32 ``[n]`` and ``known`` bool ``[n]``."""
        idx = list(indices)
        if self.ego_track is None:
            return EgoSeries.unknown(len(idx))
        self.check_duration(max(idx, default=-1) + 1, rate)
        return self.ego_track.series(np.asarray(idx, np.float64) / rate)

    def _with_ego(self, identity: dict[str, Any]) -> dict[str, Any]:
        """``identity`` plus the ego track's, when there is one (identities without one are unchanged)."""
        return identity if self.ego_track is None else {**identity, "ego": self.ego_track.describe()}


    ego_track_ends = False  # True: an ego track shorter than the drive follows the end policy

    def _check_ego_duration(self, num_frames: int, rate: float) -> None:
        """Under ``end="fail"`` a scenario whose ego track ends (``ego_track_ends``) before the
        drive's last frame fails; otherwise a track holds its last values (or repeats)."""
        track = self.ego_track
        if track is None or track.cycle or not self.ego_track_ends or self.end == "hold" or num_frames == 0:
            return
        last = (num_frames - 1) / rate
        if last > track.duration + 1e-9:
            raise DriveSimInputError(
                f"the ego track ends at {track.duration:.2f} s but the drive lasts until {last:.2f} s; "
                "extend it or use end='hold' (--scenario-end hold) to hold its last values",
                path=self.origin or None, field="ego.times", value=track.duration)


class NoBoxScenario(Scenario):
    """No boxes: the rollout drops the box conditioning (labels and an ego track still apply)."""

    has_boxes = False

    def __init__(self, *, daynight: int, crowd: int = L.CROWD_UNKNOWN, ego_track: EgoTrack | None = None) -> None:
        super().__init__(fps=1.0, daynight=daynight, crowd=crowd, max_boxes=1, length=None,
                         origin="none", ego_track=ego_track)

    def _source(self, indices):
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return [empty for _ in indices]

    def describe(self):
        return self._with_ego({"kind": "none", "daynight": self.daynight, "crowd": self.crowd})


class JsonScenario(Scenario):
    """A ``drivesim.scenario/1`` file (validated on load; errors name file, field, value). Its
    ``ego`` track, when present, follows the file's end policy like its frames."""

    ego_track_ends = True

    def __init__(self, path: str | Path, *, daynight: int | None = None,
                 end: str | None = None, max_boxes: int | None = None) -> None:
        path = Path(path)
        doc = read_json(path)
        raw = path.read_bytes()
        self._frames, parsed = _parse_scenario_doc(doc, path)
        n_max = max((len(f[0]) for f in self._frames), default=0)
        crowd = parsed["crowd"]
        if crowd is None:
            vehicles = [int(np.isin(f[1], L.VEHICLE_CLASSES).sum()) for f in self._frames]
            crowd = L.crowd_bucket(float(np.mean(vehicles)))
        super().__init__(fps=parsed["fps"], daynight=parsed["daynight"] if daynight is None else daynight,
                         crowd=crowd, max_boxes=max_boxes or max(1, n_max),
                         length=len(self._frames), end=end or parsed["end"], origin=str(path),
                         ego_track=parsed["ego"])
        self._sha = hashlib.sha256(raw).hexdigest()

    def _source(self, indices):
        return [self._frames[i] for i in indices]

    def describe(self):
        return {"kind": "json", "sha256": self._sha, "daynight": self.daynight,
                "crowd": self.crowd, "end": self.end, "max_boxes": self.max_boxes}


def _field_error(path: Path, field: str, value: Any, message: str) -> DriveSimInputError:
    return DriveSimInputError(message, path=path, field=field, value=value)


def _parse_labels(doc: dict, path: Path) -> dict[str, Any]:
    fps = doc.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
        raise _field_error(path, "fps", fps, "must be a positive number")
    try:
        daynight = L.daynight_id(doc.get("daynight", "unknown"))
    except ValueError as err:
        raise _field_error(path, "daynight", doc.get("daynight"), str(err)) from err
    crowd = doc.get("crowd")
    if crowd is not None:
        if crowd not in L.CROWD_NAMES:
            raise _field_error(path, "crowd", crowd, f"expected one of {L.CROWD_NAMES}")
        crowd = L.CROWD_NAMES.index(crowd)
    end = doc.get("end", "fail")
    if end not in END_POLICIES:
        raise _field_error(path, "end", end, f"expected one of {END_POLICIES}")
    return {"fps": float(fps), "daynight": daynight, "crowd": crowd, "end": end}


def _parse_frame(frame: Any, i: int, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    where = f"frames[{i}]"
    if not isinstance(frame, dict):
        raise _field_error(path, where, frame, "each frame must be an object")
    boxes, classes, ids = (frame.get(k, []) for k in ("boxes", "classes", "track_ids"))
    for key, val in (("boxes", boxes), ("classes", classes), ("track_ids", ids)):
        if not isinstance(val, list):
            raise _field_error(path, f"{where}.{key}", val, "must be a list")
    if not len(boxes) == len(classes) == len(ids):
        raise _field_error(path, where, [len(boxes), len(classes), len(ids)],
                           "boxes, classes and track_ids must have the same length")
    for j, box in enumerate(boxes):
        ok = isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        if not ok:
            raise _field_error(path, f"{where}.boxes[{j}]", box, "must be 4 numbers x1, y1, x2, y2")
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
            raise _field_error(path, f"{where}.boxes[{j}]", box,
                               "coordinates must be finite and inside [0, 1]")
        if box[2] < box[0] or box[3] < box[1]:
            raise _field_error(path, f"{where}.boxes[{j}]", box, "needs x1 <= x2 and y1 <= y2")
    cls = []
    for j, c in enumerate(classes):
        try:
            cid = L.class_id(c)
        except ValueError as err:
            raise _field_error(path, f"{where}.classes[{j}]", c, str(err)) from err
        if cid == L.PAD_CLASS:
            raise _field_error(path, f"{where}.classes[{j}]", c, "class 0 is padding; omit the box")
        cls.append(cid)
    for j, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise _field_error(path, f"{where}.track_ids[{j}]", t, "track ids are integers >= 1")
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(cls, np.int64),
            np.asarray(ids, np.int64))


def _parse_scenario_doc(doc: Any, path: Path) -> tuple[list, dict[str, Any]]:
    if not isinstance(doc, dict):
        raise _field_error(path, "<root>", type(doc).__name__, "a scenario is a JSON object")
    if doc.get("schema") != SCHEMA:
        raise _field_error(path, "schema", doc.get("schema"), f"unknown scenario schema; expected '{SCHEMA}'")
    parsed = _parse_labels(doc, path)
    parsed["ego"] = parse_track(doc["ego"], path=path, field="ego") if "ego" in doc else None
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _field_error(path, "frames", frames if not isinstance(frames, list) else [],
                           "must be a non-empty list of per-frame objects")
    return [_parse_frame(f, i, path) for i, f in enumerate(frames)], parsed


class SyntheticScenario(Scenario):
    """Boxes from the synthetic world, stepped lazily (``render=False``) at ``fps``.

    Frames are produced in order and only the last ``cache`` frames are kept, so memory is
    constant; asking for an earlier frame (a resumed run) restarts the world from its seed
    and steps forward, which is deterministic. ``ego_track`` commands the world's ego (the
    traffic follows it); :meth:`ego_at` is the world's exact ego motion either way, which is
    the command wherever no slower leader holds the ego back.
    """

    def __init__(self, seed: int, *, fps: float, night: bool = False, crowd: str = "moderate",
                 max_boxes: int = 16, cache: int = 256, crowd_probe_s: float = 30.0,
                 traffic_range: float = DEFAULT_TRAFFIC_RANGE, ego_track: EgoTrack | None = None) -> None:
        if crowd not in SYNTHETIC_VEHICLES:
            raise DriveSimInputError(f"expected one of {tuple(SYNTHETIC_VEHICLES)}",
                                     path=f"synthetic:{seed}", field="crowd", value=crowd)
        self.seed, self.night, self.crowd_knob = int(seed), bool(night), crowd
        self.traffic_range = float(traffic_range)
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        self._cache_size, self._world, self._next = cache, None, 0
        super().__init__(fps=fps, daynight=L.NIGHT if night else L.DAY, crowd=L.CROWD_UNKNOWN,
                         max_boxes=max_boxes, length=None, origin=f"synthetic:{seed}", ego_track=ego_track)
        # crowd label = bucket of the mean visible vehicles over the first seconds of drive
        probe = self._source(list(range(max(1, int(round(crowd_probe_s * self.fps))))))
        self.crowd = L.crowd_bucket(float(np.mean([np.isin(c, L.VEHICLE_CLASSES).sum()
                                                   for _, c, _ in probe])))

    def _new_world(self):
        from drivesim.data.world import DrivingWorld, WorldConfig

        cfg = WorldConfig(seed=self.seed, fps=self.fps, night=self.night,
                          num_vehicles=SYNTHETIC_VEHICLES[self.crowd_knob], traffic_range=self.traffic_range,
                          ego_track=self.ego_track)
        return DrivingWorld(cfg)

    def _frame(self, index: int) -> tuple:
        """(boxes, classes, ids, (ego speed, ego yaw rate)) of world frame ``index``."""
        if index in self._cache:
            return self._cache[index]
        if self._world is None or index < self._next:
            self._world, self._next = self._new_world(), 0
        while self._next <= index:
            f = self._world.step(render=False)
            visible = np.asarray(f.visibility) > 0
            item = (np.asarray(f.boxes, np.float32)[visible].reshape(-1, 4),
                    np.asarray(f.classes, np.int64)[visible],
                    np.asarray(f.track_ids, np.int64)[visible], (f.ego_speed, f.ego_yaw_rate))
            self._cache[self._next] = item
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self._next += 1
        return self._cache[index]

    def _source(self, indices):
        return [self._frame(i)[:3] for i in indices]

    def ego_at(self, indices: list[int] | range, rate: float) -> EgoSeries:
        motion = [self._frame(i)[3] for i in self._source_indices(indices, rate)]
        return EgoSeries.of([m[0] for m in motion], [m[1] for m in motion])

    def describe(self):
        return self._with_ego({"kind": "synthetic", "seed": self.seed, "fps": self.fps, "night": self.night,
                               "crowd": self.crowd_knob, "max_boxes": self.max_boxes,
                               "traffic_range": self.traffic_range})


class ClipScenario(Scenario):
    """The boxes and ego motion recorded in a clip folder (clip format, ``drivesim.clip/1``)."""

    def __init__(self, clip_dir: str | Path, *, daynight: int | None = None, end: str = "fail",
                 max_boxes: int = 16) -> None:
        from drivesim.data.clip_format import read_clip

        self.clip_dir = Path(clip_dir)
        self._clip = read_clip(self.clip_dir)
        super().__init__(fps=self._clip.fps,
                         daynight=self._clip.daynight if daynight is None else daynight,
                         crowd=self._clip.crowd, max_boxes=max_boxes,
                         length=self._clip.num_frames, end=end, origin=str(self.clip_dir))
        self._sha = hashlib.sha256((self.clip_dir / "clip.json").read_bytes()).hexdigest()

    def _source(self, indices):
        boxes, classes, ids = self._clip.box_arrays(list(indices), max_boxes=self.max_boxes)
        out = []
        for b, c, t in zip(boxes, classes, ids):
            keep = np.asarray(c) != L.PAD_CLASS
            out.append((np.asarray(b, np.float32)[keep], np.asarray(c, np.int64)[keep],
                        np.asarray(t, np.int64)[keep]))
        return out

    def ego_at(self, indices: list[int] | range, rate: float) -> EgoSeries:
        return self._clip.ego_arrays(self._source_indices(indices, rate))

    def describe(self):
        return {"kind": "clip", "clip_json_sha256": self._sha, "daynight": self.daynight,
                "end": self.end, "max_boxes": self.max_boxes}


def load_scenario(spec: str, *, fps: float, daynight: str | None = None, crowd: str = "moderate",
                  end: str | None = None, max_boxes: int = 16, traffic_range: float = DEFAULT_TRAFFIC_RANGE,
                  ego: str | None = None) -> Scenario:
    """Parse ``--scenario``: ``synthetic:SEED[:EGO]`` | ``clip:DIR`` | ``none[:EGO]`` | a JSON path.

    ``fps`` is the rate the synthetic world is stepped at (the rollout's output fps);
    ``daynight`` overrides the scenario's own label when given. ``EGO`` (or ``ego``) is an ego
    preset (``drivesim.data.ego_presets.PRESETS``) or an ego-track JSON file.
    """
    dn = None if daynight is None else _daynight_arg(daynight)
    kind, _, rest = spec.partition(":")
    if kind == "none":
        track = _ego_arg(rest or None, ego, spec)
        return NoBoxScenario(daynight=L.DAY if dn is None else dn, ego_track=track)
    if kind == "synthetic":
        seed, _, ego_spec = rest.partition(":")
        if not seed.lstrip("-").isdigit():
            raise DriveSimInputError("expected synthetic:SEED[:EGO] with an integer seed",
                                     field="--scenario", value=spec)
        return SyntheticScenario(int(seed), fps=fps, night=dn == L.NIGHT, crowd=crowd, max_boxes=max_boxes,
                                 traffic_range=traffic_range, ego_track=_ego_arg(ego_spec or None, ego, spec))
    if ego is not None:
        raise DriveSimInputError("an ego track goes with synthetic:SEED or none scenarios; a JSON scenario "
                                 "has its own 'ego' section and a clip its recorded motion",
                                 field="--ego", value=ego)
    if kind == "clip":
        return ClipScenario(rest, daynight=dn, end=end or "fail", max_boxes=max_boxes)
    return JsonScenario(spec, daynight=dn, end=end)


def _ego_arg(in_spec: str | None, given: str | None, spec: str) -> EgoTrack | None:
    if in_spec is not None and given is not None:
        raise DriveSimInputError("the ego track is given twice (in the scenario and as an argument)",
                                 field="--ego", value=[spec, given])
    chosen = in_spec if in_spec is not None else given
    return None if chosen is None else load_track(chosen)


def _daynight_arg(value: str) -> int:
    try:
        return L.daynight_id(value)
    except ValueError as err:
        raise DriveSimInputError(str(err), field="--daynight", value=value) from err
