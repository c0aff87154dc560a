"""Oracle metrics: exact per-frame definitions, and separation of ground truth from
frame-shuffled and noise videos on the synthetic world."""

import numpy as np
import pytest
import scipy.stats
import torch

from drivesim.data.labels import DAY, NIGHT
from drivesim.metrics.evaluate import evaluate_videos
from drivesim.metrics.oracle.model import (
    Oracle,
    OracleConfig,
    VehicleSegmenter,
    calibration_seeds,
    fit_luma_threshold,
    render_drives,
    train_oracle,
    train_seeds,
)
from drivesim.metrics.oracle.scores import (
    box_fidelity_frame,
    boxes_to_mask,
    grey_small,
    warp_residuals,
    wasserstein_1d,
)
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sources import VideoSource
from drivesim.utils.io import DriveSimInputError


def test_boxes_to_mask_pixel_centres():
    mask = boxes_to_mask(np.array([[0.25, 0.5, 0.75, 1.0]]), 4, 8)
    expected = np.zeros((4, 8), bool)
    expected[2:4, 2:6] = True
    assert np.array_equal(mask, expected)
    assert not boxes_to_mask(np.zeros((0, 4)), 4, 8).any()


def test_box_fidelity_frame_definitions():
    boxes = np.array([[0.0, 0.0, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0]])  # 8x16 px: 4x4 and 4x8 px
    union = boxes_to_mask(boxes, 8, 16).astype(float)
    perfect = box_fidelity_frame(union, boxes, min_box_pixels=4)
    assert (perfect.boxes, perfect.recalled, perfect.blobs, perfect.true_blobs) == (2, 2, 2, 2)
    assert perfect.summary()["mean_iou"] == 1.0
    empty = box_fidelity_frame(np.zeros((8, 16)), boxes, min_box_pixels=4)
    assert empty.summary() == {"recall": 0.0, "precision": None, "mean_iou": 0.0, "boxes": 2,
                               "blobs": 0, "frames": 1}
    spurious = union.copy()
    spurious[0:3, 8:12] = 1.0  # a 12-pixel blob outside every box
    s = box_fidelity_frame(spurious, boxes, min_box_pixels=4).summary()
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0
    assert s["mean_iou"] == pytest.approx(union.sum() / (union.sum() + 12))
    half = union.copy()
    half[4:8, 8:16] = 0.4  # the second box's mean probability is below 0.5: not recalled
    assert box_fidelity_frame(half, boxes, min_box_pixels=4).recalled == 1


def test_wasserstein_matches_scipy_and_threshold_fit(generator):
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 4000), rng.normal(0.7, 2, 3000)
    assert wasserstein_1d(a, b) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=0.02)
    assert wasserstein_1d(a, a) == 0.0
    luma = np.array([0.1, 0.15, 0.2, 0.5, 0.6])
    t = fit_luma_threshold(luma, np.array([True, True, True, False, False]))
    assert 0.2 < t < 0.5


def _texture(rng, h, w):
    """Smooth random grey texture in [0.1, 0.9] (blurred noise: trackable by optical flow)."""
    import cv2

    x = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    return 0.1 + 0.8 * (x - x.min()) / (x.max() - x.min())


def test_warp_residual_explains_motion_not_boiling():
    rng = np.random.default_rng(0)
    big = _texture(rng, 80, 160)
    moving = np.stack([big[8:72, 8 + 2 * t:136 + 2 * t] for t in range(6)])  # 2 px/frame pan
    boiling = np.stack([_texture(rng, 64, 128) for _ in range(6)])           # new texture per frame
    res_m, raw_m = warp_residuals(moving)
    res_b, raw_b = warp_residuals(boiling)
    assert res_m.shape == raw_m.shape == (5,)
    np.testing.assert_allclose(raw_m, np.abs(np.diff(moving, axis=0)).mean(axis=(1, 2)), rtol=1e-5)
    assert res_m.mean() < 0.25 * raw_m.mean()  # the flow explains a pan
    assert res_b.mean() > 0.6 * raw_b.mean()   # nothing to explain new content with
    still = np.repeat(moving[:1], 3, axis=0)
    assert warp_residuals(still)[0].max() < 1e-3 and warp_residuals(still[:1])[0].shape == (0,)
    np.testing.assert_array_equal(warp_residuals(torch.from_numpy(moving))[0], res_m)  # deterministic
    with pytest.raises(ValueError, match="shape"):
        warp_residuals(moving[..., None])


def test_oracle_checkpoint_round_trip(tmp_path, generator):
    cfg = OracleConfig(height=16, width=32, channels=4)
    oracle = Oracle(cfg, VehicleSegmenter(4), 0.25, {"note": 1})
    frames = torch.randint(0, 256, (2, 20, 40, 3), generator=generator, dtype=torch.uint8).numpy()
    oracle.save(tmp_path / "o.pt")
    loaded = Oracle.load(tmp_path / "o.pt")
    assert loaded.luma_threshold == 0.25 and loaded.calibration == {"note": 1}
    np.testing.assert_array_equal(loaded.vehicle_prob(frames), oracle.vehicle_prob(frames))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(DriveSimInputError, match="bad.pt"):
        Oracle.load(tmp_path / "bad.pt")
    with pytest.raises(FileExistsError):
        oracle.save(tmp_path / "o.pt")


# ---------------------------------------------------------------- synthetic-world separation

TINY = OracleConfig(height=48, width=96, num_drives=2, frames_per_drive=20, fps=10.0, steps=200,
                    batch_size=8, channels=8, calibration_drives=1)


