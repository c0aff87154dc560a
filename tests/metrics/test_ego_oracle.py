"""The ego-motion oracle: a tiny config trained for seconds beats a constant on held-out drives."""

import numpy as np
import pytest
import torch

from drivesim.metrics import ego_oracle as eo
from drivesim.utils.io import DriveSimInputError

# ~10 s on an idle 2-core CPU (render + train + calibrate); every drive has an ego program
TINY = eo.EgoOracleConfig(num_drives=32, frames_per_drive=12, steps=600, batch_size=16, channels=8,
                          calibration_drives=10, program_fraction=1.0)


@pytest.fixture(scope="module")
def oracle() -> eo.EgoOracle:
    return eo.train_ego_oracle(TINY)


def test_tiny_oracle_beats_a_constant_speed_on_held_out_drives(oracle):
    cal = oracle.calibration
    assert cal["windows"] == TINY.calibration_drives * TINY.frames_per_drive
    speed = cal["speed"]
    assert speed["mae"] < 0.85 * speed["constant_mae"], speed  # the training mean, always
    assert speed["pearson"] > 0.5, speed
    assert set(cal["yaw_rate"]) == {"pearson", "mae", "constant_mae"}


def test_estimates_follow_a_stop(oracle):
    """One held-out drive braking to a standstill: the estimate falls with the true speed."""
    from drivesim.data.ego_presets import preset
    from drivesim.data.world import DrivingWorld, WorldConfig

    world = DrivingWorld(WorldConfig(seed=901, height=64, width=128, fps=TINY.fps, num_vehicles=3,
                                     ego_track=preset("brake")))
    frames = np.stack([world.step().rgb for _ in range(110)])  # 16 m/s, then standing from 9.3 s
    speed, yaw = oracle.estimate(frames)
    assert speed.shape == yaw.shape == (110 - TINY.stack + 1,)
    assert speed[:30].mean() > speed[-10:].mean() + 3.0, (speed[:30].mean(), speed[-10:].mean())


def test_follow_scores_compare_a_video_with_its_ego_motion(oracle):
    """A 20 fps world drive with its exact motion, scored at the oracle's 10 fps: the estimates
    follow the labels; against a reversed label series they do not; unknown frames are left out."""
    from drivesim.data.ego import EgoSeries
    from drivesim.data.ego_presets import preset
    from drivesim.data.world import DrivingWorld, WorldConfig

    world = DrivingWorld(WorldConfig(seed=902, height=64, width=128, fps=20.0, num_vehicles=2,
                                     ego_track=preset("stop_and_go")))
    drive = [world.step() for _ in range(400)]                   # 20 s: cruise, stop, go
    frames = np.stack([f.rgb for f in drive])
    ego = EgoSeries.of([f.ego_speed for f in drive], [f.ego_yaw_rate for f in drive])
    good = eo.follow_scores(oracle, frames, 20.0, ego)
    assert good["windows"] == 200 - TINY.stack + 1 and good["speed"]["pearson"] > 0.5, good
    wrong = eo.follow_scores(oracle, frames, 20.0, ego.take(np.arange(399, -1, -1)))
    assert wrong["speed"]["pearson"] < good["speed"]["pearson"] - 0.5, (good, wrong)
    half = EgoSeries.of(ego.speed, ego.yaw_rate, np.arange(400) < 200)
    assert eo.follow_scores(oracle, frames, 20.0, half)["windows"] == 100 - TINY.stack + 1


def test_save_load_and_cache_by_config_hash(oracle, tmp_path, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 128, 3), dtype=np.uint8)
    oracle.save(tmp_path / "o.pt")
    back = eo.EgoOracle.load(tmp_path / "o.pt")
    assert back.config == TINY and back.calibration == oracle.calibration
    for a, b in zip(back.estimate(frames), oracle.estimate(frames)):
        np.testing.assert_array_equal(a, b)
    oracle.save(tmp_path / f"ego-oracle-{TINY.key()}.pt")
    monkeypatch.setattr(eo, "train_ego_oracle", lambda cfg: pytest.fail("a cached oracle was retrained"))
    cached = eo.load_or_train_ego_oracle(TINY, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.estimate(frames)[0], oracle.estimate(frames)[0])
    assert TINY.key() != eo.EgoOracleConfig().key()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DriveSimInputError, match="junk.pt"):
        eo.EgoOracle.load(tmp_path / "junk.pt")
    with pytest.raises(DriveSimInputError, match="frames"):
        oracle.estimate(frames[:2])
    with pytest.raises(DriveSimInputError, match="stack"):
        eo.EgoOracleConfig(stack=1)


def test_stacks_and_window_targets():
    luma = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)  # [n=5, h, w]
    x = eo.stacks(luma, 3)
    assert x.shape == (3, 2, 2, 3)                                          # 3 windows of 2 differences
    torch.testing.assert_close(x[1, 0], 4.0 * (luma[2] - luma[1]))
    torch.testing.assert_close(x[1, 1], 4.0 * (luma[3] - luma[2]))
    y = eo.window_targets(np.array([0.0, 10, 20, 30, 40]), np.array([0.0, 0.1, 0.2, 0.3, 0.4]), 3)
    np.testing.assert_allclose(y, [[0.5, 0.5], [1.5, 1.5], [2.5, 2.5]])  # means of the first 2, scaled
    scores = eo.motion_scores(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]))
    assert scores["pearson"] == pytest.approx(1.0) and scores["mae"] == pytest.approx(2.0)
