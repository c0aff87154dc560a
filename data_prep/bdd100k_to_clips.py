"""BDD100K multi-object-tracking labels + videos (or frame images) -> drivesim clips.

Input, as distributed by BDD100K (scalabel format):

- ``--labels``: folder of MOT label files, one JSON per video (``box_track_20/<split>/<video>.json``):
  a list of frames ``{"name", "videoName", "frameIndex", "labels": [{"id", "category",
  "box2d": {"x1", "y1", "x2", "y2"}}], "attributes"?: {"timeofday", "weather", "scene"}}``.
  The split is the label file's parent folder name when it is train/val/test.
- frames from ``--videos`` (``<video>.mov|mp4``, 30 fps) or ``--images``
  (``<images>/<video>/<frame name>``, the 5 fps frames the labels were made on).
- optional ``--image-labels``: the 100k image-label JSON(s) (``bdd100k_labels_images_*.json``
  / ``det_*.json``) whose entries named ``<video>.jpg`` give ``timeofday`` and ``weather`` when
  the MOT file has no frame attributes.
- optional ``--info``: the folder of info files (``info/<split>/<video>.json``, the GPS/IMU
  log of each video; searched recursively): where a video has one, its frames get the ego
  speed and yaw rate from the GPS fixes (``data_prep.ego_sources``), else they stay unknown.

Time: labelled frame ``frameIndex = k`` is at ``k / --label-hz`` seconds (5 Hz in BDD100K, i.e.
every 6th frame of the 30 fps video). Output frames are taken at ``--fps`` (default: the
video's rate, or 5 for images) inside the labelled span, and their boxes are either
interpolated linearly per track between the two bracketing labelled frames (``--box-mode
interpolate``, default; a track present in only one of them takes its box from the nearer
one, or is absent when that is the frame it is missing from) or copied from the nearest
labelled frame (``nearest``).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    iter_video_frames,
    map_category,
    parse_size,
    probe_video,
    resample_times,
    run_items,
    sample_at,
)
from data_prep.ego_sources import bdd_info_motion, frame_ego, index_files
from drivesim.utils.io import DriveSimInputError, read_json

# BDD100K MOT category -> drivesim class (None: dropped)
CATEGORY_MAP: tuple[tuple[str, str | None], ...] = (
    ("car", "car"), ("truck", "truck"), ("bus", "bus"),
    ("pedestrian", "pedestrian"), ("other person", "pedestrian"),
    ("rider", "cyclist"), ("bicycle", "cyclist"), ("motorcycle", "cyclist"),
    ("train", "other"), ("trailer", "other"), ("other vehicle", "other"),
    ("traffic light", None), ("traffic sign", None),
)
TIMEOFDAY = {"daytime": "day", "night": "night", "dawn/dusk": None, "undefined": "unknown"}
SPLITS = ("train", "val", "test")
VIDEO_EXTS = (".mov", ".mp4", ".avi", ".mkv")


@dataclass
class Track:
    """Labels of one video: per labelled frame, pixel boxes, classes and integer track ids."""

    video: str
    times: np.ndarray            # [F] seconds
    names: list[str]             # frame image names
    boxes: list[np.ndarray]      # [n_f, 4] pixels x1, y1, x2, y2
    classes: list[np.ndarray]    # [n_f]
    ids: list[np.ndarray]        # [n_f]
    attributes: dict


def _num(obj: dict, key: str, path: Path, where: str) -> float:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DriveSimInputError("missing or not a finite number", path=path, field=f"{where}.{key}", value=value)
    return float(value)


def _parse_label(label: object, path: Path, where: str) -> tuple[np.ndarray, int, str] | None:
    if not isinstance(label, dict):
        raise DriveSimInputError("label must be an object", path=path, field=where, value=label)
    for key in ("id", "category"):
        if key not in label:
            raise DriveSimInputError("required field is missing", path=path, field=f"{where}.{key}")
    cid = map_category(str(label["category"]), CATEGORY_MAP)
    if cid is None:
        return None
    box = label.get("box2d")
    if box is None:
        raise DriveSimInputError("required field is missing", path=path, field=f"{where}.box2d")
    xyxy = np.array([_num(box, k, path, f"{where}.box2d") for k in ("x1", "y1", "x2", "y2")])
    if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
        raise DriveSimInputError("x2 < x1 or y2 < y1", path=path, field=f"{where}.box2d", value=box)
    return xyxy, cid, str(label["id"])


def load_mot_labels(path: Path, label_hz: float = 5.0) -> Track:
    """Parse and validate one BDD100K MOT label file (errors name file, field and value)."""
    frames = read_json(path)
    if not isinstance(frames, list) or not frames:
        raise DriveSimInputError("expected a non-empty list of frames", path=path, field="<root>",
                                 value=type(frames).__name__)
    track_of: dict[str, int] = {}
    rows, attributes = [], {}
    for f, frame in enumerate(frames):
        where = f"[{f}]"
        if not isinstance(frame, dict):
            raise DriveSimInputError("frame must be an object", path=path, field=where, value=frame)
        index = frame.get("frameIndex")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DriveSimInputError("missing or not an integer >= 0", path=path, field=f"{where}.frameIndex",
                                     value=index)
        attributes = attributes or dict(frame.get("attributes") or {})
        parsed = [_parse_label(lab, path, f"{where}.labels[{j}]") for j, lab in enumerate(frame.get("labels") or [])]
        parsed = [p for p in parsed if p is not None]
        rows.append((index, str(frame.get("name", "")), np.array([p[0] for p in parsed]).reshape(-1, 4),
                     np.array([p[1] for p in parsed], np.int64),
                     np.array([track_of.setdefault(p[2], len(track_of) + 1) for p in parsed], np.int64)))
    rows.sort(key=lambda r: r[0])
    indices = [r[0] for r in rows]
    if len(set(indices)) != len(indices):
        raise DriveSimInputError("duplicate frameIndex", path=path, field="frameIndex",
                                 value=next(i for i in indices if indices.count(i) > 1))
    video = str(frames[0].get("videoName") or path.stem)
    return Track(video, np.array(indices, np.float64) / label_hz, [r[1] for r in rows], [r[2] for r in rows],
                 [r[3] for r in rows], [r[4] for r in rows], attributes)


def boxes_at(track: Track, t: float, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel boxes, classes and ids at time ``t`` (see the module docstring for the rule)."""
    j = int(np.clip(np.searchsorted(track.times, t, side="right") - 1, 0, len(track.times) - 1))
    k = min(j + 1, len(track.times) - 1)
    span = track.times[k] - track.times[j]
    a = float(np.clip((t - track.times[j]) / span, 0.0, 1.0)) if span > 0 else 0.0
    near = j if a < 0.5 else k
    boxes, classes, ids = track.boxes[near].copy(), track.classes[near], track.ids[near]
    if mode == "interpolate" and span > 0:
        other = {int(i): n for n, i in enumerate(track.ids[k if near == j else j])}
        far_boxes = track.boxes[k if near == j else j]
        w = a if near == j else 1.0 - a  # weight of the far frame
        for n, i in enumerate(ids.tolist()):
            if i in other:
                boxes[n] = (1.0 - w) * boxes[n] + w * far_boxes[other[i]]
    return boxes, classes, ids


