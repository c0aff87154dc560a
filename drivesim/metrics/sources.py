"""Videos to evaluate: clip-format folders, plain mp4 folders, or in-memory arrays / tensors.

A ``VideoSource`` reads frames lazily (``read(indices) -> uint8 [n, H, W, 3]``), so a
multi-minute rollout is never held in memory; ``boxes(indices)`` gives the conditioned
boxes when the clip carries them (clip.json).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from drivesim.data.clip_format import CLIP_JSON, MANIFEST, read_clip, read_manifest, scan_clips
from drivesim.data.labels import DAYNIGHT_UNKNOWN
from drivesim.data.video_io import VideoReader
from drivesim.utils.io import DriveSimInputError

MAX_BOXES = 64


@dataclass
class VideoSource:
    """One video. ``boxes`` returns (``[n, N, 4]`` normalised, ``[n, N]`` classes) or is None."""

    name: str
    num_frames: int
    fps: float
    read: Callable[[Sequence[int]], np.ndarray]
    boxes: Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]] | None = None
    daynight: int = DAYNIGHT_UNKNOWN
    close: Callable[[], None] = lambda: None

    @classmethod
    def from_array(cls, name: str, frames: np.ndarray, fps: float, *, boxes: np.ndarray | None = None,
                   classes: np.ndarray | None = None, daynight: int = DAYNIGHT_UNKNOWN) -> VideoSource:
        """uint8 ``frames [T, H, W, 3]``; optional ``boxes [T, N, 4]`` and ``classes [T, N]``."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{name}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        box_fn = None
        if boxes is not None:
            b, c = np.asarray(boxes, np.float32), np.asarray(classes, np.int64)
            if b.shape[:2] != c.shape or b.shape[0] != frames.shape[0]:
                raise ValueError(f"{name}: boxes {b.shape} / classes {c.shape} do not match {frames.shape[0]} frames")
            box_fn = lambda idx: (b[np.asarray(idx)], c[np.asarray(idx)])  # noqa: E731
        return cls(name, int(frames.shape[0]), float(fps), lambda idx: frames[np.asarray(idx)],
                   box_fn, int(daynight))

    @classmethod
    def from_tensor(cls, name: str, video: torch.Tensor, fps: float, **kwargs) -> VideoSource:
        """float ``[T, 3, H, W]`` in [-1, 1] (one sample of the batch contract) -> source."""
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"{name}: expected [T, 3, H, W], got {tuple(video.shape)}")
        uint8 = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = rearrange(uint8, "t c h w -> t h w c").cpu().numpy()
        return cls.from_array(name, frames, fps, **kwargs)


def clip_source(clip_dir: str | os.PathLike) -> VideoSource:
    clip = read_clip(clip_dir, check_frames=False)

    def boxes(idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        b, c, _ = clip.box_arrays(idx, max_boxes=MAX_BOXES)
        return b, c

    has_boxes = any(len(b) for b in clip.boxes)
    return VideoSource(clip.clip_id, clip.num_frames, clip.fps, clip.frames,
                       boxes if has_boxes else None, clip.daynight, clip.close)


def mp4_source(path: str | os.PathLike) -> VideoSource:
    reader = VideoReader(path)
    if reader.num_frames < 1 or not reader.fps > 0:
        raise DriveSimInputError("video has no frames or no frame rate", path=path, field="frames",
                                 value={"num_frames": reader.num_frames, "fps": reader.fps})
    return VideoSource(Path(path).stem, reader.num_frames, reader.fps, reader.read, close=reader.close)


def _layout(root: Path) -> tuple[str, list[Path]]:
    if not root.exists():
        raise DriveSimInputError("folder not found", path=root, field="path")
    if (root / CLIP_JSON).is_file():
        return "clip", [root]
    if (root / MANIFEST).is_file():
        return "clip", [root / e.path for e in read_manifest(root)]
    clips = scan_clips(root) if root.is_dir() else []
    if clips:
        return "clip", clips
    videos = sorted(root.rglob("*.mp4")) if root.is_dir() else ([root] if root.suffix == ".mp4" else [])
    videos = [v for v in videos if not any(part.startswith(".") for part in v.relative_to(root).parts)] \
        if root.is_dir() else videos
    if videos:
        return "mp4", videos
    raise DriveSimInputError("no clips (clip.json / manifest.jsonl) and no .mp4 files found", path=root,
                             field="path")


def list_sources(root: str | os.PathLike, split: str | None = None) -> list[tuple[str, Callable[[], VideoSource]]]:
    """(name, opener) per video under ``root``, sorted; openers defer opening the files.

    ``split`` filters a manifest's entries (an error for folders without a manifest).
    """
    root = Path(root)
    if split is not None:
        if not (root / MANIFEST).is_file():
            raise DriveSimInputError("a split was requested but the folder has no manifest", path=root,
                                     field="split", value=split)
        paths = [root / e.path for e in read_manifest(root) if e.split == split]
        if not paths:
            raise DriveSimInputError("no clips in this split", path=root / MANIFEST, field="split", value=split)
        return [(p.name, lambda p=p: clip_source(p)) for p in paths]
    kind, paths = _layout(root)
    opener = clip_source if kind == "clip" else mp4_source
    return [(p.name, lambda p=p: opener(p)) for p in paths]


def dataset_fingerprint(root: str | os.PathLike, split: str | None = None) -> str:
    """Hash of the dataset's identity for the real-statistics cache: the resolved path plus the
    manifest content, or (without a manifest) every clip.json / mp4 path, size and mtime."""
    root = Path(root).resolve()
    digest = hashlib.sha256(f"{root}|{split}".encode())
    if (root / MANIFEST).is_file():
        digest.update((root / MANIFEST).read_bytes())
    if root.is_file():  # a single mp4
        files = [root]
    elif (root / CLIP_JSON).is_file():
        files = [root / CLIP_JSON]
    else:
        files = sorted([*root.rglob(CLIP_JSON), *root.rglob("*.mp4")])
    for f in files:
        st = f.stat()
        digest.update(f"{f.name if f == root else f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]
