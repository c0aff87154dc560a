import json
import shutil

import numpy as np
import pytest

from drivesim.data.clip_format import (
    MANIFEST,
    SCHEMA,
    ClipWriter,
    ManifestEntry,
    assign_split,
    manifest_entry,
    read_clip,
    read_manifest,
    write_manifest,
)
from drivesim.utils.io import DriveSimInputError


def frame(i: int, h: int = 24, w: int = 40) -> np.ndarray:
    f = np.full((h, w, 3), 40, np.uint8)
    f[..., 2] = 5 * i
    return f


def write_clip(path, n=6, fmt="png", labels=None, **kw):
    with ClipWriter(path, fps=10.0, height=24, width=40, labels=labels or {"daynight": "night"},
                    frames_format=fmt, **kw) as w:
        for i in range(n):
            w.add_frame(frame(i), boxes=[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 1.0]], classes=[1, 4],
                        track_ids=[7, i + 1], visibility=[1.0, 0.5])
    return path


@pytest.mark.parametrize("fmt", ["mp4", "png", "jpg"])
def test_write_read_round_trip(tmp_path, fmt):
    write_clip(tmp_path / "c0", fmt=fmt, labels={"daynight": "night", "weather": "rain", "seed": 3})
    clip = read_clip(tmp_path / "c0")
    assert (clip.clip_id, clip.num_frames, clip.fps, clip.height, clip.width) == ("c0", 6, 10.0, 24, 40)
    assert clip.daynight == 1 and clip.labels["weather"] == "rain" and clip.labels["seed"] == 3
    assert clip.labels["crowd"] == "quiet" and clip.labels["mean_vehicles"] == 1.0  # one car per frame
    rgb = clip.frames([5, 0])
    assert rgb.shape == (2, 24, 40, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[..., 2].mean(axis=(1, 2)), [25, 0], atol=2)
    boxes, classes, ids = clip.box_arrays([2, 3], max_boxes=4)
    assert boxes.shape == (2, 4, 4) and classes.dtype == np.int64
    np.testing.assert_allclose(boxes[0, :2], [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 1.0]], atol=1e-6)
    assert classes[1].tolist() == [1, 4, 0, 0] and ids[1].tolist() == [7, 4, 0, 0]
    meta = json.loads((tmp_path / "c0" / "clip.json").read_text())
    assert meta["schema"] == SCHEMA and len(meta["annotations"]) == 6


def test_writer_atomic_and_no_overwrite(tmp_path):
    with pytest.raises(RuntimeError):
        with ClipWriter(tmp_path / "c", fps=10, height=24, width=40, frames_format="mp4") as w:
            w.add_frame(frame(0))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_clip(tmp_path / "c", n=2)
    with pytest.raises(FileExistsError):
        write_clip(tmp_path / "c", n=3)
    assert read_clip(tmp_path / "c").num_frames == 2  # untouched
    write_clip(tmp_path / "c", n=3, overwrite=True)
    assert read_clip(tmp_path / "c").num_frames == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp or trash left


def test_writer_rejects_bad_boxes_without_leaving_files(tmp_path):
    with pytest.raises(DriveSimInputError, match=r"annotations\[1\]\.boxes\[0\]"):
        with ClipWriter(tmp_path / "c", fps=10, height=24, width=40) as w:
            w.add_frame(frame(0), boxes=[[0.1, 0.1, 0.2, 0.2]], classes=[1])
            w.add_frame(frame(1), boxes=[[0.1, 0.1, 1.5, 0.2]], classes=[1])
    assert list(tmp_path.iterdir()) == []


def _edit(clip_dir, fn):
    path = clip_dir / "clip.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


