"""Degraded copies of real videos, for calibrating a realism metric on one's own footage.

Each wrapper returns a ``VideoSource`` reading the original lazily and changing the frames:
``blurred`` (Gaussian blur), ``noisy`` (Gaussian pixel noise, seeded per frame index, so
a frame reads the same whatever block it comes in) and ``shuffled`` (the frame order
permuted, appearance untouched: only a motion-aware metric sees it).
``benchmarks/c2st_calibration.py`` scores the C2ST against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np

from drivesim.metrics.sources import VideoSource


def blurred(src: VideoSource, sigma: float) -> VideoSource:
    """Every frame blurred with a Gaussian of ``sigma`` pixels (kernel 6 sigma + 1)."""
    k = 2 * int(round(3 * sigma)) + 1

    def read(idx: Sequence[int]) -> np.ndarray:
        frames = src.read(idx)                                        # uint8 [n, H, W, 3]
        return np.stack([cv2.GaussianBlur(f, (k, k), sigma) for f in frames])

    return replace(src, name=f"{src.name}-blur{sigma:g}", read=read)


def noisy(src: VideoSource, sigma: float, seed: int = 0) -> VideoSource:
    """Gaussian noise of ``sigma`` grey levels (of 255) added to every pixel, then clipped."""

    def read(idx: Sequence[int]) -> np.ndarray:
        frames = src.read(idx).astype(np.float32)                     # [n, H, W, 3]
        for k, i in enumerate(idx):
            rng = np.random.default_rng([seed, int(i)])
            frames[k] += rng.normal(0.0, sigma, frames[k].shape).astype(np.float32)
        return frames.round().clip(0, 255).astype(np.uint8)

    return replace(src, name=f"{src.name}-noise{sigma:g}", read=read)


def shuffled(src: VideoSource, seed: int = 0) -> VideoSource:
    """The frames in a seeded random order (boxes follow their frames)."""
    perm = np.random.default_rng(seed).permutation(src.num_frames)

    def read(idx: Sequence[int]) -> np.ndarray:
        return src.read(perm[np.asarray(idx, np.int64)])

    boxes = None if src.boxes is None else (lambda idx: src.boxes(perm[np.asarray(idx, np.int64)]))
    return replace(src, name=f"{src.name}-shuffled", read=read, boxes=boxes)
