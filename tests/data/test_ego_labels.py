"""Ego motion labels in the clip format: round trip, old clips, validation, trajectory maths."""

import json
import math

import numpy as np
import pytest

from drivesim.data.clip_format import ClipWriter, read_clip
from drivesim.data.ego import (
    EgoSeries,
    EgoTrack,
    motion_from_poses,
    parse_track,
    track_from_waypoints,
)
from drivesim.utils.io import DriveSimInputError


def write(path, ego):
    """A 4-frame png clip; ``ego[i]`` is ``(speed, yaw_rate)`` or None (unknown)."""
    with ClipWriter(path, fps=10.0, height=16, width=24, frames_format="png") as w:
        for motion in ego:
            kw = {} if motion is None else dict(ego_speed=motion[0], ego_yaw_rate=motion[1])
            w.add_frame(np.zeros((16, 24, 3), np.uint8), **kw)
    return path


def test_round_trip_with_unknown_frames(tmp_path):
    clip = read_clip(write(tmp_path / "c", [(12.5, 0.05), None, (0.0, -0.3), (31.25, 0.0)]))
    ego = clip.ego_arrays([0, 1, 2, 3])
    np.testing.assert_allclose(ego.speed, [12.5, 0.0, 0.0, 31.25])
    np.testing.assert_allclose(ego.yaw_rate, [0.05, 0.0, -0.3, 0.0])
    assert ego.known.tolist() == [True, False, True, True] and clip.has_ego
    assert ego.speed.dtype == np.float32 and ego.known.dtype == bool
    rows = json.loads((tmp_path / "c" / "clip.json").read_text())["annotations"]
    assert rows[0]["ego"] == {"speed": 12.5, "yaw_rate": 0.05} and "ego" not in rows[1]


def test_clips_without_ego_read_as_unknown(tmp_path):
    clip = read_clip(write(tmp_path / "c", [None] * 4))
    assert not clip.has_ego and clip.ego.known.sum() == 0 and len(clip.ego) == 4
    meta = json.loads((tmp_path / "c" / "clip.json").read_text())
    meta["annotations"][2]["ego"] = None  # an explicit null is unknown too
    (tmp_path / "c" / "clip.json").write_text(json.dumps(meta))
    assert not read_clip(tmp_path / "c").has_ego


@pytest.mark.parametrize("ego,field,value", [
    ({"speed": float("nan"), "yaw_rate": 0.0}, "annotations[1].ego.speed", "nan"),
    ({"speed": -1.0, "yaw_rate": 0.0}, "annotations[1].ego.speed", "-1.0"),
    ({"speed": 95.0, "yaw_rate": 0.0}, "annotations[1].ego.speed", "95.0"),
    ({"speed": 10.0, "yaw_rate": 4.0}, "annotations[1].ego.yaw_rate", "4.0"),
    ({"speed": "fast", "yaw_rate": 0.0}, "annotations[1].ego.speed", "fast"),
    ({"speed": 10.0}, "annotations[1].ego", "speed"),
    ([10.0, 0.0], "annotations[1].ego", "10.0"),
])
def test_bad_ego_names_file_field_and_value(tmp_path, ego, field, value):
    clip_dir = write(tmp_path / "c", [(1.0, 0.0)] * 4)
    meta = json.loads((clip_dir / "clip.json").read_text())
    meta["annotations"][1]["ego"] = ego
    (clip_dir / "clip.json").write_text(json.dumps(meta))
    with pytest.raises(DriveSimInputError) as err:
        read_clip(clip_dir)
    msg = str(err.value)
    assert "clip.json" in msg and f"'{field}'" in msg and value in msg


