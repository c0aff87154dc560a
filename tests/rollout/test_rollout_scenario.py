"""Scenario schema validation, timeline resampling, end policies and the clip source."""

import json

import numpy as np
import pytest

from drivesim.data.clip_format import ClipWriter
from drivesim.data.labels import CROWD_NAMES, NIGHT
from drivesim.rollout.scenario import SCHEMA, JsonScenario, NoBoxScenario, load_scenario
from drivesim.utils.io import DriveSimInputError


def doc(n=4, fps=2.0, **extra):
    frames = [{"boxes": [[0.1, 0.2, 0.3 + 0.01 * i, 0.4]], "classes": ["car"], "track_ids": [7]}
              for i in range(n)]
    return {"schema": SCHEMA, "fps": fps, "daynight": "night", "crowd": "quiet",
            "frames": frames, **extra}


def write(tmp_path, obj, name="s.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_json_scenario_round_trip_and_resampling(tmp_path):
    sc = JsonScenario(write(tmp_path, doc(n=4, fps=2.0)))
    assert (sc.daynight, sc.crowd, sc.length, sc.max_boxes) == (NIGHT, 0, 4, 1)
    # 8 frames at 4 fps sample-and-hold the 2 fps timeline: source frames 0,0,1,1,2,2,3,3
    f = sc.frames_at(range(8), rate=4.0)
    assert f.boxes.shape == (8, 1, 4) and f.classes.tolist() == [[1]] * 8
    np.testing.assert_allclose(f.boxes[:, 0, 2], [0.3, 0.3, 0.31, 0.31, 0.32, 0.32, 0.33, 0.33],
                               rtol=1e-6)
    assert f.track_ids[:, 0].tolist() == [7] * 8


def test_crowd_computed_when_absent(tmp_path):
    d = doc(n=3)
    del d["crowd"]
    for fr in d["frames"]:  # 3 cars per frame -> moderate (edges 2, 5)
        fr.update(boxes=[[0.1, 0.1, 0.2, 0.2]] * 3, classes=["car", "truck", "bus"], track_ids=[1, 2, 3])
    assert CROWD_NAMES[JsonScenario(write(tmp_path, d)).crowd] == "moderate"


@pytest.mark.parametrize("mutate,field,value", [
    (lambda d: d.update(schema="drivesim.scenario/2"), "schema", "drivesim.scenario/2"),
    (lambda d: d.pop("schema"), "schema", None),
    (lambda d: d.update(fps=0), "fps", "0"),
    (lambda d: d.update(daynight="dusk"), "daynight", "dusk"),
    (lambda d: d.update(crowd="packed"), "crowd", "packed"),
    (lambda d: d.update(end="loop"), "end", "loop"),
    (lambda d: d.update(frames=[]), "frames", None),
    (lambda d: d["frames"][2].update(boxes=[[0.1, float("nan"), 0.3, 0.4]]), "frames[2].boxes[0]", "nan"),
    (lambda d: d["frames"][1].update(boxes=[[0.1, 0.2, 1.3, 0.4]]), "frames[1].boxes[0]", "1.3"),
    (lambda d: d["frames"][1].update(boxes=[[0.5, 0.2, 0.3, 0.4]]), "frames[1].boxes[0]", "0.5"),
    (lambda d: d["frames"][3].update(boxes=[[0.1, 0.2]]), "frames[3].boxes[0]", "0.1"),
    (lambda d: d["frames"][0].update(classes=["spaceship"]), "frames[0].classes[0]", "spaceship"),
    (lambda d: d["frames"][0].update(classes=[0]), "frames[0].classes[0]", "0"),
    (lambda d: d["frames"][0].update(track_ids=[0]), "frames[0].track_ids[0]", "0"),
    (lambda d: d["frames"][0].update(track_ids=[1, 2]), "frames[0]", "[1, 1, 2]"),
])
def test_bad_scenarios_name_file_field_value(tmp_path, mutate, field, value):
    d = doc()
    mutate(d)
    path = write(tmp_path, d)
    with pytest.raises(DriveSimInputError) as info:
        JsonScenario(path)
    msg = str(info.value)
    assert str(path) in msg and f"field '{field}'" in msg
    if value is not None:
        assert value in msg


def test_malformed_json_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"schema": "drivesim.scenario/1",\n "fps": }')
    with pytest.raises(DriveSimInputError, match="line 2"):
        JsonScenario(p)


