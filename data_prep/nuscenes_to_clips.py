"""nuScenes -> drivesim clips, through the official devkit (extra ``nuscenes``).

Per scene, the chosen camera at its full 12 Hz rate (key frames *and* sweeps), from the
scene's first to its last key frame, resampled by timestamp to ``--fps`` and optionally cut
into ``--clip-seconds`` windows. Boxes:

- ``NuScenes.get_sample_data(sd, box_vis_level=NONE)`` returns every annotated box in the
  camera frame. For a sweep it goes through ``NuScenes.get_boxes``, which *interpolates*
  between the two bracketing key frames: centre linearly, rotation by quaternion slerp, at
  the sweep's timestamp; an instance not annotated in the previous key frame keeps its next
  key-frame box; one missing from the next key frame is not returned.
- each box is clipped against the near plane (z >= 0.1 m, the devkit's "in front" test), its
  corners projected with ``view_points``, and the 2D extent clipped to the image;
- boxes below ``--min-visibility`` (nuScenes visibility bins 1-4) or smaller than a pixel
  after resizing are dropped; the visibility written per box is the bin's midpoint.

Ego motion: the ego pose of every camera frame of the scene (12 Hz, ``ego_pose`` through the
devkit) gives each frame's speed (second-order central differences of the positions over
the timestamps) and yaw rate (of the pose's heading), stored per frame.

Labels: ``daynight`` = night when the scene description mentions "night"; ``weather`` =
rain when it mentions "rain" (else clear); ``crowd`` is computed by the ClipWriter from the
mean number of vehicle boxes per frame; ``split`` is the official split of the scene
(``create_splits_scenes``), or, for scenes outside every official split (the synthetic
fixture), a stable hash of the scene name (``--val-fraction``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

from data_prep.common import (
    Outcome,
    Report,
    ResizeCrop,
    add_common_arguments,
    clip_exists,
    clip_windows,
    finish,
    hash_split,
    map_category,
    nearest_indices,
    parse_size,
    resample_times,
    run_items,
)
from drivesim.utils.io import DriveSimInputError

# nuScenes category -> drivesim class (None: dropped). First match wins; '*' = prefix.
CATEGORY_MAP: tuple[tuple[str, str | None], ...] = (
    ("vehicle.car", "car"),
    ("vehicle.emergency.police", "car"),
    ("vehicle.truck", "truck"),
    ("vehicle.emergency.ambulance", "truck"),
    ("vehicle.bus.*", "bus"),
    ("human.pedestrian.*", "pedestrian"),
    ("vehicle.bicycle", "cyclist"),
    ("vehicle.motorcycle", "cyclist"),
    ("vehicle.construction", "other"),
    ("vehicle.trailer", "other"),
    ("animal", "other"),
    ("movable_object.*", None),   # barriers, cones, debris, pushables: scenery, not road users
    ("static_object.*", None),    # bicycle racks
)
NEAR = 0.1  # metres: the devkit's box_in_image treats z > 0.1 as in front of the camera
VISIBILITY_MID = {"1": 0.2, "2": 0.5, "3": 0.7, "4": 0.9, "": 1.0}
CAMERA_HZ = 12.0


@dataclass(frozen=True)
class Options:
    out: Path
    camera: str
    fps: float
    size: tuple[int, int] | None
    clip_seconds: float
    frames_format: str
    min_visibility: int
    val_fraction: float
    overwrite: bool


_STATE: dict = {}  # the loaded NuScenes object and options, inherited by forked workers


# ------------------------------------------------------------------------- geometry
def clip_to_near(corners: np.ndarray, near: float = NEAR) -> np.ndarray:
    """Camera-frame corners ``[3, 8]`` -> points ``[3, P]`` spanning the part with z >= near.

    The visible part of a box is the convex hull of its corners in front of the plane and
    the points where segments between corners cross it; segments between *any* two corners
    lie inside the box, so using all 28 pairs needs no edge ordering and adds no extreme
    point outside the clipped box.
    """
    z = corners[2]
    pts = [corners[:, z >= near]]
    for i, j in combinations(range(corners.shape[1]), 2):
        if (z[i] - near) * (z[j] - near) < 0:
            t = (near - z[i]) / (z[j] - z[i])
            pts.append((corners[:, i] + t * (corners[:, j] - corners[:, i]))[:, None])
    return np.concatenate(pts, axis=1)


def project_box(corners: np.ndarray, intrinsic: np.ndarray) -> np.ndarray | None:
    """Pixel ``[x1, y1, x2, y2]`` extent of a camera-frame box (unclipped), None if behind."""
    from nuscenes.utils.geometry_utils import view_points

    pts = clip_to_near(corners)
    if pts.shape[1] == 0:
        return None
    uv = view_points(pts, intrinsic, normalize=True)[:2]  # [2, P] pixels
    return np.array([uv[0].min(), uv[1].min(), uv[0].max(), uv[1].max()])


# ------------------------------------------------------------------------- scenes
def official_split(scene_name: str, version: str, val_fraction: float) -> str:
    """The official split of a scene for this version; hash fallback for unknown scenes."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    names = {"mini": ("mini_train", "mini_val")}.get(version.rsplit("-", 1)[-1], ("train", "val", "test"))
    for name in names:
        if scene_name in splits[name]:
            return name.replace("mini_", "")
    return hash_split(scene_name, val_fraction)


