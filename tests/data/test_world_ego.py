"""The synthetic world's ego: exact motion labels, commanded tracks (stop, curve), traffic reaction."""

from __future__ import annotations

import numpy as np
import pytest

from drivesim.data.ego import EgoTrack
from drivesim.data.ego_presets import PRESETS, preset, program_track
from drivesim.data.world import DrivingWorld, WorldConfig
from drivesim.utils.io import DriveSimInputError

SMALL = dict(height=32, width=64)


def drive(cfg: WorldConfig, n: int) -> list:
    world = DrivingWorld(cfg)
    return [world.step(render=False) for _ in range(n)]


def pose_motion(frames: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite differences of the ego poses: speed, yaw rate [n - 1] and their frame pairs' times."""
    poses = np.array([f.ego_pose for f in frames])
    t = np.array([f.time for f in frames])
    yaw = np.unwrap(np.arctan2(poses[:, 1, 0], poses[:, 0, 0]))
    dt = np.diff(t)
    return np.linalg.norm(np.diff(poses[:, :2, 3], axis=0), axis=1) / dt, np.diff(yaw) / dt, t[:-1]


@pytest.mark.parametrize("track", [None, "curve", "stop_and_go"])
def test_ego_labels_are_the_derivative_of_the_ego_pose(track):
    """At 100 fps (5 frames per 20 Hz tick) a pair of frames inside one tick interval: the pose
    difference quotient equals the labels there (the state is linear in time within a tick; the
    road's curvature steps every metre, so a pair across such a step differs by a few mm/s)."""
    cfg = WorldConfig(seed=1, fps=100.0, num_vehicles=12, traffic_range=60.0,  # the ego changes lane at once
                      ego_track=None if track is None else preset(track), **SMALL)
    world = DrivingWorld(cfg)
    lane = float(world.traffic.d_target[0])
    frames = [world.step(render=False) for _ in range(500)]
    assert world.traffic.d_target[0] != lane  # the lateral motion is part of the check
    speed, yaw, _ = pose_motion(frames)
    inside = np.array([k % 5 != 4 for k in range(len(frames) - 1)])  # frame k and k + 1 share a tick
    label_speed = np.array([f.ego_speed for f in frames[:-1]])
    label_yaw = np.array([f.ego_yaw_rate for f in frames[:-1]])
    np.testing.assert_allclose(speed[inside], label_speed[inside], atol=1e-2)
    np.testing.assert_allclose(yaw[inside], label_yaw[inside], atol=5e-3)
    assert np.abs(speed - label_speed)[inside].mean() < 1e-3 and np.abs(yaw - label_yaw)[inside].mean() < 2e-4
    assert label_speed.max() > 5.0


def test_commanded_stop_brings_the_ego_to_rest():
    brake = preset("brake")  # 16 m/s for 4 s, then 3 m/s² to a standstill at 9.33 s, for good
    frames = drive(WorldConfig(seed=1, fps=10.0, num_vehicles=0, ego_track=brake, **SMALL), 140)
    t = np.array([f.time for f in frames])
    speed = np.array([f.ego_speed for f in frames])
    np.testing.assert_allclose(speed, brake.at(t)[0], atol=0.08)  # no leader: the command itself
    rest = t >= 9.4
    assert speed[rest].max() == 0.0 and max(abs(f.ego_yaw_rate) for f in frames[-40:]) == 0.0
    still = np.array([f.ego_pose for f in frames])[rest]
    assert np.array_equal(still[0], still[-1])  # the ego pose stops moving
    assert np.linalg.norm(frames[40].ego_pose[:2, 3] - frames[0].ego_pose[:2, 3]) > 60.0


def test_stopped_ego_sees_the_vehicles_ahead_drive_away_and_followers_stop():
    world = DrivingWorld(WorldConfig(seed=4, fps=10.0, num_vehicles=10, ego_track=preset("brake"), **SMALL))
    for _ in range(100):
        world.step(render=False)
    tr = world.traffic

    def ahead() -> dict[int, float]:
        fwd = tr.active & (tr.direction > 0) & ~tr.is_ped & (tr.s > tr.s[0])
        return {int(tr.track_id[i]): float(tr.s[i] - tr.s[0]) for i in np.flatnonzero(fwd) if i > 0}

    before, s_ego = ahead(), float(tr.s[0])
    for _ in range(40):
        world.step(render=False)
        same_lane = tr.active & (np.abs(tr.d - tr.d[0]) < 1.0) & (tr.direction > 0)
        gaps = np.abs(tr.s[same_lane] - tr.s[0])[1:] - 0.5 * (tr.length[same_lane][1:] + tr.length[0])
        assert (gaps > 0).all()  # nobody drives into the standing ego
    after = ahead()
    assert float(tr.s[0]) == s_ego and before
    moved = [after[i] - before[i] for i in before if i in after]
    assert moved and min(moved) > 10.0  # 4 s at their own speeds (or gone out of range)


def test_commanded_curve_turns_the_road_under_the_ego():
    curve = preset("curve")
    frames = drive(WorldConfig(seed=2, fps=10.0, num_vehicles=0, ego_track=curve, **SMALL), 300)
    t = np.array([f.time for f in frames])
    speed, yaw = curve.at(t)
    np.testing.assert_allclose([f.ego_yaw_rate for f in frames], yaw, atol=5e-3)
    np.testing.assert_allclose([f.ego_speed for f in frames], speed, atol=1e-2)
    heading = np.unwrap([np.arctan2(f.ego_pose[1, 0], f.ego_pose[0, 0]) for f in frames])
    assert heading.max() - heading.min() > 1.0  # a real turn (0.15 rad/s for 9 s each way)


def test_same_command_same_drive_and_skip_matches_stepping():
    cfg = WorldConfig(seed=5, fps=7.0, num_vehicles=8, ego_track=program_track(11), **SMALL)
    a, b = drive(cfg, 30), drive(cfg, 30)
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.ego_pose, fb.ego_pose) and np.array_equal(fa.boxes, fb.boxes)
        assert (fa.ego_speed, fa.ego_yaw_rate) == (fb.ego_speed, fb.ego_yaw_rate)
    skipped = DrivingWorld(cfg)
    skipped.skip(20)
    for fa in a[20:23]:
        fb = skipped.step(render=False)
        assert np.array_equal(fa.ego_pose, fb.ego_pose) and (fa.ego_speed, fa.ego_yaw_rate) == (
            fb.ego_speed, fb.ego_yaw_rate)
    plain = drive(WorldConfig(seed=5, fps=7.0, num_vehicles=8, **SMALL), 30)
    assert not np.allclose(plain[-1].ego_pose, a[-1].ego_pose)