def video_labels(track: Track, image_attrs: dict[str, dict], dawn_dusk: str) -> dict:
    attrs = {**image_attrs.get(track.video, {}), **track.attributes}
    tod = str(attrs.get("timeofday", "undefined"))
    daynight = TIMEOFDAY.get(tod, "unknown")
    return {"daynight": dawn_dusk if daynight is None else daynight, "timeofday": tod,
            "weather": str(attrs.get("weather", "undefined")), "source": "bdd100k", "video": track.video}


def read_image_attributes(paths: list[Path]) -> dict[str, dict]:
    """``video name -> attributes`` from 100k image-label files (image ``<video>.jpg``)."""
    table: dict[str, dict] = {}
    for path in paths:
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DriveSimInputError("expected a list of image entries", path=path, field="<root>")
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or "name" not in entry:
                raise DriveSimInputError("required field is missing", path=path, field=f"[{n}].name")
            table[Path(str(entry["name"])).stem] = dict(entry.get("attributes") or {})
    return table


@dataclass(frozen=True)
class Options:
    out: Path
    videos: Path | None
    images: Path | None
    fps: float | None
    size: tuple[int, int] | None
    clip_seconds: float
    box_mode: str
    label_hz: float
    frames_format: str
    val_fraction: float
    dawn_dusk: str
    overwrite: bool


_STATE: dict = {}


