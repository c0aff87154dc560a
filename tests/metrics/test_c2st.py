"""The classifier two-sample test: statistics, split, determinism and calibration on textured
moving videos (real vs real near 0.5; blur, noise and frame shuffling far above)."""

import math

import numpy as np
import pytest
import scipy.stats

from drivesim.metrics.c2st import (
    C2STCollector,
    C2STConfig,
    assign_folds,
    balance,
    binomial_p_above_half,
    clip_input,
    clip_starts,
    clustered_interval,
    group_ids,
    run_test,
    wilson_interval,
)
from drivesim.metrics.degrade import blurred, noisy, shuffled
from drivesim.metrics.evaluate import evaluate_videos, flat_metrics
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sources import VideoSource
from drivesim.utils.io import DriveSimInputError

CFG = C2STConfig(frame_size=(32, 64), clip_size=(16, 32), width=8, steps=80, batch_size=32, lr=3e-3)


def _texture_video(name: str, seed: int, frames: int = 24, h: int = 32, w: int = 64) -> VideoSource:
    """A sharp random texture panning right by 2 px per frame (like a camera moving)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4, (w + 2 * frames) // 4, 3), dtype=np.uint8)
    texture = coarse.repeat(4, axis=0).repeat(4, axis=1)
    video = np.stack([texture[:, 2 * t:2 * t + w] for t in range(frames)])    # [T, H, W, 3]
    return VideoSource.from_array(name, video, fps=10.0)


def _videos(prefix: str, first_seed: int, n: int = 16) -> list[VideoSource]:
    return [_texture_video(f"{prefix}{i}", first_seed + i) for i in range(n)]


def _collect(real: list[VideoSource], fake: list[VideoSource], clip_frames: int = 4) -> C2STCollector:
    col = C2STCollector(clip_frames=clip_frames, clips_per_video=6, max_clips=1000, config=CFG)
    for videos, is_real in ((real, True), (fake, False)):
        for src in videos:
            idx = col.plan(src.num_frames, 1, is_real)
            col.add(idx, src.read(idx))
            col.end_video(src.name, is_real, src.fps, src.num_frames, lambda i: i // 10)
    return col


def _bounds(w):
    return {"window": w}


def test_wilson_binomial_and_clustered_intervals():
    lo, hi = wilson_interval(60, 100)
    assert lo == pytest.approx(0.5020, abs=1e-3) and hi == pytest.approx(0.6906, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k, n in ((60, 100), (5, 10), (520, 1000)):
        assert binomial_p_above_half(k, n) == pytest.approx(scipy.stats.binom.sf(k - 1, n, 0.5), rel=1e-9)
    # independent groups of one sample: the clustered interval is the normal one
    correct = np.array([1.0] * 60 + [0.0] * 40)
    lo, hi = clustered_interval(correct, np.arange(100))
    half = 1.96 * math.sqrt(0.6 * 0.4 / 100) * math.sqrt(100 / 99)
    assert lo == pytest.approx(0.6 - half, abs=1e-3) and hi == pytest.approx(0.6 + half, abs=1e-3)
    # whole groups right or wrong together: far wider than treating samples as independent
    groups = np.repeat(np.arange(10), 10)
    lumped = np.repeat([1.0] * 6 + [0.0] * 4, 10)
    c_lo, c_hi = clustered_interval(lumped, groups)
    w_lo, w_hi = wilson_interval(60, 100)
    assert c_hi - c_lo > 2 * (w_hi - w_lo)


def test_split_by_group_balanced_and_seeded():
    labels = np.array([0] * 30 + [1] * 50)
    groups = np.concatenate([np.repeat(np.arange(6), 5), 100 + np.repeat(np.arange(10), 5)])
    folds = assign_folds(groups, labels, 2, seed=3)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1          # a group never spans train and test
    for side in (0, 1):
        per_fold = [len(np.unique(groups[(labels == side) & (folds == f)])) for f in (0, 1)]
        assert abs(per_fold[0] - per_fold[1]) <= 1
    np.testing.assert_array_equal(folds, assign_folds(groups, labels, 2, seed=3))
    keep = balance(labels, seed=0)
    assert (labels[keep] == 0).sum() == (labels[keep] == 1).sum() == 30


def test_grouping_falls_back_to_segments_for_few_long_videos():
    cfg = C2STConfig(min_groups=3, group_seconds=10.0)
    meta = [(1, "long", s, 0) for s in (0.0, 5.0, 12.0, 25.0)] + [(0, f"r{i}", 0.0, 0) for i in range(4)]
    videos = {0: {f"r{i}": 4.0 for i in range(4)}, 1: {"long": 30.0}}
    ids, grouping = group_ids(meta, videos, cfg)
    assert grouping == {"real": "video", "fake": "segment"}
    assert len(set(ids[:4].tolist())) == 3                # segments 0, 0, 1, 2
    assert len(set(ids[4:].tolist())) == 4


def test_clip_input_stacks_frames_and_differences():
    clip = np.zeros((3, 8, 16, 3), np.uint8)
    clip[1] = 100
    x = clip_input(clip, (8, 16))
    assert x.shape == (3 * 3 + 2 * 3, 8, 16) and x.dtype == np.uint8
    assert (x[9:12] == 128 + 50).all() and (x[12:15] == 128 - 50).all()
    np.testing.assert_array_equal(clip_starts(40, 4, 6), [0, 7, 14, 22, 29, 36])
    assert len(clip_starts(3, 4, 6)) == 0


def test_real_vs_real_near_chance_and_deterministic():
    # 32 videos a side: with few videos the two finite sets differ by chance (and a held-out
    # fold's difference is anti-correlated with the training folds'), so the accuracy scatters
    # around 0.5 by about the clustered interval's half-width
    real, other = _videos("a", 0, n=32), _videos("b", 1000, n=32)
    first = run_test(_collect(real, other).samples("frame"), CFG, _bounds)
    lo, hi = first["ci95_clustered"]
    assert lo <= 0.5 <= hi and abs(first["accuracy"] - 0.5) < 0.1
    again = run_test(_collect(real, other).samples("frame"), CFG, _bounds)
    assert again == first                                  # seeded and deterministic on CPU
    assert first["grouping"] == {"real": "video", "fake": "video"}
    assert first["held_out"] == 2 * 32 * 6 * 4            # every balanced sample held out once


@pytest.mark.parametrize("degrade,variant", [(lambda s: blurred(s, 1.5), "frame"),
                                             (lambda s: noisy(s, 40.0), "frame"),
                                             (lambda s: shuffled(s, seed=1), "clip")])
def test_degraded_real_is_told_apart(degrade, variant):
    real, other = _videos("a", 0), [degrade(v) for v in _videos("b", 1000)]
    res = run_test(_collect(real, other).samples(variant), CFG, _bounds)
    assert res["accuracy"] > 0.75 and res["ci95_clustered"][0] > 0.6 and res["p_value"] < 1e-6
    assert res["windows"] and all(0.5 <= r["accuracy"] <= 1.0 for r in res["windows"])


def test_shuffled_frames_fool_the_frame_variant_only():
    real, other = _videos("a", 0), [shuffled(v, seed=1) for v in _videos("b", 1000)]
    frame = run_test(_collect(real, other).samples("frame"), CFG, _bounds)
    assert frame["ci95_clustered"][0] <= 0.5 <= frame["ci95_clustered"][1]


def test_c2st_through_evaluate_videos():
    protocol = EvalProtocol(window_seconds=1.0, c2st_clips_per_video=4, c2st_clip_frames=3)
    res = evaluate_videos(_videos("b", 1000, n=6), _videos("a", 0, n=6), metrics="c2st", protocol=protocol,
                          c2st=C2STConfig(frame_size=(16, 32), clip_size=(16, 32), width=4, steps=5))
    c2st = res["c2st"]
    assert c2st["real_clips"] == c2st["fake_clips"] == 24 and c2st["real_level"] == 0.5
    assert c2st["config"]["steps"] == 5 and c2st["clip_frames"] == 3
    assert {r["window"] for r in c2st["frame"]["windows"]} == {0, 1, 2}   # clip starts 0..2.1 s
    assert set(flat_metrics(res)) == {"c2st/frame", "c2st/clip"}
    with pytest.raises(DriveSimInputError, match="groups"):
        run_test(_collect(_videos("a", 0, n=1), _videos("b", 9, n=1)).samples("frame"),
                 C2STConfig(min_groups=1), _bounds)


def test_clips_spread_over_all_videos_when_their_number_is_known():
    col = C2STCollector(clip_frames=4, clips_per_video=64, max_clips=10)
    assert len(col.plan(400, 1, True, num_videos=5)) == 2 * 4          # 10 clips / 5 videos
    assert len(col.plan(400, 1, True)) == 10 * 4                         # unknown: fill up
    col.count = lambda real: 10                                         # quota used up
    assert len(col.plan(400, 1, True)) == 0
