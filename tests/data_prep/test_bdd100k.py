"""BDD100K MOT labels + videos/images -> clips, on a fixture generated in the BDD100K format.

Coloured rectangles move at constant velocity on a 30 fps video; the MOT labels give their
boxes every 6th video frame (5 Hz), exactly as BDD100K does. Because motion is linear,
per-track interpolation must recover the box at every 30 fps frame, and the rectangle found
in the converted pixels must sit where the converted box says (labels and video in sync).
"""

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from data_prep.bdd100k_to_clips import Track, boxes_at, load_mot_labels
from drivesim.cli import main
from drivesim.data.clip_format import read_clip, read_manifest
from drivesim.data.labels import CLASS_IDS
from drivesim.utils.io import DriveSimInputError, read_json

H, W, FPS, SECONDS = 180, 320, 30, 3.0
# track id, category, colour, box at t=0 (x1, y1, x2, y2), velocity px/s, (t_start, t_end)
OBJECTS = (
    ("00000001", "car", (255, 0, 0), (20, 60, 80, 100), (30, 5), (0.0, 3.0)),
    ("00000002", "pedestrian", (0, 255, 0), (200, 40, 215, 90), (-20, 0), (0.0, 3.0)),
    ("00000003", "bus", (0, 0, 255), (120, 110, 190, 160), (10, -6), (1.0, 3.0)),
    ("00000004", "traffic sign", (255, 255, 0), (280, 10, 300, 30), (0, 0), (0.0, 3.0)),
)


def box_at(obj, t: float) -> np.ndarray | None:
    _, _, _, b0, (vx, vy), (ta, tb) = obj
    if not ta <= t <= tb + 1e-9:
        return None
    return np.array(b0, float) + t * np.array([vx, vy, vx, vy], float)


def draw(t: float) -> np.ndarray:
    img = np.full((H, W, 3), 40, np.uint8)
    for obj in OBJECTS:
        b = box_at(obj, t)
        if b is not None:
            x1, y1, x2, y2 = np.round(b).astype(int)
            img[y1:y2, x1:x2] = obj[2]
    return img


def mot_frames(video: str, attributes: dict | None) -> list[dict]:
    frames = []
    for k in range(int(SECONDS * 5) + 1):
        t = k / 5
        labels = [{"id": o[0], "category": o[1], "attributes": {"occluded": False},
                   "box2d": dict(zip(("x1", "y1", "x2", "y2"), box_at(o, t).tolist()))}
                  for o in OBJECTS if box_at(o, t) is not None]
        frame = {"name": f"{video}-{k + 1:07d}.jpg", "videoName": video, "frameIndex": k, "labels": labels}
        if attributes:
            frame["attributes"] = attributes
        frames.append(frame)
    return frames


