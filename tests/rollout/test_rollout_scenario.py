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


def test_preset_demo_resolves_checkpoints(tmp_path):
    import argparse

    from drivesim.rollout.cli import add_arguments, resolve_preset

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--preset", "demo", "--runs", str(tmp_path)])
    with pytest.raises(DriveSimInputError, match="make demo"):
        resolve_preset(args)
    for sub, suffix in (("autoencoder_temporal", ".safetensors"), ("video_ldm", ".pt")):
        (tmp_path / "demo" / sub).mkdir(parents=True)
        (tmp_path / "demo" / sub / f"model{suffix}").write_bytes(b"x")
    args = parser.parse_args(["--preset", "demo", "--runs", str(tmp_path), "--video-ckpt", "v.pt"])
    resolve_preset(args)
    assert args.video_ckpt == "v.pt"  # explicit arguments win
    assert args.ae_ckpt == str(tmp_path / "demo" / "autoencoder_temporal" / "model.safetensors")
    assert args.image_ckpt is None and args.daynight == "both"
    assert args.out == str(tmp_path / "rollouts" / "demo")
