"""Helpers shared by the real-data converters (nuScenes, BDD100K, dashcam videos).

Every converter turns a source item (a scene, a video) into one or more clips written with
``drivesim.data.clip_format.ClipWriter`` and then rewrites the dataset's ``manifest.jsonl``.
What is common lives here: frame size parsing, the resize-then-centre-crop transform that
keeps boxes consistent with pixels, timestamp-based resampling (variable frame rates), the
split fallback, resumability, the worker pool and the run report.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivesim.data.labels import CLASS_IDS, VEHICLE_CLASSES, crowd_bucket
from drivesim.utils.io import DriveSimInputError, atomic_write_json

REPORT_NAME = "conversion_report.json"


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` -> ``(H, W)``; ``None``/empty keeps the source size."""
    if text is None or text == "":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match.group(1)) < 8 or int(match.group(2)) < 8:
        raise DriveSimInputError("expected HxW with both sides >= 8, e.g. 128x256",
                                 field="--size", value=text)
    return int(match.group(1)), int(match.group(2))


def add_common_arguments(parser, *, default_fps: float | None = None) -> None:
    """Options every converter has: output, fps, size, workers, progress, overwrite."""
    parser.add_argument("--out", required=True, help="output dataset folder (clips + manifest.jsonl)")
    parser.add_argument("--fps", type=float, default=default_fps,
                        help="output frame rate (default: the source's own rate)")
    parser.add_argument("--size", default=None,
                        help="output HxW; the source is resized to cover it, then centre-cropped")
    parser.add_argument("--frames-format", default="mp4", choices=("mp4", "png", "jpg"),
                        help="how frames are stored in each clip")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-convert and replace clips that already exist (default: skip them)")


# --------------------------------------------------------------------------- resize + crop
@dataclass(frozen=True)
class ResizeCrop:
    """Resize so the source covers ``dst`` (aspect kept), then centre-crop to ``dst``.

    Odd source resolutions (1280x720 dashcams, 1600x900 nuScenes, portrait phones) all end
    at the requested size without stretching; boxes go through the same scale and offset.
    """

    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]

    @classmethod
    def create(cls, src_hw: tuple[int, int], dst_hw: tuple[int, int] | None) -> ResizeCrop:
        return cls(tuple(src_hw), tuple(dst_hw) if dst_hw is not None else tuple(src_hw))

    @property
    def scale(self) -> float:
        (sh, sw), (dh, dw) = self.src_hw, self.dst_hw
        return max(dh / sh, dw / sw)

    @property
    def offset(self) -> tuple[float, float]:
        """(x0, y0) of the crop window in the resized image, in pixels."""
        (sh, sw), (dh, dw) = self.src_hw, self.dst_hw
        rh, rw = round(sh * self.scale), round(sw * self.scale)
        return (rw - dw) // 2, (rh - dh) // 2

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``[sh, sw, 3]`` -> uint8 ``[dh, dw, 3]``."""
        if rgb.shape[:2] != self.src_hw:
            raise ValueError(f"frame is {rgb.shape[:2]}, expected {self.src_hw} (size changed mid-video)")
        if self.src_hw == self.dst_hw:
            return np.ascontiguousarray(rgb)
        (sh, sw), (dh, dw) = self.src_hw, self.dst_hw
        rh, rw = round(sh * self.scale), round(sw * self.scale)
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(rgb, (rw, rh), interpolation=interp)
        x0, y0 = self.offset
        return np.ascontiguousarray(resized[y0:y0 + dh, x0:x0 + dw])

    def boxes(self, xyxy_px: np.ndarray, min_size_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Source-pixel ``[N, 4]`` x1,y1,x2,y2 -> (normalised clipped ``[M, 4]``, kept mask ``[N]``).

        A box is kept when at least ``min_size_px`` of it in both directions survives the
        crop (measured in output pixels).
        """
        xyxy = np.asarray(xyxy_px, dtype=np.float64).reshape(-1, 4)
        (dh, dw), s = self.dst_hw, self.scale
        x0, y0 = self.offset
        out = xyxy * s - np.array([x0, y0, x0, y0], dtype=np.float64)
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, dw)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, dh)
        keep = ((out[:, 2] - out[:, 0]) >= min_size_px) & ((out[:, 3] - out[:, 1]) >= min_size_px)
        norm = out[keep] / np.array([dw, dh, dw, dh], dtype=np.float64)
        return norm.astype(np.float32), keep


