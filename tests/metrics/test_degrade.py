"""Degraded copies of a video read lazily and deterministically."""

import numpy as np

from drivesim.metrics.degrade import blurred, noisy, shuffled
from drivesim.metrics.sources import VideoSource


def _src():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 16, 32, 3), dtype=np.uint8)
    boxes = rng.random((10, 2, 4)).astype(np.float32)
    return VideoSource.from_array("v", frames, fps=5.0, boxes=boxes, classes=np.ones((10, 2), np.int64)), frames


def test_blur_removes_detail_and_noise_is_seeded_per_frame():
    src, frames = _src()
    sharp = np.abs(np.diff(frames.astype(float), axis=2)).mean()
    soft = np.abs(np.diff(blurred(src, 1.5).read(range(10)).astype(float), axis=2)).mean()
    assert soft < 0.5 * sharp
    a = noisy(src, 10.0).read([3, 4, 5])
    b = noisy(src, 10.0).read([5])                       # another block: same frame, same noise
    np.testing.assert_array_equal(a[2], b[0])
    diff = a.astype(float) - frames[[3, 4, 5]]
    assert 7 < diff.std() < 11 and not np.array_equal(noisy(src, 10.0, seed=1).read([5]), b)


def test_shuffle_permutes_frames_and_boxes_together():
    src, frames = _src()
    sh = shuffled(src, seed=2)
    out = sh.read(range(10))
    order = [next(j for j in range(10) if np.array_equal(out[i], frames[j])) for i in range(10)]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    np.testing.assert_array_equal(sh.boxes([0])[0], src.boxes([order[0]])[0])
    assert sh.num_frames == 10 and sh.name == "v-shuffled"
