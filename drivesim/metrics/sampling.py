"""Which frames of a video become FVD clips (``EvalProtocol.clip_sampling``).

- ``one_per_video`` (StyleGAN-V): one clip per video at a random offset. The offset comes
  from ``np.random.default_rng([seed, crc32(video name)])``, so it depends on the seed and
  the video only (not on the listing order or on what else is evaluated); a video shorter
  than one clip gives none.
- ``consecutive``: non-overlapping clips back to back from frame 0, at most ``limit`` (for a
  few long videos, where one clip each would be too few).

A clip is ``frames_per_clip`` frames ``stride`` apart; it starts at ``start`` and covers
``(frames_per_clip - 1) * stride + 1`` source frames.
"""

from __future__ import annotations

import zlib

import numpy as np

SAMPLINGS = ("one_per_video", "consecutive")


def clip_span(frames_per_clip: int, stride: int) -> int:
    """Source frames covered by one clip (first to last, inclusive)."""
    return (frames_per_clip - 1) * stride + 1


def fvd_clip_starts(num_frames: int, frames_per_clip: int, stride: int, sampling: str, *,
                    seed: int, name: str, limit: int) -> np.ndarray:
    """Start frames ``[n]`` of the video's FVD clips (n <= ``limit``)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling: expected one of {SAMPLINGS}, got {sampling!r}")
    span = clip_span(frames_per_clip, stride)
    if num_frames < span or limit < 1:
        return np.zeros(0, np.int64)
    if sampling == "one_per_video":
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        return np.array([rng.integers(0, num_frames - span + 1)], np.int64)
    step = frames_per_clip * stride
    n = min((num_frames - span) // step + 1, limit)
    return np.arange(n, dtype=np.int64) * step


def clip_indices(starts: np.ndarray, frames_per_clip: int, stride: int) -> np.ndarray:
    """Frame indices ``[n, frames_per_clip]`` of clips starting at ``starts [n]``."""
    return starts[:, None] + np.arange(frames_per_clip, dtype=np.int64)[None, :] * stride