def scene_labels(scene: dict) -> dict:
    text = scene.get("description", "").lower()
    return {"daynight": "night" if re.search(r"\bnight\b", text) else "day",
            "weather": "rain" if re.search(r"\brain", text) else "clear"}


def camera_chain(nusc, scene: dict, camera: str) -> list[dict]:
    """sample_data records of ``camera`` from the first to the last key frame of the scene."""
    first = nusc.get("sample", scene["first_sample_token"])
    last = nusc.get("sample", scene["last_sample_token"])
    if camera not in first["data"]:
        raise DriveSimInputError(f"no {camera} data in the scene's first sample (channels: "
                                 f"{sorted(first['data'])})", path=scene["name"], field="--camera", value=camera)
    chain, tok = [], first["data"][camera]
    while tok:
        sd = nusc.get("sample_data", tok)
        if sd["timestamp"] > last["timestamp"]:
            break
        chain.append(sd)
        tok = sd["next"]
    return chain


def frame_annotations(nusc, sd: dict, resize: ResizeCrop, track_of: dict[str, int],
                      min_visibility: int) -> tuple[np.ndarray, ...]:
    """(boxes [n, 4] normalised, classes [n], track ids [n], visibility [n]) of one frame."""
    from nuscenes.utils.geometry_utils import BoxVisibility

    _, boxes, intrinsic = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.NONE)
    px, cls, ids, vis = [], [], [], []
    for box in boxes:
        cid = map_category(box.name, CATEGORY_MAP)
        ann = nusc.get("sample_annotation", box.token)
        level = ann.get("visibility_token", "")
        if cid is None or (level and int(level) < min_visibility):
            continue
        extent = project_box(box.corners(), np.asarray(intrinsic))
        if extent is None:
            continue
        px.append(extent)
        cls.append(cid)
        ids.append(track_of.setdefault(ann["instance_token"], len(track_of) + 1))
        vis.append(VISIBILITY_MID.get(level, 1.0))
    norm, keep = resize.boxes(np.array(px).reshape(-1, 4))
    return (norm, np.array(cls, np.int64)[keep], np.array(ids, np.int64)[keep],
            np.array(vis, np.float32)[keep])


def chain_motion(nusc, chain: list[dict], times: np.ndarray):
    """Ego speed and yaw rate (``drivesim.data.ego.EgoSeries``) at every sample_data of ``chain``
    from their ego poses (translation x, y; rotation quaternion [w, x, y, z] -> heading)."""
    from drivesim.data.ego import EgoSeries, motion_from_poses

    poses = [nusc.get("ego_pose", sd["ego_pose_token"]) for sd in chain]
    xy = np.array([p["translation"][:2] for p in poses], dtype=np.float64).reshape(-1, 2)
    w, x, y, z = np.array([p["rotation"] for p in poses], dtype=np.float64).reshape(-1, 4).T
    heading = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    speed, yaw_rate = motion_from_poses(times, xy, heading)
    return EgoSeries.of(speed, yaw_rate)