def test_short_scenario_fails_or_holds(tmp_path):
    path = write(tmp_path, doc(n=4, fps=2.0))  # 2 seconds of boxes
    sc = JsonScenario(path)
    sc.check_duration(num_frames=8, rate=4.0)  # exactly 2 s: fine
    with pytest.raises(DriveSimInputError) as info:
        sc.check_duration(num_frames=9, rate=4.0)
    assert "field 'frames'" in str(info.value) and "hold" in str(info.value)
    with pytest.raises(DriveSimInputError):
        sc.frames_at([8], rate=4.0)
    held = JsonScenario(path, end="hold")
    held.check_duration(num_frames=1000, rate=4.0)
    last = held.frames_at([999], rate=4.0)
    np.testing.assert_array_equal(last.boxes, held.frames_at([7], rate=4.0).boxes)
    # the policy can also come from the file
    assert JsonScenario(write(tmp_path, doc(end="hold"), "h.json")).end == "hold"


def test_no_box_scenario_and_spec_parsing(tmp_path):
    sc = load_scenario("none", fps=10.0, daynight="night")
    assert isinstance(sc, NoBoxScenario) and not sc.has_boxes and sc.daynight == NIGHT
    assert sc.frames_at(range(3), 10.0).classes.sum() == 0
    with pytest.raises(DriveSimInputError, match="--daynight"):
        load_scenario("none", fps=10.0, daynight="evening")
    with pytest.raises(DriveSimInputError, match="synthetic:SEED"):
        load_scenario("synthetic:abc", fps=10.0)
    with pytest.raises(DriveSimInputError, match="file not found"):
        load_scenario(str(tmp_path / "missing.json"), fps=10.0)


def test_clip_scenario_reads_recorded_boxes(tmp_path):
    clip_dir = tmp_path / "clip"
    with ClipWriter(clip_dir, fps=4.0, height=16, width=32, labels={"daynight": "night", "crowd": "quiet"}) as w:
        for i in range(6):
            w.add_frame(np.zeros((16, 32, 3), np.uint8), boxes=np.array([[0.1 * i, 0.1, 0.1 * i + 0.1, 0.5]]),
                        classes=np.array([2]), track_ids=np.array([5]))
    sc = load_scenario(f"clip:{clip_dir}", fps=2.0, max_boxes=3)
    assert (sc.fps, sc.length, sc.daynight, sc.crowd) == (4.0, 6, NIGHT, 0)
    f = sc.frames_at(range(3), rate=2.0)  # every second clip frame
    np.testing.assert_allclose(f.boxes[:, 0, 0], [0.0, 0.2, 0.4], atol=1e-6)
    assert f.classes[:, 0].tolist() == [2, 2, 2] and f.classes[:, 1:].sum() == 0
    with pytest.raises(DriveSimInputError, match="frames"):
        sc.check_duration(num_frames=4, rate=2.0)  # 2 s > 1.5 s of clip
    assert sc.describe()["kind"] == "clip"


def test_synthetic_scenario_is_lazy_deterministic_and_rewinds():
    from drivesim.rollout.scenario import SyntheticScenario

    sc = SyntheticScenario(3, fps=4.0, night=True, crowd="crowded", max_boxes=6, cache=8,
                           crowd_probe_s=3.0)
    assert sc.daynight == NIGHT and sc.has_boxes and sc.length is None
    ahead = sc.frames_at(range(40), rate=4.0)
    assert len(sc._cache) <= 8  # only a bounded window of world frames is kept
    assert ahead.boxes.shape == (40, 6, 4)
    real = ahead.classes > 0
    assert real.any() and (ahead.boxes[real] >= 0).all() and (ahead.boxes[real] <= 1).all()
    assert (ahead.track_ids[real] >= 1).all()
    again = sc.frames_at(range(5, 10), rate=4.0)  # behind the cache: the world is re-stepped
    np.testing.assert_array_equal(again.boxes, ahead.boxes[5:10])
    fresh = SyntheticScenario(3, fps=4.0, night=True, crowd="crowded", max_boxes=6, crowd_probe_s=3.0)
    np.testing.assert_array_equal(fresh.frames_at(range(40), rate=4.0).track_ids, ahead.track_ids)
    # at half the rate every second world frame is taken
    np.testing.assert_array_equal(fresh.frames_at(range(0, 20), rate=2.0).boxes, ahead.boxes[::2])