def test_writer_rejects_half_or_implausible_ego(tmp_path):
    with pytest.raises(DriveSimInputError, match=r"annotations\[0\]\.ego.*both"):
        write(tmp_path / "a", [(3.0, None)])
    with pytest.raises(DriveSimInputError, match=r"annotations\[1\]\.ego\.speed.*-2"):
        write(tmp_path / "b", [(3.0, 0.0), (-2.0, 0.0)])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ego_series_zeroes_unknown_values():
    s = EgoSeries.of([3.0, 4.0], [0.1, 0.2], [True, False])
    assert s.speed.tolist() == [3.0, 0.0] and s.yaw_rate.tolist() == pytest.approx([0.1, 0.0])
    assert s.take([1, 0, 1]).known.tolist() == [False, True, False]


@pytest.mark.parametrize("v,radius,dt", [(15.0, 120.0, 0.1), (5.0, 20.0, 0.05), (25.0, -300.0, 0.2)])
def test_waypoints_on_a_circle_give_speed_and_yaw_rate(v, radius, dt):
    """Constant speed v on a circle of radius R: speed v and yaw rate v / R (negative R: clockwise)."""
    t = np.arange(0.0, 8.0, dt)
    phase = v * t / radius  # the heading; x = R sin(phase), y = R (1 - cos(phase)) for either sign of R
    xy = np.stack([radius * np.sin(phase), radius * (1 - np.cos(phase))], axis=1)
    speed, yaw = track_from_waypoints(t, xy)
    np.testing.assert_allclose(speed, v, rtol=2e-3)
    np.testing.assert_allclose(yaw, v / radius, rtol=2e-3)


def test_waypoints_standing_still_hold_the_heading():
    t = np.arange(10) * 0.5
    x = np.array([0, 5, 10, 15, 15, 15, 15, 20, 25, 30], float)  # stops for 1.5 s on a straight
    speed, yaw = track_from_waypoints(t, np.stack([x, np.zeros(10)], 1))
    assert speed[4:6].max() < 1e-9 and np.abs(yaw).max() < 1e-9


def test_poses_give_body_yaw_rate():
    t = np.linspace(0, 2, 21)
    speed, yaw = motion_from_poses(t, np.stack([10 * t, 0 * t], 1), 0.2 * t)
    np.testing.assert_allclose(speed, 10.0) and np.testing.assert_allclose(yaw, 0.2)


def test_parse_track_and_its_errors():
    tr = parse_track({"times": [0, 2, 4], "speed": [10, 0, 0], "yaw_rate": [0, 0, 0.1]}, path="s.json")
    speed, yaw = tr.at(np.array([1.0, 3.0, 9.0]))
    assert speed.tolist() == [5.0, 0.0, 0.0] and yaw.tolist() == pytest.approx([0.0, 0.05, 0.1])
    cyc = EgoTrack((0.0, 2.0), (0.0, 2.0), (0.0, 0.0), cycle=True)
    assert cyc.at(np.array([1.0, 3.0]))[0].tolist() == [1.0, 1.0]
    circle = [[0.1 * k, 30 * math.sin(0.01 * k), 30 * (1 - math.cos(0.01 * k))] for k in range(50)]
    wp = parse_track({"waypoints": circle}, path="s.json")
    np.testing.assert_allclose(wp.at(np.array([2.0]))[1], 0.1, rtol=1e-3)
    for raw, field in [({"times": [0, 1], "speed": [1, 2]}, "ego"),
                       ({"times": [0, 0], "speed": [1, 2], "yaw_rate": [0, 0]}, "ego.times[1]"),
                       ({"times": [0, 1], "speed": [1, -2], "yaw_rate": [0, 0]}, "ego[1].speed"),
                       ({"times": [0, 1], "speed": [1, 2], "yaw_rate": [0, 9]}, "ego[1].yaw_rate"),
                       ({"waypoints": [[0, 0, 0], [1, 200, 0]]}, "ego.waypoints[0] (derived).speed"),
                       ({"waypoints": [[0, 0, 0], [1, 1]]}, "ego.waypoints[1]")]:
        with pytest.raises(DriveSimInputError) as err:
            parse_track(raw, path="s.json")
        assert "s.json" in str(err.value) and f"'{field}'" in str(err.value), str(err.value)