def _read_rgb(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DriveSimInputError("unreadable or corrupt image", path=path, field="sample_data.filename")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def convert_scene(scene_token: str) -> Outcome:
    """All clips of one scene (runs in a worker; state comes from ``_STATE``)."""
    from drivesim.data.clip_format import ClipWriter

    nusc, opt = _STATE["nusc"], _STATE["options"]
    scene = nusc.get("scene", scene_token)
    chain = camera_chain(nusc, scene, opt.camera)
    times = np.array([sd["timestamp"] for sd in chain], dtype=np.float64) * 1e-6
    times -= times[0]
    resize = ResizeCrop.create((chain[0]["height"], chain[0]["width"]), opt.size)
    motion = chain_motion(nusc, chain, times)
    labels = {**scene_labels(scene), "source": "nuscenes", "scene": scene["name"], "camera": opt.camera,
              "description": scene.get("description", ""),
              "split": official_split(scene["name"], nusc.version, opt.val_fraction)}
    starts = clip_windows(times[-1], opt.clip_seconds)
    outcome = Outcome()
    if not starts:
        outcome.skipped[scene["name"]] = f"scene lasts {times[-1]:.1f} s < --clip-seconds {opt.clip_seconds}"
    for k, start in enumerate(starts):
        clip_id = scene["name"] if opt.clip_seconds <= 0 else f"{scene['name']}_{k:02d}"
        clip_dir = opt.out / clip_id
        if clip_exists(clip_dir) and not opt.overwrite:
            outcome.resumed.append(clip_id)
            continue
        end = times[-1] if opt.clip_seconds <= 0 else start + opt.clip_seconds - 0.5 / opt.fps
        idx = nearest_indices(times, resample_times(start, end, opt.fps))
        h, w = resize.dst_hw
        track_of: dict[str, int] = {}  # instance token -> track id 1, 2, ... within this clip
        with ClipWriter(clip_dir, fps=opt.fps, height=h, width=w, labels=labels,
                        frames_format=opt.frames_format, clip_id=clip_id, overwrite=opt.overwrite) as writer:
            for i in idx.tolist():
                rgb = resize.image(_read_rgb(nusc.get_sample_data_path(chain[i]["token"])))
                boxes, classes, ids, vis = frame_annotations(nusc, chain[i], resize, track_of, opt.min_visibility)
                writer.add_frame(rgb, boxes=boxes, classes=classes, track_ids=ids, visibility=vis,
                                 ego_speed=float(motion.speed[i]), ego_yaw_rate=float(motion.yaw_rate[i]))
        outcome.converted.append(clip_id)
    return outcome


# ------------------------------------------------------------------------- tool
def add_arguments(parser) -> None:
    parser.add_argument("--dataroot", required=True, help="nuScenes root (holds samples/, sweeps/, <version>/)")
    parser.add_argument("--version", default="v1.0-trainval", help="v1.0-trainval | v1.0-mini | v1.0-test")
    parser.add_argument("--camera", default="CAM_FRONT", help="camera channel")
    parser.add_argument("--scenes", nargs="*", default=None, help="scene names to convert (default: all)")
    parser.add_argument("--clip-seconds", type=float, default=0.0,
                        help="cut scenes into clips of this length (0: one clip per scene)")
    parser.add_argument("--min-visibility", type=int, default=1, choices=(1, 2, 3, 4),
                        help="drop boxes in a lower nuScenes visibility bin (1: 0-40%% ... 4: 80-100%%)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="val share for scenes outside the official splits (hash of the name)")
    add_common_arguments(parser, default_fps=CAMERA_HZ)


def load_nuscenes(dataroot: str | Path, version: str):
    """The devkit's NuScenes, with a clear error for a wrong root or version."""
    try:
        from nuscenes.nuscenes import NuScenes
    except ImportError as err:
        raise SystemExit("nuScenes conversion needs the devkit: pip install -e '.[nuscenes]' && "
                         "pip install --no-deps nuscenes-devkit==1.2.0 (see docs/converters.md)") from err
    table_dir = Path(dataroot) / version
    if not table_dir.is_dir():
        raise DriveSimInputError("no table folder for this version under the dataroot", path=table_dir,
                                 field="--version", value=version)
    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def _select_scenes(nusc, names: list[str] | None) -> list[dict]:
    scenes = sorted(nusc.scene, key=lambda s: s["name"])
    if not names:
        return scenes
    known = {s["name"]: s for s in scenes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DriveSimInputError(f"unknown scene (the dataset has {len(known)} scenes, e.g. "
                                 f"{sorted(known)[:3]})", field="--scenes", value=unknown[0])
    return [known[n] for n in names]


def run(args) -> int:
    nusc = load_nuscenes(args.dataroot, args.version)
    opt = Options(out=Path(args.out), camera=args.camera, fps=float(args.fps), size=parse_size(args.size),
                  clip_seconds=args.clip_seconds, frames_format=args.frames_format,
                  min_visibility=args.min_visibility, val_fraction=args.val_fraction,
                  overwrite=args.overwrite)
    if not opt.fps > 0:
        raise DriveSimInputError("must be > 0", field="--fps", value=args.fps)
    scenes = _select_scenes(nusc, args.scenes)
    _STATE.update(nusc=nusc, options=opt)
    report = Report()
    try:
        for outcome in run_items(convert_scene, [s["token"] for s in scenes], workers=args.workers,
                                 progress=not args.no_progress, desc="nuScenes scenes",
                                 keys=[s["name"] for s in scenes]):
            report.add(outcome)
    finally:
        _STATE.clear()
    return finish(opt.out, report)