def write_video(path: Path) -> None:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "12"}
        for i in range(int(SECONDS * FPS) + 1):
            frame = av.VideoFrame.from_ndarray(draw(i / FPS), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def bdd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bdd100k")
    labels = root / "labels" / "box_track_20"
    for split in ("train", "val"):
        (labels / split).mkdir(parents=True)
    (root / "videos").mkdir()
    night = {"timeofday": "night", "weather": "rainy", "scene": "city street"}
    (labels / "train" / "aaaa-0001.json").write_text(json.dumps(mot_frames("aaaa-0001", night)))
    (labels / "val" / "bbbb-0002.json").write_text(json.dumps(mot_frames("bbbb-0002", None)))
    broken = mot_frames("cccc-0003", None)
    del broken[2]["labels"][0]["box2d"]["x2"]
    (labels / "train" / "cccc-0003.json").write_text(json.dumps(broken))
    (labels / "train" / "dddd-0004.json").write_text(json.dumps(mot_frames("dddd-0004", None)))
    for video in ("aaaa-0001", "bbbb-0002", "cccc-0003"):
        write_video(root / "videos" / f"{video}.mov")
    (root / "videos" / "dddd-0004.mov").write_bytes(b"not a video at all" * 50)
    images = root / "images" / "aaaa-0001"
    images.mkdir(parents=True)
    for frame in mot_frames("aaaa-0001", None):
        cv2.imwrite(str(images / frame["name"]), cv2.cvtColor(draw(frame["frameIndex"] / 5), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 98])
    (root / "det_train.json").write_text(json.dumps([
        {"name": "bbbb-0002.jpg", "attributes": {"timeofday": "dawn/dusk", "weather": "clear"}}]))
    return root


@pytest.fixture(scope="module")
def converted(bdd, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("out") / "ds"
    code = main(["data", "bdd100k", "--labels", str(bdd / "labels"), "--videos", str(bdd / "videos"),
                 "--image-labels", str(bdd / "det_train.json"), "--out", str(out), "--no-progress"])
    return out, code


def found_rect(frame: np.ndarray, colour) -> np.ndarray:
    mask = np.all(np.abs(frame.astype(int) - np.array(colour)) < 60, axis=2)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def test_video_clips_have_interpolated_boxes_in_sync_with_pixels(converted):
    out, code = converted
    clip = read_clip(out / "aaaa-0001")
    assert (clip.fps, clip.num_frames, clip.height, clip.width) == (30.0, 91, H, W)
    for k in (0, 7, 23, 40, 62, 90):  # 30 fps frames, mostly between the 5 Hz labels
        t = k / FPS
        want = {int(o[0]): box_at(o, t) for o in OBJECTS[:3] if box_at(o, t) is not None}
        got = dict(zip(clip.track_ids[k].tolist(), clip.boxes[k] * np.array([W, H, W, H])))
        assert set(got) == set(want), (k, got)
        for tid, box in want.items():
            assert np.allclose(got[tid], box, atol=0.05), (k, tid, got[tid], box)
        pixels = clip.frames([k])[0]
        for tid, colour in ((1, OBJECTS[0][2]), (2, OBJECTS[1][2])):
            assert np.allclose(found_rect(pixels, colour), got[tid], atol=1.5), (k, tid)
    classes = dict(zip(clip.track_ids[80].tolist(), clip.classes[80].tolist()))
    assert classes == {1: CLASS_IDS["car"], 2: CLASS_IDS["pedestrian"], 3: CLASS_IDS["bus"]}  # sign dropped


def test_labels_splits_and_failures(converted, bdd):
    out, code = converted
    assert code == 1  # two bad inputs below
    entries = {e.clip_id: e for e in read_manifest(out)}
    assert set(entries) == {"aaaa-0001", "bbbb-0002"}
    assert entries["aaaa-0001"].split == "train" and entries["bbbb-0002"].split == "val"
    a, b = read_clip(out / "aaaa-0001"), read_clip(out / "bbbb-0002")
    assert (a.labels["daynight"], a.labels["weather"]) == ("night", "rainy")           # from the MOT frames
    assert (b.labels["daynight"], b.labels["timeofday"]) == ("unknown", "dawn/dusk")  # joined by video name
    # crowd from the boxes: 1 car all along + the bus, first labelled at 1.0 s, from frame 27
    # (0.9 s, nearer to the 1.0 s label than to 0.8 s) to 90 -> mean 1 + 64/91 = 1.70 -> quiet
    assert a.labels["mean_vehicles"] == round(1 + 64 / 91, 3) and a.labels["crowd"] == "quiet"
    failed = read_json(out / "conversion_report.json")["failed"]
    missing = failed[str(bdd / "labels" / "box_track_20" / "train" / "cccc-0003.json")]
    assert "cccc-0003.json" in missing and "[2].labels[0].box2d.x2" in missing
    corrupt = failed[str(bdd / "labels" / "box_track_20" / "train" / "dddd-0004.json")]
    assert "dddd-0004.mov" in corrupt and "unreadable" in corrupt


def test_nearest_mode_and_image_frames(bdd, tmp_path):
    out = tmp_path / "img"
    single = tmp_path / "labels"
    single.mkdir()
    (single / "aaaa-0001.json").write_text((bdd / "labels" / "box_track_20" / "train" / "aaaa-0001.json").read_text())
    main(["data", "bdd100k", "--labels", str(single),
          "--images", str(bdd / "images"), "--out", str(out), "--no-progress", "--box-mode", "nearest",
          "--fps", "7", "--size", "90x120", "--clip-seconds", "1"])
    clips = {e.clip_id for e in read_manifest(out)}
    assert clips == {"aaaa-0001_00", "aaaa-0001_01", "aaaa-0001_02"}
    clip = read_clip(out / "aaaa-0001_01")  # 1.0 s .. 1.86 s at 7 fps (no ties) from 5 Hz images
    assert (clip.num_frames, clip.height, clip.width) == (7, 90, 120)
    scale, x0 = 90 / H, (320 * 90 / H - 120) / 2  # cover 90x120: scale 0.5, crop 20 px each side
    for k in range(7):
        t_label = round((1.0 + k / 7) * 5) / 5  # nearest labelled time
        car = box_at(OBJECTS[0], t_label) * scale - np.array([x0, 0, x0, 0])
        car = np.clip(car, 0, [120, 90, 120, 90]) / np.array([120, 90, 120, 90])
        got = dict(zip(clip.track_ids[k].tolist(), clip.boxes[k]))
        assert np.allclose(got[1], car, atol=1e-4), (k, got[1], car)


def test_interpolation_rule_for_tracks_entering():
    tr = Track("v", np.array([0.0, 0.2]), ["a", "b"],
               [np.array([[0, 0, 10, 10]], float), np.array([[10, 0, 20, 10], [50, 50, 60, 60]], float)],
               [np.array([1]), np.array([1, 3])], [np.array([1]), np.array([1, 2])], {})
    boxes, _, ids = boxes_at(tr, 0.05, "interpolate")
    assert ids.tolist() == [1] and np.allclose(boxes, [[2.5, 0, 12.5, 10]])  # entering track not yet there
    boxes, _, ids = boxes_at(tr, 0.15, "interpolate")
    assert ids.tolist() == [1, 2] and np.allclose(boxes, [[7.5, 0, 17.5, 10], [50, 50, 60, 60]])
    boxes, _, ids = boxes_at(tr, 0.15, "nearest")
    assert np.allclose(boxes[0], [10, 0, 20, 10])


def test_label_errors_name_file_field_and_value(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps([{"name": "a.jpg", "frameIndex": 0, "labels": [{"id": "1", "category": "car"}]}]))
    with pytest.raises(DriveSimInputError, match=r"v\.json.*\[0\]\.labels\[0\]\.box2d"):
        load_mot_labels(path)
    path.write_text(json.dumps([{"name": "a.jpg", "frameIndex": "x"}]))
    with pytest.raises(DriveSimInputError, match=r"\[0\]\.frameIndex.*'x'"):
        load_mot_labels(path)
    path.write_text(json.dumps([{"name": "a.jpg", "frameIndex": 0, "labels": [
        {"id": "1", "category": "car", "box2d": {"x1": 5, "y1": 0, "x2": 1, "y2": 3}}]}]))
    with pytest.raises(DriveSimInputError, match="x2 < x1"):
        load_mot_labels(path)
    path.write_text("{not json")
    with pytest.raises(DriveSimInputError, match="malformed JSON"):
        load_mot_labels(path)


def test_clip_dataset_loads_the_converted_bdd_clips(converted):
    from drivesim.data.datasets import ClipDataset

    out, _ = converted
    ds = ClipDataset(out, split="train", frames=3, fps=10.0, height=36, width=64, max_boxes=4)
    sample = ds[len(ds) - 1]
    assert sample["video"].shape == (3, 3, 36, 64)
    assert sample["boxes"].shape == (3, 4, 4) and sorted(sample["box_classes"][0].tolist()) == [0, 1, 3, 4]
    assert int(sample["daynight"]) == 1