def test_synthetic_scenario_traffic_range_reaches_the_world_and_the_state():
    near = load_scenario("synthetic:3", fps=4.0, crowd="crowded", traffic_range=60.0, max_boxes=16)
    far = load_scenario("synthetic:3", fps=4.0, crowd="crowded", max_boxes=16)
    assert near.describe()["traffic_range"] == 60.0 and far.describe()["traffic_range"] == 185.0

    def mean_area(sc):
        f = sc.frames_at(range(60), rate=4.0)
        real = f.classes > 0
        wh = (f.boxes[..., 2] - f.boxes[..., 0]) * (f.boxes[..., 3] - f.boxes[..., 1])
        return float(wh[real].mean())

    assert mean_area(near) > 1.5 * mean_area(far)  # the same traffic, closer to the camera


def test_preset_demo_resolves_run_folder_models(tmp_path):
    import argparse

    from drivesim.rollout.cli import add_arguments, model_files, rollout_targets

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--preset", "demo", "--runs", str(tmp_path)])
    with pytest.raises(DriveSimInputError, match="run folder not found"):
        model_files(args)
    (tmp_path / "demo").mkdir()
    with pytest.raises(DriveSimInputError, match="no autoencoder model"):
        model_files(args)
    for sub, suffix in (("autoencoder", ".safetensors"), ("autoencoder_temporal", ".safetensors"),
                        ("video_ldm", ".pt")):
        (tmp_path / "demo" / sub).mkdir(parents=True)
        (tmp_path / "demo" / sub / f"model{suffix}").write_bytes(b"x")
    args = parser.parse_args(["--preset", "demo", "--runs", str(tmp_path), "--video-ckpt", "v.pt"])
    files = model_files(args)
    assert files["video"] == "v.pt"  # explicit arguments win
    # the temporal decoder is preferred over the image-stage autoencoder
    assert files["autoencoder"] == tmp_path / "demo" / "autoencoder_temporal" / "model.safetensors"
    assert "image" not in files
    assert rollout_targets(args) == [("day", tmp_path / "rollouts" / "demo" / "day"),
                                     ("night", tmp_path / "rollouts" / "demo" / "night")]


# ---------------------------------------------------------------- ego tracks
def test_json_ego_track_is_read_at_the_video_rate_and_follows_the_end_policy(tmp_path):
    ego = {"times": [0.0, 1.0, 2.0], "speed": [10.0, 12.0, 0.0], "yaw_rate": [0.0, 0.1, 0.1]}
    sc = JsonScenario(write(tmp_path, doc(n=5, fps=2.0, ego=ego)))  # 2.5 s of boxes, 2 s of ego track
    motion = sc.ego_at(range(5), rate=2.0)  # t = 0, 0.5, 1, 1.5, 2: linear between the knots
    np.testing.assert_allclose(motion.speed, [10.0, 11.0, 12.0, 6.0, 0.0])
    np.testing.assert_allclose(motion.yaw_rate, [0.0, 0.05, 0.1, 0.1, 0.1], atol=1e-7)
    assert motion.known.all() and motion.speed.dtype == np.float32
    with pytest.raises(DriveSimInputError) as info:
        sc.check_duration(num_frames=10, rate=4.0)  # 2.25 s > 2 s of track
    assert "field 'ego.times'" in str(info.value)
    held = JsonScenario(write(tmp_path, doc(n=8, fps=2.0, ego=ego, end="hold"), "h.json"))
    assert held.ego_at([40], rate=4.0).speed.tolist() == [0.0]
    plain = JsonScenario(write(tmp_path, doc(), "p.json"))
    assert not plain.ego_at(range(3), rate=2.0).known.any() and "ego" not in plain.describe()