def _frame_source(opt: Options, track: Track):
    """(frame iterator factory, source fps, (H, W)) for the video or the labelled images."""
    if opt.videos is not None:
        found = [opt.videos / f"{track.video}{ext}" for ext in VIDEO_EXTS if (opt.videos / f"{track.video}{ext}").is_file()]
        if not found:
            raise DriveSimInputError(f"no video {track.video}{{{','.join(VIDEO_EXTS)}}}", path=opt.videos,
                                     field="videoName", value=track.video)
        info = probe_video(found[0])
        return (lambda: iter_video_frames(found[0])), info.fps, (info.height, info.width)
    paths = [opt.images / track.video / name for name in track.names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DriveSimInputError(f"{len(missing)} labelled frame images missing", path=missing[0],
                                 field="name", value=missing[0].name)

    def frames():
        for t, p in zip(track.times - track.times[0], paths):
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DriveSimInputError("unreadable or corrupt image", path=p, field="name")
            yield t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    first = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise DriveSimInputError("unreadable or corrupt image", path=paths[0], field="name")
    return frames, opt.label_hz, first.shape[:2]


def convert_video(label_path: Path) -> Outcome:
    from drivesim.data.clip_format import ClipWriter

    opt: Options = _STATE["options"]
    track = load_mot_labels(label_path, opt.label_hz)
    frames, src_fps, src_hw = _frame_source(opt, track)
    fps = opt.fps or src_fps
    split = label_path.parent.name if label_path.parent.name in SPLITS else hash_split(track.video, opt.val_fraction)
    labels = {**video_labels(track, _STATE["image_attrs"], opt.dawn_dusk), "split": split}
    t0, t1 = track.times[0], track.times[-1]
    starts = clip_windows(t1 - t0, opt.clip_seconds)
    if not starts:
        return Outcome(skipped={track.video: f"labelled span {t1 - t0:.1f} s < --clip-seconds {opt.clip_seconds}"})
    outcome = Outcome()
    resize = ResizeCrop.create(src_hw, opt.size)
    for k, start in enumerate(starts):
        clip_id = track.video if opt.clip_seconds <= 0 else f"{track.video}_{k:02d}"
        if clip_exists(opt.out / clip_id) and not opt.overwrite:
            outcome.resumed.append(clip_id)
            continue
        end = (t1 - t0) if opt.clip_seconds <= 0 else start + opt.clip_seconds - 0.5 / fps
        times = resample_times(start, end, fps)  # seconds since the first labelled frame
        info = _STATE.get("info", {}).get(track.video)
        motion = None if info is None else bdd_info_motion(info, t0 + times)  # video time = t0 + times
        h, w = resize.dst_hw
        with ClipWriter(opt.out / clip_id, fps=fps, height=h, width=w, labels=labels, clip_id=clip_id,
                        frames_format=opt.frames_format, overwrite=opt.overwrite) as writer:
            count = 0
            for j, rgb in sample_at(_shifted(frames(), t0 if opt.videos is not None else 0.0), times,
                                    tail=1.0 / src_fps):
                px, cls, ids = boxes_at(track, t0 + times[j], opt.box_mode)
                norm, keep = resize.boxes(px)
                writer.add_frame(resize.image(rgb), boxes=norm, classes=cls[keep], track_ids=ids[keep],
                                 **frame_ego(motion, j))
                count += 1
            if count != len(times):
                raise DriveSimInputError(f"frames end at output frame {count} of {len(times)}", path=label_path,
                                         field="frames", value=track.video)
        outcome.converted.append(clip_id)
    return outcome


def _shifted(frames, t0: float):
    """Video time -> time since the first labelled frame (frames before it are dropped)."""
    for t, rgb in frames:
        if t >= t0 - 1e-6:
            yield t - t0, rgb


def add_arguments(parser) -> None:
    parser.add_argument("--labels", required=True, help="MOT label JSON, or a folder of them (searched recursively)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of <videoName>.mov|mp4 (30 fps)")
    src.add_argument("--images", help="folder of <videoName>/<frame name> images (the labelled frames)")
    parser.add_argument("--image-labels", nargs="*", default=[], help="100k image-label JSONs for timeofday/weather")
    parser.add_argument("--info", default=None,
                        help="folder of BDD100K info files (<video>.json, GPS) for the ego speed and yaw rate")
    parser.add_argument("--clip-seconds", type=float, default=0.0, help="cut videos into clips (0: whole span)")
    parser.add_argument("--box-mode", default="interpolate", choices=("interpolate", "nearest"))
    parser.add_argument("--label-hz", type=float, default=5.0, help="rate of the labelled frames")
    parser.add_argument("--dawn-dusk", default="unknown", choices=("day", "night", "unknown"),
                        help="daynight label for timeofday 'dawn/dusk'")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="val share for files outside train/val folders")
    add_common_arguments(parser)


def run(args) -> int:
    label_root = Path(args.labels)
    files = [label_root] if label_root.is_file() else sorted(label_root.rglob("*.json")) if label_root.is_dir() else []
    if not files:
        raise DriveSimInputError("no label JSON files found", path=label_root, field="--labels")
    if args.fps is not None and args.fps <= 0:
        raise DriveSimInputError("must be > 0", field="--fps", value=args.fps)
    opt = Options(out=Path(args.out), videos=Path(args.videos) if args.videos else None,
                  images=Path(args.images) if args.images else None, fps=args.fps, size=parse_size(args.size),
                  clip_seconds=args.clip_seconds, box_mode=args.box_mode, label_hz=args.label_hz,
                  frames_format=args.frames_format, val_fraction=args.val_fraction, dawn_dusk=args.dawn_dusk,
                  overwrite=args.overwrite)
    _STATE.update(options=opt, image_attrs=read_image_attributes([Path(p) for p in args.image_labels]),
                  info=index_files(Path(args.info), ".json", "--info") if args.info else {})
    report = Report()
    try:
        for outcome in run_items(convert_video, files, workers=args.workers, progress=not args.no_progress,
                                 desc="BDD100K videos", keys=[str(f) for f in files]):
            report.add(outcome)
    finally:
        _STATE.clear()
    return finish(opt.out, report)

