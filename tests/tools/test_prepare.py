"""`drivesim data prepare`: what DATA is, conversion of a mix of good and corrupt videos, the
val split and start clip of converted data, and one-line errors for folders with nothing usable."""

import json

import pytest
from chain_fixtures import write_videos

from drivesim.cli import main
from drivesim.data.clip_format import read_clip, read_manifest
from drivesim.tools.prepare import convert, detect_data, ensure_val_split
from drivesim.utils.io import DriveSimInputError


def _prepare(data, run, *extra):
    return main(["data", "prepare", "--data", str(data), "--out", str(run / "data"), "--size", "32x64",
                 "--clip-seconds", "2", "--start", str(run / "start"), "--info", str(run / "data.json"),
                 "--no-progress", *extra])


def test_detect_data_kinds(tmp_path):
    assert detect_data("synthetic").kind == "synthetic"
    videos = tmp_path / "videos"
    (videos / "day1").mkdir(parents=True)
    (videos / "day1" / "a.MOV").write_bytes(b"")
    assert detect_data(str(videos)) == detect_data(str(videos)) and detect_data(str(videos)).kind == "videos"
    assert not detect_data(str(videos)).boxes
    nusc = tmp_path / "nuscenes"
    (nusc / "v1.0-mini").mkdir(parents=True)
    (nusc / "v1.0-mini" / "scene.json").write_text("[]")
    info = detect_data(str(nusc))
    assert (info.kind, info.version, info.boxes) == ("nuscenes", "v1.0-mini", True)


@pytest.mark.parametrize("content", ["empty", "text", "clips_without_manifest"])
def test_a_folder_with_nothing_usable_is_one_line(tmp_path, capsys, content):
    data = tmp_path / "data"
    data.mkdir()
    if content == "text":
        (data / "notes.txt").write_text("hello")
    elif content == "clips_without_manifest":
        (data / "clip0").mkdir()
        (data / "clip0" / "clip.json").write_text("{}")
    with pytest.raises(DriveSimInputError, match="nothing usable|no manifest"):
        detect_data(str(data))
    assert _prepare(data, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(data) in err and "error:" in err
    with pytest.raises(DriveSimInputError, match="not found"):
        detect_data(str(tmp_path / "missing"))


def test_corrupt_videos_are_reported_and_the_rest_is_used(tmp_path, capsys):
    videos = tmp_path / "videos"
    write_videos(videos, count=2, frames=50, corrupt=1)
    run = tmp_path / "run"
    assert _prepare(videos, run) == 0
    out = capsys.readouterr().out
    assert "broken0.mp4" in out and "left out" in out
    info = json.loads((run / "data.json").read_text())
    assert info["kind"] == "videos" and not info["boxes"]
    assert list(info["report"]["failed"]) == [str(videos / "broken0.mp4")]
    entries = read_manifest(run / "data")
    assert len(entries) == 4 and sorted({e.clip_id[:6] for e in entries}) == ["drive0", "drive1"]  # 2 x 2 s
    assert [e.split for e in entries].count("val") == 1  # a converted set always holds a clip out
    start = read_clip(run / "start")
    assert (start.height, start.width, start.num_frames) == (32, 64, 2)
    assert start.labels["source_clip"] == next(e.clip_id for e in entries if e.split == "val")


def test_only_corrupt_videos_is_nothing_usable(tmp_path, capsys):
    videos = tmp_path / "videos"
    write_videos(videos, count=0, corrupt=2)
    assert _prepare(videos, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "nothing usable: no clip converted (2 failed" in err and "broken0.mp4" in err
    assert not (tmp_path / "run" / "data.json").exists()


def test_ensure_val_split(tmp_path):
    videos = tmp_path / "videos"
    write_videos(videos, count=1, frames=50)
    assert _prepare(videos, tmp_path / "run") == 0
    root = tmp_path / "run" / "data"
    assert ensure_val_split(root) == {"drive0_001"}  # one of its two clips held out, kept on a re-run
    one = tmp_path / "one"
    write_videos(one, count=1, frames=25)  # 2.5 s: one 2-s clip
    convert(detect_data(str(one)), tmp_path / "one_clips", "32x64", 2.0, progress=False)
    with pytest.raises(DriveSimInputError, match="one clip is not enough"):
        ensure_val_split(tmp_path / "one_clips")