BAD_EDITS = {
    "schema": (lambda m: m.update(schema="drivesim.clip/9"), "schema"),
    "fps": (lambda m: m.update(fps=-1), "fps"),
    "missing num_frames": (lambda m: m.pop("num_frames"), "num_frames"),
    "frame count": (lambda m: (m.update(num_frames=5), m["annotations"].pop()), "num_frames"),
    "annotation count": (lambda m: m["annotations"].pop(), "annotations"),
    "nan box": (lambda m: m["annotations"][2]["boxes"][1].__setitem__(0, float("nan")),
                "annotations[2].boxes[1]"),
    "box outside": (lambda m: m["annotations"][3]["boxes"][0].__setitem__(2, 1.3), "annotations[3].boxes[0]"),
    "class id": (lambda m: m["annotations"][1]["classes"].__setitem__(1, 9), "annotations[1].classes[1]"),
    "track ids": (lambda m: m["annotations"][0].update(track_ids=[1]), "annotations[0].track_ids"),
    "daynight": (lambda m: m["labels"].update(daynight="dusk"), "labels.daynight"),
    "frames path": (lambda m: m["frames"].update(path="../x"), "frames.path"),
    "size": (lambda m: m.update(width=64), "height/width"),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_bad_clip_json_names_file_and_field(tmp_path, case):
    edit, field = BAD_EDITS[case]
    clip_dir = write_clip(tmp_path / "c")
    _edit(clip_dir, edit)
    with pytest.raises(DriveSimInputError) as err:
        read_clip(clip_dir)
    assert "clip.json" in str(err.value) and f"'{field}'" in str(err.value)


def test_small_overshoot_is_clipped(tmp_path):
    clip_dir = write_clip(tmp_path / "c")
    _edit(clip_dir, lambda m: m["annotations"][0]["boxes"][1].__setitem__(3, 1.0004))
    assert read_clip(clip_dir).boxes[0][1, 3] == 1.0


def test_malformed_json_and_missing_frames(tmp_path):
    clip_dir = write_clip(tmp_path / "c")
    (clip_dir / "clip.json").write_text('{"schema": "drivesim.clip/1", "fps": ')
    with pytest.raises(DriveSimInputError, match=r"clip\.json.*malformed JSON at line 1"):
        read_clip(clip_dir)
    clip_dir = write_clip(tmp_path / "d")
    (clip_dir / "frames" / "000004.png").unlink()
    with pytest.raises(DriveSimInputError, match=r"000004\.png.*missing frame"):
        read_clip(clip_dir)
    clip_dir = write_clip(tmp_path / "e", fmt="mp4")
    (clip_dir / "frames.mp4").write_bytes(b"corrupt")
    with pytest.raises(DriveSimInputError, match=r"frames\.mp4.*corrupt or truncated"):
        read_clip(clip_dir)
    with pytest.raises(DriveSimInputError, match="clip folder not found"):
        read_clip(tmp_path / "nope")


def test_video_frame_count_mismatch(tmp_path):
    a, b = write_clip(tmp_path / "a", n=6, fmt="mp4"), write_clip(tmp_path / "b", n=4, fmt="mp4")
    shutil.copy(b / "frames.mp4", a / "frames.mp4")
    with pytest.raises(DriveSimInputError, match=r"'num_frames'.*says 6 frames but frames\.mp4 has 4"):
        read_clip(a)


def test_manifest_round_trip_and_splits(tmp_path):
    entries = []
    for i in range(5):
        clip = read_clip(write_clip(tmp_path / f"c{i}", n=2))
        entries.append(manifest_entry(clip, tmp_path, assign_split(i, 5, 0.2)))
    write_manifest(tmp_path, entries)
    back = read_manifest(tmp_path)
    assert back == entries and [e.split for e in back] == ["train"] * 4 + ["val"]
    assert back[0] == ManifestEntry("c0", "c0", "train", 2, 10.0, 1, 0)
    with pytest.raises(FileExistsError):
        write_manifest(tmp_path, entries)
    with pytest.raises(DriveSimInputError, match="duplicate clip id"):
        write_manifest(tmp_path, entries + entries[:1], overwrite=True)


def test_manifest_errors(tmp_path):
    with pytest.raises(DriveSimInputError, match="empty"):
        read_manifest(tmp_path)
    write_clip(tmp_path / "c0")
    with pytest.raises(DriveSimInputError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"clip_id": "c0", "path": "c0", "split": "train"}\n')
    with pytest.raises(DriveSimInputError, match=r"manifest\.jsonl.*line 1\.num_frames"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{oops\n")
    with pytest.raises(DriveSimInputError, match=r"line 1.*malformed JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("\n")
    with pytest.raises(DriveSimInputError, match="lists no clips"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("fmt", ["mp4", "png"])
def test_writer_refuses_an_empty_clip(tmp_path, fmt):
    with pytest.raises(DriveSimInputError, match="at least one frame"):
        with ClipWriter(tmp_path / "c", fps=10, height=24, width=40, frames_format=fmt):
            pass
    assert list(tmp_path.iterdir()) == []
