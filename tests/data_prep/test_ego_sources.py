"""Ego motion from converter sources: dashcam CSV time series and BDD100K info files (GPS)."""

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.ego_sources import load_bdd_info, load_ego_csv
from drivesim.cli import main
from drivesim.data.clip_format import read_clip
from drivesim.utils.io import DriveSimInputError, read_json

H, W = 48, 64


def write_video(path: Path, seconds: float, fps: int = 30) -> None:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(int(seconds * fps) + 1):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), (5 * i) % 250, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# ------------------------------------------------------------------------ dashcam CSV
@pytest.fixture(scope="module")
def dashcam(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash")
    (root / "videos" / "a").mkdir(parents=True)
    for name in ("a/drive", "plain", "broken"):
        write_video(root / "videos" / f"{name}.mp4", 2.5)
    (root / "ego" / "a").mkdir(parents=True)
    t = np.arange(0.0, 1.61, 0.2)  # 5 Hz samples up to 1.6 s: speed 10 + 2t, yaw rate -0.05 t
    rows = "".join(f"{v:.1f},{10 + 2 * v:.3f},{-0.05 * v:.4f}\n" for v in t)
    (root / "ego" / "a" / "drive.csv").write_text("time,speed,yaw_rate\n" + rows)
    (root / "ego" / "broken.csv").write_text("time,speed,yaw_rate\n0.0,10,0\n0.2,fast,0\n")
    return root


def test_dashcam_csv_is_interpolated_to_the_frames(dashcam, tmp_path):
    out = tmp_path / "ds"
    code = main(["data", "videos", "--input", str(dashcam / "videos"), "--ego", str(dashcam / "ego"), "--out",
                 str(out), "--clip-seconds", "1", "--fps", "10", "--no-progress"])
    assert code == 1  # the broken CSV fails its video, the others convert
    failed = read_json(out / "conversion_report.json")["failed"]
    message = failed[str(dashcam / "videos" / "broken.mp4")]
    assert "broken.csv" in message and "line 3.speed" in message and "fast" in message
    first, second = read_clip(out / "a_drive_000"), read_clip(out / "a_drive_001")
    t = np.arange(10) / 10
    np.testing.assert_allclose(first.ego.speed, 10 + 2 * t, atol=1e-3)
    np.testing.assert_allclose(first.ego.yaw_rate, -0.05 * t, atol=1e-4)
    assert first.ego.known.all()
    # the second clip covers 1.0-1.9 s: the CSV ends at 1.6 s, the rest is unknown
    assert second.ego.known.tolist() == [True] * 7 + [False] * 3
    np.testing.assert_allclose(second.ego.speed[:7], 10 + 2 * (1.0 + t[:7]), atol=1e-3)
    assert not read_clip(out / "plain_000").has_ego  # no CSV for this video


def test_dashcam_csv_errors_name_file_line_and_value(tmp_path):
    path = tmp_path / "e.csv"
    for text, field in [("t,speed,yaw_rate\n0,1,0\n", "header"),
                        ("time,speed,yaw_rate\n0,1,0\n0,2,0\n", "line 3.time"),
                        ("time,speed,yaw_rate\n0,1,0\n1,-3,0\n", "line 3.speed"),
                        ("time,speed,yaw_rate\n0,1,9\n", "line 2.yaw_rate"),
                        ("time,speed,yaw_rate\n0,1,\n", "line 2.yaw_rate")]:
        path.write_text(text)
        with pytest.raises(DriveSimInputError) as err:
            load_ego_csv(path)
        assert "e.csv" in str(err.value) and f"'{field}'" in str(err.value), str(err.value)


# ------------------------------------------------------------------------ BDD100K info
def mot_labels(video: str, seconds: float) -> list[dict]:
    return [{"name": f"{video}-{k + 1:07d}.jpg", "videoName": video, "frameIndex": k,
             "labels": [{"id": "1", "category": "car", "box2d": {"x1": 10, "y1": 10, "x2": 30, "y2": 30}}]}
            for k in range(int(seconds * 5) + 1)]


def info_file(start_ms: int) -> dict:
    """GPS fixes at 1 Hz: speed 5 + 2t m/s, course 90 + 5t degrees (turning right: -5 deg/s);
    one invalid fix (speed -1), as phones record them."""
    fixes = [{"timestamp": start_ms + 1000 * k, "latitude": 37.0, "longitude": -122.0, "speed": 5.0 + 2 * k,
              "course": 90.0 + 5 * k, "accuracy": 5.0} for k in range(4)]
    fixes.insert(2, {"timestamp": start_ms + 1500, "speed": -1.0, "course": -1.0})
    return {"rideID": "r", "startTime": start_ms, "endTime": start_ms + 40000, "locations": fixes,
            "gyro": [{"timestamp": start_ms, "x": 0.1, "y": 0.0, "z": 0.0}]}


@pytest.fixture(scope="module")
def bdd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bdd")
    for sub in ("labels/train", "videos", "info/100k/train"):
        (root / sub).mkdir(parents=True)
    for video in ("gps-0001", "nogps-0002", "badinfo-0003"):
        (root / "labels" / "train" / f"{video}.json").write_text(json.dumps(mot_labels(video, 3.0)))
        write_video(root / "videos" / f"{video}.mov", 3.0)
    (root / "info" / "100k" / "train" / "gps-0001.json").write_text(json.dumps(info_file(1_500_000_000_000)))
    broken = info_file(0)
    del broken["startTime"]
    (root / "info" / "100k" / "train" / "badinfo-0003.json").write_text(json.dumps(broken))
    return root


def test_bdd_info_gives_speed_and_course_rate(bdd, tmp_path):
    out = tmp_path / "ds"
    code = main(["data", "bdd100k", "--labels", str(bdd / "labels"), "--videos", str(bdd / "videos"),
                 "--info", str(bdd / "info"), "--out", str(out), "--fps", "5", "--no-progress"])
    assert code == 1
    failed = read_json(out / "conversion_report.json")["failed"]
    assert any("badinfo-0003.json" in m and "startTime" in m for m in failed.values()), failed
    clip = read_clip(out / "gps-0001")
    t = np.arange(clip.num_frames) / 5.0  # 0 .. 3 s; the fixes span 0 .. 3 s
    assert clip.ego.known.all()
    np.testing.assert_allclose(clip.ego.speed, 5 + 2 * t, atol=1e-3)
    np.testing.assert_allclose(clip.ego.yaw_rate, -math.radians(5.0), atol=1e-4)  # clockwise course: right turn
    assert not read_clip(out / "nogps-0002").has_ego


def test_bdd_info_drops_invalid_and_implausible_fixes(tmp_path):
    doc = info_file(0)
    doc["locations"].append({"timestamp": 4000, "speed": 300.0, "course": 110.0})  # a GPS glitch
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    t, speed, _ = load_bdd_info(path)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0] and speed.max() == 11.0
    doc["locations"][0]["speed"] = "fast"
    path.write_text(json.dumps(doc))
    with pytest.raises(DriveSimInputError, match=r"v\.json.*locations\[0\]\.speed.*fast"):
        load_bdd_info(path)