def test_json_waypoints_on_a_circle_become_speed_and_yaw_rate(tmp_path):
    v, radius = 12.0, 60.0  # constant speed on a circle: yaw rate v / R = 0.2 rad/s
    t = np.arange(0.0, 6.01, 0.25)
    pts = [[float(s), radius * float(np.sin(v * s / radius)), radius * float(1 - np.cos(v * s / radius))] for s in t]
    sc = JsonScenario(write(tmp_path, doc(n=12, fps=2.0, ego={"waypoints": pts})))
    motion = sc.ego_at(range(12), rate=2.0)
    np.testing.assert_allclose(motion.speed, v, rtol=5e-3)
    np.testing.assert_allclose(motion.yaw_rate, v / radius, rtol=5e-3)


@pytest.mark.parametrize("ego,field,value", [
    ({"times": [0, 1], "speed": [3, -1], "yaw_rate": [0, 0]}, "ego[1].speed", "-1"),
    ({"times": [0, 1], "speed": [3, 1], "yaw_rate": [0, float("nan")]}, "ego.yaw_rate[1]", "nan"),
    ({"times": [1, 0], "speed": [3, 1], "yaw_rate": [0, 0]}, "ego.times[1]", "0"),
    ({"speed": [3, 1]}, "ego", "speed"),
    ({"waypoints": [[0, 0, 0], [0.5, 90, 0]]}, "ego.waypoints[0] (derived).speed", "180"),
])
def test_bad_ego_sections_name_file_field_value(tmp_path, ego, field, value):
    path = write(tmp_path, doc(ego=ego))
    with pytest.raises(DriveSimInputError) as info:
        JsonScenario(path)
    msg = str(info.value)
    assert str(path) in msg and f"field '{field}'" in msg and value in msg


def test_synthetic_scenario_with_an_ego_preset_drives_the_world(tmp_path):
    stop = load_scenario("synthetic:3:stop_and_go", fps=4.0, crowd="quiet")
    plain = load_scenario("synthetic:3", fps=4.0, crowd="quiet")
    motion = stop.ego_at(range(100), rate=4.0)  # 25 s: 6 s cruise, brake, 4 s standing, go
    assert motion.known.all() and motion.speed.max() > 11.0 and (motion.speed == 0).sum() >= 15
    np.testing.assert_allclose(motion.speed[:20], 12.0, atol=0.1)  # the command, where nothing is ahead
    base = plain.ego_at(range(100), rate=4.0)
    assert base.known.all() and base.speed.min() > 5.0  # the world's own driver never stops here
    assert stop.describe()["ego"]["name"] == "stop_and_go" and "ego" not in plain.describe()
    assert not np.array_equal(stop.frames_at(range(60, 80), 4.0).boxes, plain.frames_at(range(60, 80), 4.0).boxes)
    track = tmp_path / "ego.json"
    track.write_text(json.dumps({"ego": {"times": [0, 5], "speed": [8, 8], "yaw_rate": [0.1, 0.1]}}))
    curve = load_scenario("synthetic:3", fps=4.0, crowd="quiet", ego=str(track))
    np.testing.assert_allclose(curve.ego_at(range(0, 40, 4), rate=4.0).yaw_rate, 0.1, atol=0.01)


def test_none_and_clip_scenarios_carry_ego_motion(tmp_path):
    none = load_scenario("none:curve", fps=10.0)
    motion = none.ego_at(range(0, 200, 10), rate=10.0)
    np.testing.assert_allclose(motion.speed, 14.0)
    assert motion.known.all() and motion.yaw_rate.max() == pytest.approx(0.15)
    assert not load_scenario("none", fps=10.0).ego_at(range(3), 10.0).known.any()
    clip_dir = tmp_path / "clip"
    with ClipWriter(clip_dir, fps=4.0, height=16, width=32) as w:
        for i in range(6):
            w.add_frame(np.zeros((16, 32, 3), np.uint8), ego_speed=float(i), ego_yaw_rate=0.01 * i)
    rec = load_scenario(f"clip:{clip_dir}", fps=2.0).ego_at(range(3), rate=2.0)  # every second frame
    assert rec.speed.tolist() == [0.0, 2.0, 4.0] and rec.known.all()
    for spec, ego, field in (("synthetic:1:spin", None, "ego"), ("synthetic:1:cruise", "brake", "--ego"),
                             (f"clip:{clip_dir}", "cruise", "--ego")):
        with pytest.raises(DriveSimInputError, match=field):
            load_scenario(spec, fps=10.0, ego=ego)