# --------------------------------------------------------------------------- resampling
def resample_times(start: float, end: float, fps: float) -> np.ndarray:
    """Output frame times ``start, start + 1/fps, ...`` that are <= ``end`` (seconds)."""
    if fps <= 0:
        raise DriveSimInputError("must be > 0", field="--fps", value=fps)
    count = int(np.floor((end - start) * fps + 1e-6)) + 1
    return start + np.arange(max(count, 0), dtype=np.float64) / fps


def nearest_indices(src_times: np.ndarray, dst_times: np.ndarray) -> np.ndarray:
    """Index of the source frame nearest in time to each output time.

    Source timestamps may be irregular (variable frame rate, dropped frames): choosing by
    timestamp rather than by index keeps the output at a true constant rate.
    """
    src = np.asarray(src_times, dtype=np.float64)
    if src.ndim != 1 or len(src) == 0 or np.any(np.diff(src) < 0):
        raise ValueError("source timestamps must be a non-empty increasing sequence")
    right = np.searchsorted(src, dst_times).clip(1, len(src) - 1) if len(src) > 1 else np.zeros(
        len(dst_times), dtype=np.int64)
    if len(src) == 1:
        return right
    left = right - 1
    choose_left = np.abs(dst_times - src[left]) <= np.abs(src[right] - dst_times)
    return np.where(choose_left, left, right)


def clip_windows(duration: float, clip_seconds: float, stride_seconds: float | None = None) -> list[float]:
    """Start times of windows of ``clip_seconds`` inside ``[0, duration]``; 0 -> one whole window."""
    if clip_seconds <= 0:
        return [0.0]
    stride = clip_seconds if not stride_seconds else stride_seconds
    starts, t = [], 0.0
    while t + clip_seconds <= duration + 1e-6:
        starts.append(t)
        t += stride
    return starts


# --------------------------------------------------------------------------- labels, splits
def crowd_from_boxes(classes_per_frame: Sequence[np.ndarray]) -> int:
    """Crowd bucket from the mean number of vehicle boxes per frame (labels.CROWD_EDGES)."""
    if len(classes_per_frame) == 0:
        return crowd_bucket(None)
    counts = [int(np.isin(np.asarray(c), VEHICLE_CLASSES).sum()) for c in classes_per_frame]
    return crowd_bucket(float(np.mean(counts)))


def hash_split(key: str, val_fraction: float) -> str:
    """Deterministic fallback split: 'val' for a stable ``val_fraction`` of keys, else 'train'."""
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16)
    return "val" if digest / 0xFFFFFFFF < val_fraction else "train"


def map_category(name: str, table: Sequence[tuple[str, str | None]]) -> int | None:
    """First matching ``(pattern, class)`` rule; a pattern ending in '*' is a prefix.

    Returns the class id, or ``None`` when the rule drops the category (class ``None``) or
    no rule matches.
    """
    for pattern, target in table:
        hit = name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
        if hit:
            return None if target is None else CLASS_IDS[target]
    return None


# --------------------------------------------------------------------------- run bookkeeping
@dataclass
class Outcome:
    """Result of converting one source item (a scene or a video) into clips."""

    converted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Report(Outcome):
    """What happened to every source item (the outcomes summed); saved as
    ``conversion_report.json``."""

    def add(self, outcome: Outcome) -> None:
        self.converted += outcome.converted
        self.resumed += outcome.resumed
        self.skipped.update(outcome.skipped)
        self.failed.update(outcome.failed)

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} clips, kept {len(self.resumed)} existing, "
                 f"skipped {len(self.skipped)} items, failed {len(self.failed)}"]
        lines += [f"  skipped {k}: {v}" for k, v in sorted(self.skipped.items())]
        lines += [f"  FAILED {k}: {v}" for k, v in sorted(self.failed.items())]
        return "\n".join(lines)

    def save(self, out_dir: Path) -> None:
        atomic_write_json(out_dir / REPORT_NAME, {
            "converted": sorted(self.converted), "resumed": sorted(self.resumed),
            "skipped": dict(sorted(self.skipped.items())), "failed": dict(sorted(self.failed.items())),
        })