def _sources(data, cfg, name, order=None, frames=None, daynight=None):
    """One VideoSource per drive; ``order`` permutes frames (boxes stay: the conditioning)."""
    out, n = [], cfg.frames_per_drive
    for d in range(len(data["frames"]) // n):
        rgb = data["frames"][d * n:(d + 1) * n] if frames is None else frames[d * n:(d + 1) * n]
        if order is not None:
            rgb = rgb[order]
        boxes = data["boxes"][d * n:(d + 1) * n]
        width = max(1, max(len(b) for b in boxes))
        padded = np.zeros((n, width, 4), np.float32)
        classes = np.zeros((n, width), np.int64)
        for t, b in enumerate(boxes):
            padded[t, :len(b)], classes[t, :len(b)] = b, 1
        label = (NIGHT if data["night"][d * n] else DAY) if daynight is None else daynight
        out.append(VideoSource.from_array(f"{name}{d}", rgb, cfg.fps, boxes=padded, classes=classes,
                                          daynight=label))
    return out


@pytest.fixture(scope="module")
def world():
    train = render_drives(TINY, train_seeds(TINY))
    held_out = render_drives(TINY, calibration_seeds(TINY))
    oracle = train_oracle(TINY, renders=train, calibration_renders=held_out)
    return TINY, train, held_out, oracle


def test_warp_residual_separates_world_drives_from_shuffled(world):
    cfg, train, _, _ = world
    n, rng = cfg.frames_per_drive, np.random.default_rng(1)
    real, shuffled = [], []
    for d in range(len(train["frames"]) // n):
        grey = grey_small(train["frames"][d * n:(d + 1) * n], 64, 128)
        real.append(warp_residuals(grey)[0])
        shuffled.append(warp_residuals(grey[rng.permutation(n)])[0])
    assert 2 * np.concatenate(real).mean() < np.concatenate(shuffled).mean()


def _score(cfg, oracle, fake, real):
    protocol = EvalProtocol(window_seconds=1.0, oracle_real_frames=1000)
    return evaluate_videos(fake, real, metrics="oracle", protocol=protocol, oracle=oracle)


def test_oracle_separates_truth_from_shuffled_and_noise(world):
    cfg, train, held_out, oracle = world
    rng = np.random.default_rng(0)
    real = lambda: _sources(held_out, cfg, "ref")  # noqa: E731  (temporal reference set)
    truth = _score(cfg, oracle, _sources(train, cfg, "gt"), real())
    shuffled = _score(cfg, oracle, _sources(train, cfg, "sh", order=rng.permutation(cfg.frames_per_drive)), real())
    noise_frames = rng.integers(0, 256, train["frames"].shape, dtype=np.uint8)
    noise = _score(cfg, oracle, _sources(train, cfg, "nz", frames=noise_frames), real())
    box = {k: r["oracle"]["box_fidelity"]["fake"] for k, r in
           (("truth", truth), ("shuffled", shuffled), ("noise", noise))}
    # the tiny oracle scores drives it was trained on: a plumbing/separation check (held-out
    # calibration of the full recipe is in docs/evaluation.md and the slow test)
    assert box["truth"]["recall"] > 0.6 and box["truth"]["mean_iou"] > 0.4
    assert box["shuffled"]["mean_iou"] < box["truth"]["mean_iou"] - 0.15
    assert box["shuffled"]["recall"] < box["truth"]["recall"] - 0.3
    # noise lights up everywhere: recall alone is fooled, precision and IoU are not
    assert (box["noise"]["precision"] or 0.0) < box["truth"]["precision"] - 0.5  # None: no blob at all
    assert box["noise"]["mean_iou"] < box["truth"]["mean_iou"] - 0.3
    w1 = {k: r["temporal"]["w1"] for k, r in (("truth", truth), ("shuffled", shuffled), ("noise", noise))}
    assert w1["truth"] * 3 < w1["shuffled"] < w1["noise"]
    assert truth["oracle"]["daynight"]["fake"]["accuracy"] == 1.0
    assert len(truth["oracle"]["windows"]) == 2  # 20 frames at 10 fps in 1 s windows


def test_daynight_accuracy_follows_the_requested_label(world):
    cfg, train, held_out, oracle = world
    wrong = _score(cfg, oracle, _sources(train, cfg, "x", daynight=NIGHT), _sources(held_out, cfg, "r"))
    # drive 0 is a day render labelled night; drive 1 really is night (2 windows each)
    acc = wrong["oracle"]["daynight"]["fake"]
    assert acc["scored"] == 4 and acc["accuracy"] == pytest.approx(2 / 4)


@pytest.mark.slow
def test_full_recipe_calibrates_and_separates(tmp_path):
    cfg = OracleConfig()
    oracle = train_oracle(cfg)
    calib = oracle.calibration["box_fidelity"]
    assert calib["recall"] > 0.6 and calib["mean_iou"] > 0.4
    assert oracle.calibration["daynight_frame_accuracy"] > 0.95
    clips_cfg = OracleConfig(frames_per_drive=30, fps=10.0, calibration_drives=3)
    fresh = render_drives(clips_cfg, range(9000, 9003))  # drives neither trained nor calibrated on
    truth = _score(clips_cfg, oracle, _sources(fresh, clips_cfg, "gt"), _sources(fresh, clips_cfg, "r"))
    order = np.random.default_rng(0).permutation(30)
    shuffled = _score(clips_cfg, oracle, _sources(fresh, clips_cfg, "s", order=order),
                      _sources(fresh, clips_cfg, "r"))
    t, s = truth["oracle"]["box_fidelity"]["fake"], shuffled["oracle"]["box_fidelity"]["fake"]
    # near the ceiling: IoU is stable across drive sets, recall varies more with few boxes
    assert t["mean_iou"] > calib["mean_iou"] - 0.1 and t["recall"] > calib["recall"] - 0.25
    assert s["mean_iou"] < t["mean_iou"] - 0.1
