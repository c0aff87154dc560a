"""The on-disk clip format ``drivesim.clip/1`` and the dataset manifest (docs/data-format.md).

A clip is a folder::

    clip_dir/
      clip.json        schema, fps, size, frame count, labels, per-frame annotations
      frames.mp4       H.264 frames  -- or --  frames/000000.png (or .jpg), ...

A dataset is a folder of clips plus ``manifest.jsonl`` (one JSON object per clip). Every
reader validates and raises ``DriveSimInputError`` naming the file, the field and the value.
A frame's annotation may carry the ego motion, ``"ego": {"speed": m/s, "yaw_rate": rad/s}``;
absent or null means unknown (clips written before it existed read as unknown throughout).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from drivesim.data import boxes as box_utils
from drivesim.data.ego import EgoSeries, check_ego_value, parse_frame_ego
from drivesim.data.labels import (
    CROWD_NAMES,
    CROWD_UNKNOWN,
    DAYNIGHT_NAMES,
    VEHICLE_CLASSES,
    crowd_bucket,
    daynight_id,
)
from drivesim.data.video_io import atomic_directory, open_frame_writer, open_frames
from drivesim.utils.io import DriveSimInputError, atomic_write_text, read_json

SCHEMA = "drivesim.clip/1"
CLIP_JSON = "clip.json"
MANIFEST = "manifest.jsonl"
FRAME_FORMATS = ("mp4", "png", "jpg")
SPLITS = ("train", "val", "test")


def crowd_id(value: str | int | None) -> int:
    """Map a crowd bucket name (``quiet``...) or id to its id; ``None`` -> unknown."""
    if value is None:
        return CROWD_UNKNOWN
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CROWD_NAMES):
        return value
    if isinstance(value, str) and value in CROWD_NAMES:
        return CROWD_NAMES.index(value)
    raise ValueError(f"crowd: expected one of {CROWD_NAMES} or 0..{len(CROWD_NAMES) - 1}, got {value!r}")


def mean_visible_vehicles(classes: Sequence[np.ndarray], visibility: Sequence[np.ndarray] | None = None) -> float:
    """Mean over frames of the number of vehicle boxes (classes 1-3) with visibility > 0."""
    counts = []
    for i, cls in enumerate(classes):
        vis = np.ones(len(cls)) if visibility is None else np.asarray(visibility[i])
        counts.append(int((np.isin(cls, VEHICLE_CLASSES) & (vis > 0)).sum()))
    return float(np.mean(counts)) if counts else 0.0


# ----------------------------------------------------------------------------- clip.json

@dataclass
class Clip:
    """A validated clip. Per-frame annotation lists have one array per frame."""

    path: Path
    clip_id: str
    fps: float
    height: int
    width: int
    num_frames: int
    frames_format: str
    frames_path: Path
    labels: dict
    boxes: list[np.ndarray] = field(repr=False)       # [n_i, 4] normalised, clipped
    classes: list[np.ndarray] = field(repr=False)     # [n_i] int64 in 1..6
    track_ids: list[np.ndarray] = field(repr=False)   # [n_i] int64 >= 0
    visibility: list[np.ndarray] = field(repr=False)  # [n_i] float32 in [0, 1]
    ego: EgoSeries = field(default=None, repr=False)   # per frame; known False where absent
    _reader: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ego is None:
            self.ego = EgoSeries.unknown(self.num_frames)

    @property
    def daynight(self) -> int:
        return daynight_id(self.labels.get("daynight"))

    @property
    def crowd(self) -> int:
        return crowd_id(self.labels.get("crowd"))

    def frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``[n, H, W, 3]`` RGB for the given frame indices (reader kept open)."""
        if self._reader is None:
            self._reader = open_frames(self.frames_path, size=(self.height, self.width),
                                       num_frames=self.num_frames)
        return self._reader.read(indices)

    def box_arrays(self, indices: Sequence[int] | np.ndarray, max_boxes: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded ``boxes [n, N, 4]`` float32, ``classes [n, N]`` and ``ids [n, N]`` int64."""
        padded = [box_utils.pad_boxes(self.boxes[i], self.classes[i], self.track_ids[i], max_boxes)
                  for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist()]
        if not padded:
            return (np.zeros((0, max_boxes, 4), np.float32), np.zeros((0, max_boxes), np.int64),
                    np.zeros((0, max_boxes), np.int64))
        return (np.stack([p.boxes for p in padded]), np.stack([p.classes for p in padded]),
                np.stack([p.ids for p in padded]))

    def ego_arrays(self, indices: Sequence[int] | np.ndarray) -> EgoSeries:
        """Ego motion of the given frames (speed, yaw rate, known; 0 where unknown)."""
        return self.ego.take(indices)

    @property
    def has_ego(self) -> bool:
        return bool(self.ego.known.any())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __getstate__(self) -> dict:  # open decoders do not pickle into DataLoader workers
        state = dict(self.__dict__)
        state["_reader"] = None
        return state


def _require(meta: dict, key: str, kind: type | tuple, path: Path, check=None, what: str = "") -> object:
    if key not in meta:
        raise DriveSimInputError("required field is missing", path=path, field=key)
    value = meta[key]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or (check is not None and not check(value)):
        raise DriveSimInputError(f"invalid value, expected {what or kind}", path=path, field=key, value=value)
    return value


def _parse_labels(raw: object, path: Path) -> dict:
    if not isinstance(raw, dict):
        raise DriveSimInputError("labels must be an object", path=path, field="labels", value=raw)
    labels = dict(raw)
    for key, parse, names in (("daynight", daynight_id, DAYNIGHT_NAMES), ("crowd", crowd_id, CROWD_NAMES)):
        try:
            labels[key] = names[parse(labels.get(key))]
        except ValueError as err:
            raise DriveSimInputError(str(err), path=path, field=f"labels.{key}", value=labels.get(key)) from err
    return labels


def _parse_frame(ann: object, i: int, path: Path) -> tuple:
    where = f"annotations[{i}]"
    if not isinstance(ann, dict):
        raise DriveSimInputError("annotation must be an object", path=path, field=where, value=ann)
    boxes = box_utils.validate_boxes(ann.get("boxes", []), path=path, field=f"{where}.boxes")
    n = len(boxes)
    classes = box_utils.validate_classes(ann.get("classes", []), n, path=path, field=f"{where}.classes")
    ids = np.asarray(ann.get("track_ids", [0] * n))
    if ids.shape != (n,) or (n and (not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any())):
        raise DriveSimInputError(f"expected {n} integer track ids >= 0", path=path,
                                 field=f"{where}.track_ids", value=ann.get("track_ids"))
    vis = np.asarray(ann.get("visibility", [1.0] * n), dtype=np.float64)
    if vis.shape != (n,) or not np.isfinite(vis).all() or (vis < 0).any() or (vis > 1).any():
        raise DriveSimInputError(f"expected {n} visibilities in [0, 1]", path=path,
                                 field=f"{where}.visibility", value=ann.get("visibility"))
    ego = parse_frame_ego(ann.get("ego"), path=path, field=f"{where}.ego")
    return boxes, classes, ids.astype(np.int64), vis.astype(np.float32), ego


def _frames_location(meta: dict, clip_dir: Path, path: Path) -> tuple[str, Path]:
    frames = meta.get("frames")
    if not isinstance(frames, dict):
        raise DriveSimInputError("frames must be an object {format, path}", path=path, field="frames", value=frames)
    fmt, rel = frames.get("format"), frames.get("path")
    if fmt not in FRAME_FORMATS:
        raise DriveSimInputError(f"expected one of {FRAME_FORMATS}", path=path, field="frames.format", value=fmt)
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DriveSimInputError("expected a relative path inside the clip folder", path=path,
                                 field="frames.path", value=rel)
    return fmt, clip_dir / rel


def _check_frames(clip: Clip, path: Path) -> None:
    """Frame count and size of the stored frames must match clip.json."""
    reader = open_frames(clip.frames_path, num_frames=clip.num_frames if clip.frames_format != "mp4" else None)
    with reader:
        n, h, w = reader.num_frames, reader.height, reader.width
        if clip.frames_format != "mp4":
            extra = clip.frames_path / f"{clip.num_frames:06d}.{reader.ext}"
            if extra.exists():
                n = len([p for p in os.listdir(clip.frames_path) if not p.startswith(".")])
    if n != clip.num_frames:
        raise DriveSimInputError(f"clip.json says {clip.num_frames} frames but {clip.frames_path.name} has {n}",
                                 path=path, field="num_frames", value=clip.num_frames)
    if clip.frames_format == "mp4":  # H.264 pads odd sizes by one pixel
        ok = h - h % 2 <= clip.height <= h and w - w % 2 <= clip.width <= w
    else:
        ok = (h, w) == (clip.height, clip.width)
    if not ok:
        raise DriveSimInputError(f"frames are {h}x{w} but clip.json says {clip.height}x{clip.width}",
                                 path=path, field="height/width", value=[clip.height, clip.width])


def read_clip(clip_dir: str | os.PathLike, *, check_frames: bool = True) -> Clip:
    """Load and validate ``clip_dir/clip.json`` (and, by default, the frame count and size)."""
    clip_dir = Path(clip_dir)
    path = clip_dir / CLIP_JSON
    if not clip_dir.is_dir():
        raise DriveSimInputError("clip folder not found", path=clip_dir, field="path")
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise DriveSimInputError("clip.json must hold a JSON object", path=path, field="<root>", value=meta)
    schema = _require(meta, "schema", str, path, what="'drivesim.clip/<version>'")
    if schema != SCHEMA:
        raise DriveSimInputError(f"unsupported schema (this reader knows {SCHEMA})", path=path,
                                 field="schema", value=schema)
    clip_id = _require(meta, "clip_id", str, path, lambda v: bool(v), "a non-empty string")
    fps = float(_require(meta, "fps", (int, float), path, lambda v: 0 < v < 1e4, "a number > 0"))
    height = _require(meta, "height", int, path, lambda v: v > 0, "an integer > 0")
    width = _require(meta, "width", int, path, lambda v: v > 0, "an integer > 0")
    num_frames = _require(meta, "num_frames", int, path, lambda v: v > 0, "an integer > 0")
    fmt, frames_path = _frames_location(meta, clip_dir, path)
    labels = _parse_labels(meta.get("labels", {}), path)
    anns = _require(meta, "annotations", list, path, what="a list with one object per frame")
    if len(anns) != num_frames:
        raise DriveSimInputError(f"expected {num_frames} per-frame annotations (num_frames)", path=path,
                                 field="annotations", value=f"{len(anns)} entries")
    parsed = [_parse_frame(a, i, path) for i, a in enumerate(anns)]
    ego = [p[4] for p in parsed]
    series = EgoSeries.of([e[0] if e else 0.0 for e in ego], [e[1] if e else 0.0 for e in ego],
                          [e is not None for e in ego])
    clip = Clip(clip_dir, clip_id, fps, height, width, num_frames, fmt, frames_path, labels,
                *(list(col) for col in zip(*(p[:4] for p in parsed))), ego=series)
    if check_frames:
        _check_frames(clip, path)
    return clip


class ClipWriter:
    """Streaming, atomic writer of one clip folder (see module docstring).

    ``labels`` may hold ``daynight`` and ``crowd`` (names or ids) plus free-form keys
    (``weather``, ``seed``, ``source``...). When ``crowd`` is absent it is computed from the
    annotations (mean visible vehicles per frame, ``labels.crowd_bucket``).
    """

    def __init__(self, clip_dir: str | os.PathLike, *, fps: float, height: int, width: int,
                 labels: dict | None = None, frames_format: str = "mp4", clip_id: str | None = None,
                 overwrite: bool = False) -> None:
        self.clip_dir = Path(clip_dir)
        if frames_format not in FRAME_FORMATS:
            raise ValueError(f"frames_format must be one of {FRAME_FORMATS}, got {frames_format!r}")
        if not (fps > 0 and height > 0 and width > 0):
            raise ValueError(f"fps, height, width must be > 0, got {fps}, {height}, {width}")
        self.fps, self.height, self.width, self.frames_format = float(fps), int(height), int(width), frames_format
        self.clip_id = clip_id or self.clip_dir.name
        self.labels = _parse_labels({"daynight": None, **(labels or {})}, self.clip_dir / CLIP_JSON)
        self._auto_crowd = "crowd" not in (labels or {})
        self.overwrite = overwrite
        self._annotations: list[dict] = []
        self._classes: list[np.ndarray] = []
        self._visibility: list[np.ndarray] = []

    def __enter__(self) -> ClipWriter:
        self._dir_ctx = atomic_directory(self.clip_dir, overwrite=self.overwrite)
        self._tmp = self._dir_ctx.__enter__()
        self._frames_rel = "frames.mp4" if self.frames_format == "mp4" else "frames"
        self._writer = open_frame_writer(self._tmp / self._frames_rel, self.fps, self.frames_format)
        return self

    def add_frame(self, rgb: np.ndarray, boxes: np.ndarray | None = None, classes: np.ndarray | None = None,
                  track_ids: np.ndarray | None = None, visibility: np.ndarray | None = None,
                  ego_speed: float | None = None, ego_yaw_rate: float | None = None) -> None:
        """Append one uint8 ``[H, W, 3]`` frame, its normalised ``[n, 4]`` boxes and, optionally,
        the ego motion (``ego_speed`` m/s and ``ego_yaw_rate`` rad/s together, or neither)."""
        rgb = np.asarray(rgb)
        if rgb.shape != (self.height, self.width, 3):
            raise DriveSimInputError(f"frame must be [{self.height}, {self.width}, 3]", path=self.clip_dir,
                                     field=f"frame {len(self._annotations)}", value=list(rgb.shape))
        where = f"annotations[{len(self._annotations)}]"
        b = box_utils.validate_boxes(np.zeros((0, 4)) if boxes is None else boxes, path=self.clip_dir,
                                     field=f"{where}.boxes")
        n = len(b)
        c = box_utils.validate_classes(np.ones(n, np.int64) if classes is None else classes, n,
                                       path=self.clip_dir, field=f"{where}.classes")
        ids = np.zeros(n, np.int64) if track_ids is None else np.asarray(track_ids, np.int64).reshape(n)
        vis = np.ones(n, np.float32) if visibility is None else np.asarray(visibility, np.float32).reshape(n)
        ego = self._ego_entry(ego_speed, ego_yaw_rate, f"{where}.ego")
        self._writer.write(rgb)
        row = {"boxes": np.round(b.astype(np.float64), 6).tolist(), "classes": c.tolist(),
               "track_ids": ids.tolist(), "visibility": np.round(vis.astype(np.float64), 4).tolist()}
        if ego is not None:
            row["ego"] = ego
        self._annotations.append(row)
        self._classes.append(c)
        self._visibility.append(vis)

    def _ego_entry(self, speed: float | None, yaw_rate: float | None, where: str) -> dict | None:
        if speed is None and yaw_rate is None:
            return None
        if speed is None or yaw_rate is None:
            raise DriveSimInputError("give both the ego speed and yaw rate, or neither", path=self.clip_dir,
                                     field=where, value=[speed, yaw_rate])
        s, y = check_ego_value(speed, yaw_rate, path=self.clip_dir, field=where)
        return {"speed": round(s, 4), "yaw_rate": round(y, 5)}

    def _metadata(self) -> dict:
        labels = dict(self.labels)
        if self._auto_crowd:
            mean = mean_visible_vehicles(self._classes, self._visibility)
            labels["crowd"], labels["mean_vehicles"] = CROWD_NAMES[crowd_bucket(mean)], round(mean, 3)
        return {"schema": SCHEMA, "clip_id": self.clip_id, "fps": self.fps, "height": self.height,
                "width": self.width, "num_frames": len(self._annotations),
                "frames": {"format": self.frames_format, "path": self._frames_rel},
                "labels": labels, "annotations": self._annotations}

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._writer.abort()
            self._dir_ctx.__exit__(exc_type, exc, tb)
            return
        try:
            if not self._annotations:
                raise DriveSimInputError("a clip needs at least one frame", path=self.clip_dir,
                                         field="num_frames", value=0)
            self._writer.close()
            meta = self._metadata()
            text = json.dumps({k: v for k, v in meta.items() if k != "annotations"}, indent=2)[:-2]
            rows = ",\n    ".join(json.dumps(a) for a in meta["annotations"])  # one line per frame
            atomic_write_text(self._tmp / CLIP_JSON, f"{text},\n  \"annotations\": [\n    {rows}\n  ]\n}}\n")
        except BaseException as err:
            self._dir_ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._dir_ctx.__exit__(None, None, None)


# ------------------------------------------------------------------------ manifest.jsonl

@dataclass(frozen=True)
class ManifestEntry:
    """One line of ``manifest.jsonl``; ``path`` is relative to the dataset root."""

    clip_id: str
    path: str
    split: str
    num_frames: int
    fps: float
    daynight: int
    crowd: int


def manifest_entry(clip: Clip, root: str | os.PathLike, split: str) -> ManifestEntry:
    rel = os.path.relpath(clip.path, root)
    return ManifestEntry(clip.clip_id, Path(rel).as_posix(), split, clip.num_frames, clip.fps,
                         clip.daynight, clip.crowd)


def assign_split(index: int, count: int, val_fraction: float) -> str:
    """Deterministic split: the last ``round(count * val_fraction)`` clips are ``val``."""
    n_val = round(count * val_fraction)
    if val_fraction > 0 and count > 1:
        n_val = max(n_val, 1)
    return "val" if index >= count - n_val else "train"


def write_manifest(root: str | os.PathLike, entries: Iterable[ManifestEntry], *, overwrite: bool = False) -> Path:
    """Write ``root/manifest.jsonl`` atomically (one JSON object per line)."""
    path = Path(root) / MANIFEST
    lines = [json.dumps(asdict(e)) for e in entries]
    ids = [json.loads(line)["clip_id"] for line in lines]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DriveSimInputError("duplicate clip id", path=path, field="clip_id", value=dup)
    atomic_write_text(path, "".join(line + "\n" for line in lines), overwrite=overwrite)
    return path


def _parse_entry(obj: object, path: Path, line: int) -> ManifestEntry:
    where = f"line {line}"
    if not isinstance(obj, dict):
        raise DriveSimInputError("manifest line must be a JSON object", path=path, field=where, value=obj)
    try:
        entry = ManifestEntry(str(obj["clip_id"]), str(obj["path"]), str(obj["split"]), int(obj["num_frames"]),
                              float(obj["fps"]), daynight_id(obj.get("daynight")), crowd_id(obj.get("crowd")))
    except KeyError as err:
        raise DriveSimInputError("required field is missing", path=path, field=f"{where}.{err.args[0]}") from err
    except (TypeError, ValueError) as err:
        raise DriveSimInputError(f"invalid field: {err}", path=path, field=where, value=obj) from err
    if Path(entry.path).is_absolute() or ".." in Path(entry.path).parts:
        raise DriveSimInputError("path must be relative to the dataset root", path=path,
                                 field=f"{where}.path", value=entry.path)
    return entry


def read_manifest(root: str | os.PathLike) -> list[ManifestEntry]:
    """Read and validate ``root/manifest.jsonl`` (an empty or missing dataset is an error)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DriveSimInputError("dataset folder not found", path=root, field="root")
    if not path.is_file():
        has_clips = any((p / CLIP_JSON).is_file() for p in root.iterdir() if p.is_dir())
        hint = ("it has clip folders but no manifest: run `drivesim data check --write-manifest`"
                if has_clips else "the folder is empty (no manifest.jsonl and no clips)")
        raise DriveSimInputError(hint, path=path, field=MANIFEST)
    entries, seen = [], set()
    for line_no, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DriveSimInputError(f"malformed JSON: {err.msg}", path=path, field=f"line {line_no}",
                                     value=text[:80]) from err
        entry = _parse_entry(obj, path, line_no)
        if entry.clip_id in seen:
            raise DriveSimInputError("duplicate clip id", path=path, field=f"line {line_no}.clip_id",
                                     value=entry.clip_id)
        seen.add(entry.clip_id)
        entries.append(entry)
    if not entries:
        raise DriveSimInputError("manifest lists no clips", path=path, field=MANIFEST)
    return entries


def scan_clips(root: str | os.PathLike) -> list[Path]:
    """Clip folders (sub-folders holding ``clip.json``) directly under ``root``, sorted."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and (p / CLIP_JSON).is_file()
                  and not p.name.startswith("."))


__all__ = ["CLIP_JSON", "MANIFEST", "SCHEMA", "Clip", "ClipWriter", "ManifestEntry", "assign_split",
           "crowd_id", "manifest_entry", "mean_visible_vehicles", "read_clip",
           "read_manifest", "scan_clips", "write_manifest"]
