"""Export drives of the synthetic world as a small dataset in nuScenes format (a test fixture).

Nothing can be downloaded here, so the nuScenes converter is tested on this: a dataroot
with the 13 nuScenes tables under ``<dataroot>/<version>/``, CAM_FRONT JPEGs under
``samples/CAM_FRONT`` (2 Hz key frames) and ``sweeps/CAM_FRONT`` (the 12 Hz frames in
between), and a tiny map PNG under ``maps/``; the official devkit's ``NuScenes`` loads it.

Conventions (nuScenes schema, https://www.nuscenes.org/nuscenes#data-format):
- global and ego frames: x forward, y left, z up -- the same as the world's (ISO 8855), so
  positions copy over unchanged; ``ego_pose`` is world_from_ego.
- ``calibrated_sensor`` holds the camera pose *in the ego frame* (ego_from_camera), the
  inverse of the world's ``cam_from_ego``; the camera frame is OpenCV (z forward) in both.
- quaternions are ``[w, x, y, z]``; a box's ``size`` is ``[width, length, height]``
  (the world stores l, w, h) and its rotation is the yaw about z.
- timestamps are integer microseconds; a sweep's ``sample_token`` is the *next* key frame's
  sample, which is what ``NuScenes.get_boxes`` assumes when it interpolates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from drivesim.data.ego import EgoTrack
from drivesim.data.video_io import atomic_directory
from drivesim.utils.io import DriveSimInputError

CAMERA = "CAM_FRONT"
CAMERA_HZ = 12.0          # nuScenes cameras run at 12 Hz ...
KEYFRAME_EVERY = 6        # ... and every 6th frame is an annotated 2 Hz key frame
BASE_TIMESTAMP = 1_532_402_927_612_460  # microseconds; any epoch works for the devkit
VISIBILITY_LEVELS = (("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.01))
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider",
              "cycle.without_rider", "pedestrian.sitting_lying_down", "pedestrian.standing",
              "pedestrian.moving")
# world class name -> nuScenes category written to the fixture (inverse of the converter map)
CATEGORY_FOR_CLASS = {"car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid",
                      "pedestrian": "human.pedestrian.adult", "cyclist": "vehicle.bicycle",
                      "other": "vehicle.construction"}


@dataclass(frozen=True)
class FixtureScene:
    """One exported drive: a world seed, its look and, optionally, the ego's commanded motion
    (an ego preset name or an ``EgoTrack``; the ego poses of the tables follow it)."""

    seed: int
    night: bool = False
    weather: str = "clear"
    num_vehicles: int = 6
    ego: str | EgoTrack | None = None


def token(*parts: object) -> str:
    """Deterministic 32-hex-digit token (nuScenes tokens are 32 hex digits)."""
    return hashlib.md5("/".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def quaternion_wxyz(rot: np.ndarray) -> list[float]:
    """Rotation matrix [3, 3] -> unit quaternion [w, x, y, z] with w >= 0 (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q) / np.linalg.norm(q)
    return (q if q[0] >= 0 else -q).tolist()


def yaw_quaternion(yaw: float) -> list[float]:
    """Rotation by ``yaw`` about z as [w, x, y, z]."""
    return [math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)]


def visibility_token(fraction: float) -> str:
    """nuScenes visibility bins (fraction of the object visible in the camera images)."""
    return next(tok for tok, _, upper in VISIBILITY_LEVELS if fraction < upper)


def scene_description(scene: FixtureScene) -> str:
    """Free text like real nuScenes descriptions; the converter reads 'night' and 'rain' from it."""
    parts = ["Synthetic drive", "night" if scene.night else "day"]
    if scene.weather != "clear":
        parts.append(scene.weather)
    return ", ".join(parts) + f", {scene.num_vehicles} vehicles"


class _Tables:
    """The 13 nuScenes tables as lists of records."""

    NAMES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
             "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, [])
        self.category = [{"token": token("category", c), "name": c, "description": f"synthetic {c}"}
                         for c in CATEGORY_FOR_CLASS.values()]
        self.attribute = [{"token": token("attribute", a), "name": a, "description": a} for a in ATTRIBUTES]
        self.visibility = [{"token": tok, "level": level, "description": f"visibility of whole object is {level}"}
                           for tok, level, _ in VISIBILITY_LEVELS]
        self.sensor = [{"token": token("sensor", CAMERA), "channel": CAMERA, "modality": "camera"}]

    def write(self, table_dir: Path) -> None:
        table_dir.mkdir(parents=True, exist_ok=True)
        for name in self.NAMES:
            (table_dir / f"{name}.json").write_text(json.dumps(getattr(self, name), indent=0))


