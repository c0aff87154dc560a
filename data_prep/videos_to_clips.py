"""Plain dashcam videos (a folder of mp4 / mov / avi / mkv) -> drivesim clips without boxes.

Each video is decoded once, streaming, and cut into non-overlapping clips of
``--clip-seconds`` at ``--fps`` and ``--size``:

- frames are picked by presentation timestamp (nearest source frame to each output time),
  so variable-frame-rate phone/dashcam files come out at a true constant rate;
- the container's display rotation is applied before resizing;
- any resolution is resized to cover ``--size`` and centre-cropped (no stretching);
- a video shorter than one clip is skipped with the reason; an unreadable or corrupt one is
  skipped and reported (and makes the exit code 1), the others still convert.

Labels come from an optional CSV (``--labels``) with a ``filename`` column (the path relative
to ``--input``, or the bare file name) and any of ``daynight`` (day/night/unknown),
``weather``, ``split`` (train/val/test) plus free-form columns kept as labels. Without a
split, a stable hash of the file name picks val for ``--val-fraction`` of the videos.

Ego motion comes from an optional folder of CSV time series (``--ego DIR``): for the video
``a/b.mp4`` under ``--input``, ``DIR/a/b.csv`` with the columns ``time`` (s from the start of
the video), ``speed`` (m/s) and ``yaw_rate`` (rad/s, left positive), interpolated to each
frame (``data_prep.ego_sources``); videos without one, and frames outside its time span,
have unknown ego motion.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

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
    parse_size,
    probe_video,
    run_items,
    sample_at,
)
from data_prep.ego_sources import csv_motion, frame_ego
from drivesim.data.ego import EgoSeries
from drivesim.data.labels import DAYNIGHT_NAMES
from drivesim.utils.io import DriveSimInputError

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".m4v")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Options:
    out: Path
    fps: float | None
    size: tuple[int, int] | None
    clip_seconds: float
    stride_seconds: float
    max_clips: int
    frames_format: str
    val_fraction: float
    overwrite: bool


@dataclass(frozen=True)
class Job:
    path: Path
    stem: str          # clip id prefix, unique per video
    labels: dict
    ego_csv: Path | None = None  # per-video ego motion time series (--ego)


def find_videos(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DriveSimInputError("input folder not found", path=root, field="--input")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS
                  and not p.name.startswith("."))


def read_label_csv(path: Path) -> dict[str, dict]:
    """``filename -> labels`` from a CSV; bad rows raise naming the file, line and column."""
    if not path.is_file():
        raise DriveSimInputError("labels CSV not found", path=path, field="--labels")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "filename" not in reader.fieldnames:
            raise DriveSimInputError("the header must have a 'filename' column", path=path, field="header",
                                     value=reader.fieldnames)
        table = {}
        for line, row in enumerate(reader, start=2):
            labels = {k.strip(): (v or "").strip() for k, v in row.items() if k and k != "filename" and v}
            if labels.get("daynight", "unknown") not in DAYNIGHT_NAMES:
                raise DriveSimInputError(f"expected one of {DAYNIGHT_NAMES}", path=path,
                                         field=f"line {line}.daynight", value=labels["daynight"])
            if labels.get("split", "train") not in SPLITS:
                raise DriveSimInputError(f"expected one of {SPLITS}", path=path, field=f"line {line}.split",
                                         value=labels["split"])
            table[row["filename"].strip()] = labels
    return table


def clip_stem(rel: Path) -> str:
    """A folder-safe clip id prefix from the video's relative path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.with_suffix("").as_posix())


def _ego_csv(ego_dir: Path | None, rel: Path) -> Path | None:
    """The video's ego CSV under ``--ego`` (same relative path, suffix ``.csv``), if there is one."""
    path = None if ego_dir is None else ego_dir / rel.with_suffix(".csv")
    return path if path is not None and path.is_file() else None


def _labels_for(rel: Path, table: dict[str, dict], val_fraction: float) -> dict:
    row = table.get(rel.as_posix(), table.get(rel.name, {}))
    labels = {"daynight": "unknown", "crowd": "unknown", **row, "source": "dashcam", "video": rel.as_posix()}
    labels.setdefault("split", hash_split(rel.as_posix(), val_fraction))
    return labels


_STATE: dict = {}