def test_presets_are_plausible_and_world_config_checks_the_track():
    for name in PRESETS:
        track = preset(name)
        assert track.name == name and track.times[0] == 0.0
        if track.cycle:
            assert (track.speed[0], track.yaw_rate[0]) == (track.speed[-1], track.yaw_rate[-1])
    with pytest.raises(DriveSimInputError, match="ego_track"):
        WorldConfig(ego_track={"times": [0]})
    with pytest.raises(DriveSimInputError, match="spin"):
        preset("spin")
    with pytest.raises(DriveSimInputError, match=r"ego\.times\[1\]"):
        EgoTrack((0.0, 0.0), (1.0, 1.0), (0.0, 0.0))


def test_random_programs_stop_accelerate_and_turn():
    tracks = [program_track(seed) for seed in range(6)]
    for track in tracks:
        speed = np.asarray(track.speed)
        assert track.duration >= 60.0 and speed.min() >= 0.0
        turning = np.abs(track.yaw_rate) > 0
        assert (np.abs(track.yaw_rate)[turning] <= speed[turning] / 45.0 + 1e-5).all()  # radius >= 45 m (knots rounded to 1e-6)
    assert any(min(t.speed) == 0.0 for t in tracks) and any(max(np.abs(t.yaw_rate)) > 0.05 for t in tracks)
    assert program_track(3) == program_track(3) and program_track(3) != program_track(4)


def test_fast_command_in_dense_traffic_never_drives_into_a_leader():
    fast = EgoTrack((0.0, 1.0), (28.0, 28.0), (0.0, 0.0), cycle=True, name="fast")
    world = DrivingWorld(WorldConfig(seed=6, fps=5.0, num_vehicles=14, traffic_range=60.0, ego_track=fast, **SMALL))
    tr, held_back = world.traffic, 0
    for _ in range(300):  # 60 s
        f = world.step(render=False)
        ahead = tr.active & ~tr.is_ped & (tr.direction > 0) & (np.abs(tr.d - tr.d[0]) < 1.75) & (tr.s > tr.s[0])
        ahead[0] = False
        if ahead.any():
            gaps = tr.s[ahead] - tr.s[0] - 0.5 * (tr.length[ahead] + tr.length[0])
            assert gaps.min() > 0.0, gaps.min()
        held_back += f.ego_speed < 27.0
    assert held_back > 0  # the cap did act: the command was not followed into a leader