def _world(scene: FixtureScene, height: int, width: int):
    from drivesim.data.ego_presets import preset
    from drivesim.data.world import DrivingWorld, WorldConfig

    track = preset(scene.ego) if isinstance(scene.ego, str) else scene.ego
    return DrivingWorld(WorldConfig(seed=scene.seed, height=height, width=width, fps=CAMERA_HZ,
                                    night=scene.night, num_vehicles=scene.num_vehicles,
                                    weather=scene.weather, ego_track=track))


def _calibrated_sensor(tables: _Tables, scene_key: str, frame) -> str:
    ego_from_cam = np.linalg.inv(np.asarray(frame.cam_from_ego, dtype=np.float64))
    rec = {"token": token("calibrated_sensor", scene_key), "sensor_token": tables.sensor[0]["token"],
           "translation": ego_from_cam[:3, 3].tolist(), "rotation": quaternion_wxyz(ego_from_cam[:3, :3]),
           "camera_intrinsic": np.asarray(frame.intrinsics, dtype=np.float64).tolist()}
    tables.calibrated_sensor.append(rec)
    return rec["token"]


def _ego_pose(tables: _Tables, key: str, frame, timestamp: int) -> str:
    pose = np.asarray(frame.ego_pose, dtype=np.float64)
    rec = {"token": token("ego_pose", key), "timestamp": timestamp, "translation": pose[:3, 3].tolist(),
           "rotation": quaternion_wxyz(pose[:3, :3])}
    tables.ego_pose.append(rec)
    return rec["token"]


def _annotate(tables: _Tables, scene_key: str, sample_tok: str, frame, last_ann: dict[int, dict]) -> None:
    """One sample_annotation per labelled box of a key frame, linked per instance (prev/next)."""
    from drivesim.data.labels import CLASS_NAMES

    cat_tokens = {c["name"]: c["token"] for c in tables.category}
    for box3d, cls, tid, vis in zip(frame.boxes3d, frame.classes, frame.track_ids, frame.visibility):
        x, y, z, length, width, height, yaw = (float(v) for v in box3d)
        inst_tok = token("instance", scene_key, int(tid))
        rec = {"token": token("sample_annotation", sample_tok, int(tid)), "sample_token": sample_tok,
               "instance_token": inst_tok, "visibility_token": visibility_token(float(vis)),
               "attribute_tokens": [], "translation": [x, y, z], "size": [width, length, height],
               "rotation": yaw_quaternion(yaw), "prev": "", "next": "", "num_lidar_pts": 1,
               "num_radar_pts": 0}
        prev = last_ann.get(int(tid))
        if prev is None:
            tables.instance.append({"token": inst_tok, "nbr_annotations": 0,
                                    "category_token": cat_tokens[CATEGORY_FOR_CLASS[CLASS_NAMES[int(cls)]]],
                                    "first_annotation_token": rec["token"], "last_annotation_token": ""})
        else:
            prev["next"], rec["prev"] = rec["token"], prev["token"]
        last_ann[int(tid)] = rec
        tables.sample_annotation.append(rec)