def convert_video(job: Job) -> Outcome:
    """All clips of one video, decoded in one streaming pass."""
    opt: Options = _STATE["options"]
    info = probe_video(job.path)
    fps = opt.fps or info.fps
    if not fps or fps <= 0:
        raise DriveSimInputError("no frame rate in the container; pass --fps", path=job.path, field="fps")
    starts = clip_windows(info.duration, opt.clip_seconds, opt.stride_seconds)[: opt.max_clips or None]
    if not starts:
        return Outcome(skipped={job.stem: f"too short: {info.duration:.2f} s < --clip-seconds {opt.clip_seconds}"})
    n = max(1, round(opt.clip_seconds * fps))  # frames per clip
    ids = [f"{job.stem}_{k:03d}" for k in range(len(starts))]
    todo = [k for k, cid in enumerate(ids) if opt.overwrite or not clip_exists(opt.out / cid)]
    outcome = Outcome(resumed=[ids[k] for k in range(len(starts)) if k not in todo])
    if not todo:
        return outcome
    times = np.concatenate([starts[k] + np.arange(n) / fps for k in todo])  # increasing: strides >= length
    resize = ResizeCrop.create((info.height, info.width), opt.size)
    frames = sample_at(iter_video_frames(job.path), times, tail=1.0 / max(info.fps, 1.0))
    motion = None if job.ego_csv is None else csv_motion(job.ego_csv, times)
    written = _write_clips(frames, todo, ids, n, resize, fps, job.labels, opt, motion)
    outcome.converted += [ids[k] for k in written]
    short = [ids[k] for k in todo if k not in written]
    if short:
        outcome.skipped[short[0]] = f"video ended before the clip was complete (container said {info.duration:.2f} s)"
    return outcome


def _write_clips(frames, todo: list[int], ids: list[str], n: int, resize: ResizeCrop, fps: float,
                 labels: dict, opt: Options, motion: EgoSeries | None = None) -> list[int]:
    """Route the streamed frames into one ClipWriter per clip; returns the clips completed."""
    from drivesim.data.clip_format import ClipWriter

    done, writer, current = [], None, -1
    h, w = resize.dst_hw
    try:
        for j, rgb in frames:
            slot = todo[j // n]
            if slot != current:
                writer = ClipWriter(opt.out / ids[slot], fps=fps, height=h, width=w, labels=labels,
                                    frames_format=opt.frames_format, overwrite=opt.overwrite).__enter__()
                current = slot
            writer.add_frame(resize.image(rgb), **frame_ego(motion, j))
            if j % n == n - 1:
                writer.__exit__(None, None, None)
                writer = None
                done.append(slot)
    except BaseException as err:
        if writer is not None:
            writer.__exit__(type(err), err, err.__traceback__)
        raise
    if writer is not None:  # the stream ended inside this clip: discard it
        err = EOFError("video ended early")
        writer.__exit__(EOFError, err, None)
    return done


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="folder searched recursively for videos")
    parser.add_argument("--labels", default=None, help="optional CSV: filename,daynight,weather,split,...")
    parser.add_argument("--ego", default=None,
                        help="optional folder of per-video ego CSVs (<video path without suffix>.csv: "
                             "time,speed,yaw_rate)")
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--stride-seconds", type=float, default=None,
                        help="start-to-start distance of clips (>= --clip-seconds; default: back to back)")
    parser.add_argument("--max-clips-per-video", type=int, default=0, help="0: as many as fit")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="val share when the CSV gives no split")
    add_common_arguments(parser)


def run(args) -> int:
    stride = args.stride_seconds or args.clip_seconds
    if args.clip_seconds <= 0 or stride < args.clip_seconds:
        raise DriveSimInputError("need --clip-seconds > 0 and --stride-seconds >= --clip-seconds",
                                 field="--stride-seconds", value=[args.clip_seconds, args.stride_seconds])
    if args.fps is not None and args.fps <= 0:
        raise DriveSimInputError("must be > 0", field="--fps", value=args.fps)
    opt = Options(out=Path(args.out), fps=args.fps, size=parse_size(args.size), clip_seconds=args.clip_seconds,
                  stride_seconds=stride, max_clips=args.max_clips_per_video, frames_format=args.frames_format,
                  val_fraction=args.val_fraction, overwrite=args.overwrite)
    root = Path(args.input)
    table = read_label_csv(Path(args.labels)) if args.labels else {}
    videos = find_videos(root)
    if not videos:
        raise DriveSimInputError(f"no videos ({', '.join(VIDEO_EXTS)}) found", path=root, field="--input")
    ego_dir = Path(args.ego) if args.ego else None
    if ego_dir is not None and not ego_dir.is_dir():
        raise DriveSimInputError("ego CSV folder not found", path=ego_dir, field="--ego")
    jobs = [Job(p, clip_stem(p.relative_to(root)), _labels_for(p.relative_to(root), table, opt.val_fraction),
                _ego_csv(ego_dir, p.relative_to(root))) for p in videos]
    _STATE["options"] = opt
    report = Report()
    try:
        for outcome in run_items(convert_video, jobs, workers=args.workers, progress=not args.no_progress,
                                 desc="videos", keys=[str(j.path) for j in jobs]):
            report.add(outcome)
    finally:
        _STATE.clear()
    return finish(opt.out, report)