def run_items(fn: Callable[[Any], Outcome], items: Sequence[Any], *, workers: int, progress: bool,
              desc: str, keys: Sequence[str]) -> Iterator[Outcome]:
    """Apply ``fn`` to every item, serially or in a fork-based process pool, with a progress bar.

    An exception escaping ``fn`` becomes a failed outcome for that item (named by ``keys``) so
    that one bad input never loses the rest of a long conversion.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="item")
    if workers <= 1 or len(items) <= 1:
        for key, item in zip(keys, items):
            yield _guarded(fn, item, key)
            bar.update(1)
    else:
        # fork: workers inherit large read-only state (the nuScenes tables) without pickling.
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_guarded, fn, item, key): key for key, item in zip(keys, items)}
            for fut in as_completed(futures):
                yield fut.result()
                bar.update(1)
    bar.close()


def _guarded(fn: Callable[[Any], Outcome], item: Any, key: str) -> Outcome:
    # Any error (decoder, OpenCV, devkit) fails this item only; it is named in the report
    # and the exit code, and the rest of a long conversion still runs.
    try:
        return fn(item)
    except Exception as err:
        return Outcome(failed={key: f"{type(err).__name__}: {err}"})


def clip_exists(clip_dir: Path) -> bool:
    """A finished clip: ClipWriter renames the folder into place only when it is complete."""
    return (clip_dir / "clip.json").is_file()


def finish(out_dir: Path, report: Report) -> int:
    """Rewrite the manifest over every clip in ``out_dir`` and save the report.

    The split of each clip is read from its ``labels.split`` (written by the converter), so
    a resumed or incremental run (another scene subset) keeps one consistent manifest.
    Returns the exit code: 1 if any item failed, else 0.
    """
    from drivesim.data.clip_format import manifest_entry, read_clip, scan_clips, write_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for clip_dir in scan_clips(out_dir):
        clip = read_clip(clip_dir, check_frames=False)
        entries.append(manifest_entry(clip, out_dir, str(clip.labels.get("split", "train"))))
    write_manifest(out_dir, sorted(entries, key=lambda e: e.clip_id), overwrite=True)
    report.save(out_dir)
    print(report.summary())
    print(f"manifest: {out_dir / 'manifest.jsonl'} ({len(entries)} clips)")
    return 1 if report.failed else 0


# --------------------------------------------------------------------------- video decoding
@dataclass(frozen=True)
class VideoInfo:
    """What the container says (no full decode): duration, mean rate and display size."""

    path: Path
    duration: float
    fps: float
    height: int
    width: int
    rotation: int


def _av_errors():
    import av

    return (av.FFmpegError, OSError, EOFError, ValueError)


def probe_video(path: Path) -> VideoInfo:
    """Open a video and read its header; unreadable files raise DriveSimInputError."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DriveSimInputError("no video stream", path=path, field="streams")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = float(container.duration or 0) / av.time_base
            first = next(container.decode(stream), None)
            if first is None:
                raise DriveSimInputError("no decodable frame", path=path, field="frames")
            rotation = int(round(first.rotation or 0))
            h, w = first.height, first.width
    except _av_errors() as err:
        raise DriveSimInputError(f"unreadable video ({type(err).__name__}: {err})", path=path,
                                 field="file") from err
    if rotation % 180:
        h, w = w, h
    return VideoInfo(path, duration, float(rate) if rate else 0.0, h, w, rotation)


def rotate_for_display(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the container's display rotation (degrees counter-clockwise, PyAV convention)."""
    quarter = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=quarter)) if quarter else rgb


def iter_video_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Decode every frame as ``(seconds since the first frame, uint8 [H, W, 3] RGB)``.

    Times come from each frame's presentation timestamp, so variable-frame-rate files keep
    their true timing; the display rotation is applied. A decode error part-way raises
    DriveSimInputError naming the file and how far decoding got.
    """
    import av

    count, t0, t = 0, None, 0.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                t = float(frame.time) if frame.pts is not None else t
                t0 = t if t0 is None else t0
                rgb = rotate_for_display(frame.to_ndarray(format="rgb24"), int(round(frame.rotation or 0)))
                count += 1
                yield t - t0, rgb
    except _av_errors() as err:
        raise DriveSimInputError(f"decoding failed after {count} frames ({type(err).__name__}: {err})",
                                 path=path, field="frames", value=count) from err


def sample_at(frames: Iterator[tuple[float, np.ndarray]], times: np.ndarray, *,
              tail: float) -> Iterator[tuple[int, np.ndarray]]:
    """Stream ``(k, frame nearest to times[k])`` for increasing ``times`` (constant memory).

    A source frame may serve several outputs (output rate above the source rate) or none
    (below it). After the last source frame, outputs within ``tail`` seconds of it still get
    it; later ones are not produced (the caller sees the stream ended early).
    """
    prev: tuple[float, np.ndarray] | None = None
    k = 0
    for t, rgb in frames:
        while k < len(times) and t >= times[k]:
            use_prev = prev is not None and times[k] - prev[0] < t - times[k]
            yield k, (prev[1] if use_prev else rgb)
            k += 1
        if k == len(times):
            return
        prev = (t, rgb)
    while prev is not None and k < len(times) and times[k] - prev[0] <= tail:
        yield k, prev[1]
        k += 1