def _export_scene(root: Path, tables: _Tables, index: int, scene: FixtureScene, num_keyframes: int,
                  height: int, width: int, log_tok: str) -> None:
    scene_key = f"scene{index}-seed{scene.seed}"
    scene_tok = token("scene", scene_key)
    world = _world(scene, height, width)
    num_frames = (num_keyframes - 1) * KEYFRAME_EVERY + 1  # first and last frame are key frames
    t0 = BASE_TIMESTAMP + index * 10**9
    samples = [{"token": token("sample", scene_key, k), "scene_token": scene_tok, "prev": "", "next": "",
                "timestamp": 0} for k in range(num_keyframes)]
    for a, b in zip(samples, samples[1:]):
        a["next"], b["prev"] = b["token"], a["token"]
    last_ann: dict[int, dict] = {}
    cs_tok, prev_sd = None, None
    for i in range(num_frames):
        frame = world.step()
        cs_tok = cs_tok or _calibrated_sensor(tables, scene_key, frame)
        timestamp = t0 + round(i * 1e6 / CAMERA_HZ)
        key = i % KEYFRAME_EVERY == 0
        sample = samples[-(-i // KEYFRAME_EVERY)]  # key frame at or after frame i (nuScenes)
        folder = "samples" if key else "sweeps"
        rel = f"{folder}/{CAMERA}/synth-{index:04d}__{CAMERA}__{timestamp}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(root / rel), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"{root / rel}: could not write JPEG")
        sd = {"token": token("sample_data", scene_key, i), "sample_token": sample["token"],
              "ego_pose_token": _ego_pose(tables, f"{scene_key}/{i}", frame, timestamp),
              "calibrated_sensor_token": cs_tok, "timestamp": timestamp, "fileformat": "jpg",
              "is_key_frame": key, "height": height, "width": width, "filename": rel,
              "prev": prev_sd["token"] if prev_sd else "", "next": ""}
        if prev_sd:
            prev_sd["next"] = sd["token"]
        tables.sample_data.append(sd)
        prev_sd = sd
        if key:
            sample["timestamp"] = timestamp
            _annotate(tables, scene_key, sample["token"], frame, last_ann)
    tables.sample += samples
    tables.scene.append({"token": scene_tok, "log_token": log_tok, "nbr_samples": num_keyframes,
                         "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"],
                         "name": f"synth-{index:04d}", "description": scene_description(scene)})


def _finish_instances(tables: _Tables) -> None:
    by_instance: dict[str, list[dict]] = {}
    for ann in tables.sample_annotation:
        by_instance.setdefault(ann["instance_token"], []).append(ann)
    for inst in tables.instance:
        anns = by_instance[inst["token"]]
        inst["nbr_annotations"] = len(anns)
        inst["last_annotation_token"] = anns[-1]["token"]


def export_fixture(dataroot: str | Path, scenes: Sequence[FixtureScene], *, seconds: float = 2.0,
                   height: int = 90, width: int = 160, version: str = "v1.0-mini",
                   overwrite: bool = False) -> Path:
    """Write ``scenes`` as a nuScenes dataroot; returns its path.

    Each scene lasts ``seconds`` rounded to whole key-frame intervals (0.5 s), at least two
    key frames. The folder appears atomically; an existing one needs ``overwrite=True``.
    """
    if not scenes:
        raise DriveSimInputError("at least one scene is needed", field="scenes", value=list(scenes))
    if seconds < 0.5:
        raise DriveSimInputError("scenes must last >= 0.5 s (two key frames)", field="seconds", value=seconds)
    num_keyframes = int(round(seconds * CAMERA_HZ / KEYFRAME_EVERY)) + 1
    with atomic_directory(dataroot, overwrite=overwrite) as tmp:
        tables = _Tables()
        map_tok = token("map", "synthetic")
        (tmp / "maps").mkdir()
        # a tiny all-drivable semantic prior; the devkit only needs the file to exist
        cv2.imwrite(str(tmp / "maps" / f"{map_tok}.png"), np.full((32, 32), 255, np.uint8))
        for i, scene in enumerate(scenes):
            log_tok = token("log", i, scene.seed)
            tables.log.append({"token": log_tok, "logfile": f"synth-log-{i:04d}", "vehicle": "synthetic-ego",
                               "date_captured": "2026-01-01", "location": "synthetic-world"})
            _export_scene(tmp, tables, i, scene, num_keyframes, height, width, log_tok)
        tables.map.append({"token": map_tok, "log_tokens": [log["token"] for log in tables.log],
                           "category": "semantic_prior", "filename": f"maps/{map_tok}.png"})
        _finish_instances(tables)
        tables.write(tmp / version)
    return Path(dataroot)


def default_scenes(count: int, seed: int) -> list[FixtureScene]:
    """A mix that exercises the labels: every 3rd scene at night, every 4th in rain, every 2nd
    with an ego that stands for 2 s and then accelerates (ego preset ``accelerate``)."""
    return [FixtureScene(seed=seed + i, night=i % 3 == 2, weather="rain" if i % 4 == 3 else "clear",
                         num_vehicles=(2, 6, 10)[i % 3], ego="accelerate" if i % 2 else None)
            for i in range(count)]


# ------------------------------------------------------------------------------------ tool
def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="dataroot to create (nuScenes layout)")
    parser.add_argument("--scenes", type=int, default=4, help="number of drives")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each drive")
    parser.add_argument("--size", default="180x320", help="image HxW")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first drive")
    parser.add_argument("--version", default="v1.0-mini", help="table folder name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataroot")


def run(args) -> int:
    from data_prep.common import parse_size

    height, width = parse_size(args.size)
    if args.scenes < 1:
        raise DriveSimInputError("must be >= 1", field="--scenes", value=args.scenes)
    root = export_fixture(args.out, default_scenes(args.scenes, args.seed), seconds=args.seconds,
                          height=height, width=width, version=args.version, overwrite=args.overwrite)
    print(f"wrote a nuScenes-format dataroot with {args.scenes} scenes to {root} (version {args.version})")
    return 0
