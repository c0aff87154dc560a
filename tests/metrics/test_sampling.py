"""FVD clip sampling and drift-window dating at frame strides above 1."""

import numpy as np
import pytest
from metric_standins import load_standin, save_standin

from drivesim.metrics.evaluate import evaluate_videos
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sampling import clip_indices, clip_span, fvd_clip_starts
from drivesim.metrics.sources import VideoSource
from drivesim.utils.io import DriveSimInputError


def test_consecutive_clips_back_to_back_at_any_stride():
    starts = fvd_clip_starts(200, 4, 5, "consecutive", seed=0, name="v", limit=100)
    assert clip_span(4, 5) == 16
    np.testing.assert_array_equal(starts, np.arange(10) * 20)       # last clip: frames 180..195
    idx = clip_indices(starts, 4, 5)
    assert idx.shape == (10, 4) and idx[1].tolist() == [20, 25, 30, 35] and idx.max() < 200
    assert len(fvd_clip_starts(200, 4, 5, "consecutive", seed=0, name="v", limit=3)) == 3
    assert len(fvd_clip_starts(15, 4, 5, "consecutive", seed=0, name="v", limit=3)) == 0


def test_one_clip_per_video_at_a_seeded_offset():
    offsets = {name: int(fvd_clip_starts(300, 16, 2, "one_per_video", seed=0, name=name, limit=5)[0])
               for name in (f"clip{i:03d}" for i in range(40))}
    span = clip_span(16, 2)
    assert all(0 <= o <= 300 - span for o in offsets.values())
    assert len(set(offsets.values())) > 30                        # spread, not all at frame 0
    again = fvd_clip_starts(300, 16, 2, "one_per_video", seed=0, name="clip007", limit=1)
    assert int(again[0]) == offsets["clip007"]                    # a function of (seed, name) only
    other_seed = [int(fvd_clip_starts(300, 16, 2, "one_per_video", seed=1, name=n, limit=1)[0]) for n in offsets]
    assert other_seed != list(offsets.values())
    assert len(fvd_clip_starts(span - 1, 16, 2, "one_per_video", seed=0, name="short", limit=1)) == 0
    assert len(fvd_clip_starts(span, 16, 2, "one_per_video", seed=0, name="exact", limit=1)) == 1


def test_auto_sampling_needs_enough_videos():
    p = EvalProtocol(num_clips=8)
    assert p.sampling_for(8) == "one_per_video" and p.sampling_for(7) == "consecutive"
    assert p.sampling_for(None) == "consecutive"
    assert EvalProtocol(num_clips=8, clip_sampling="one_per_video").sampling_for(1) == "one_per_video"
    with pytest.raises(DriveSimInputError, match="clip_sampling"):
        EvalProtocol(clip_sampling="random")
    with pytest.raises(DriveSimInputError, match="covariance"):
        EvalProtocol(covariance="biased")


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "i3d.pt"
    save_standin("i3d", path, num_features=8)
    return load_standin("i3d", path)


def _video(name, n, seed, h=16, w=32):
    rng = np.random.default_rng(seed)
    return VideoSource.from_array(name, rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), fps=10.0)


def test_drift_windows_date_clips_by_their_first_frame_at_stride_5(i3d):
    # 20 s at 10 fps; 4-frame clips every 5th frame start at 0, 2, 4, ... 18 s; 3 s windows
    protocol = EvalProtocol(num_clips=100, frames_per_clip=4, frame_stride=5, window_seconds=3.0,
                            clip_sampling="consecutive", min_window_clips=1)
    with pytest.warns(UserWarning, match="only"):
        res = evaluate_videos([_video("fake", 200, 1)], [_video(f"r{i}", 200, 10 + i) for i in range(2)],
                              metrics="fvd", protocol=protocol, i3d=i3d)
    starts_s = np.arange(10) * 2.0
    expected = np.bincount((starts_s // 3.0).astype(int))
    got = {w["window"]: w["clips"] for w in res["fvd"]["windows"]}
    assert got == {w: int(c) for w, c in enumerate(expected) if c}
    # dating by the last frame minus the clip length (the old rule) would put clips 1.2 s late
    late = np.bincount(((starts_s + 1.2) // 3.0).astype(int))
    assert got != {w: int(c) for w, c in enumerate(late) if c}


def test_small_windows_get_no_frechet_value_and_one_per_video_sampling(i3d):
    real = [_video(f"r{i}", 40, 100 + i) for i in range(6)]
    fake = [_video(f"f{i}", 40, 200 + i) for i in range(6)]
    protocol = EvalProtocol(num_clips=6, frames_per_clip=4, window_seconds=1.0, min_window_clips=3)
    with pytest.warns(UserWarning, match="only 6"):
        res = evaluate_videos(fake, real, metrics="fvd", protocol=protocol, i3d=i3d)
    fvd = res["fvd"]
    assert fvd["clip_sampling"] == {"real": "one_per_video", "fake": "one_per_video"}
    assert fvd["real_clips"] == 6 and fvd["fake_clips"] == 6
    for row in fvd["windows"]:
        if row["clips"] >= 3:
            assert row["value"] is not None and row["value"] > 0
        else:
            assert row["value"] is None and "not computed" in row["note"]
    assert sum(r["clips"] for r in fvd["windows"]) == 6
    assert {r["clips"] for r in fvd["windows"]} >= {2, 3}   # one window each side of the minimum
    assert fvd["real_level"] is not None and fvd["real_level"] > 0   # two halves of 3 clips
    assert res["protocol"]["clip_sampling"] == "auto"


def test_real_level_is_zero_for_identical_halves(i3d):
    clip = _video("a", 24, 7).read(np.arange(24))
    real = [VideoSource.from_array(f"r{i}", clip, fps=10.0) for i in range(4)]   # all the same video
    protocol = EvalProtocol(num_clips=64, frames_per_clip=4, window_seconds=None, clip_sampling="consecutive")
    with pytest.warns(UserWarning):
        res = evaluate_videos([_video("f", 24, 8)], real, metrics="fvd,temporal", protocol=protocol, i3d=i3d)
    assert res["fvd"]["real_level"] == pytest.approx(0.0, abs=1e-6)
    assert res["temporal"]["real_level"] == 0.0
    assert res["fvd"]["value"] > 0 and res["temporal"]["w1"] > 0
