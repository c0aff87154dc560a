import json
import shutil

import numpy as np

from drivesim.cli import main
from drivesim.data.clip_format import MANIFEST, read_clip, read_manifest
from drivesim.data.datasets import ClipDataset, SyntheticDataset
from drivesim.data.labels import CROWD_NAMES

SYNTH = ["data", "synth", "--clips", "3", "--seconds", "0.4", "--fps", "10", "--size", "32x64", "--seed", "4",
         "--val-fraction", "0.34", "--max-vehicles", "4", "--no-progress"]


def synth(out, *extra):
    return main([*SYNTH, "--out", str(out), *extra])


def test_synth_writes_clips_and_manifest(tmp_path, capsys):
    assert synth(tmp_path / "ds", "--night-fraction", "1.0") == 0
    assert "wrote 3 clips (2 train, 1 val)" in capsys.readouterr().out
    entries = read_manifest(tmp_path / "ds")
    assert [e.clip_id for e in entries] == ["synth_000000", "synth_000001", "synth_000002"]
    assert [e.split for e in entries] == ["train", "train", "val"]
    clip = read_clip(tmp_path / "ds" / "synth_000001")
    assert (clip.num_frames, clip.fps, clip.height, clip.width) == (4, 10.0, 32, 64)
    assert clip.labels["source"] == "synthetic" and clip.labels["daynight"] == "night"
    assert clip.labels["crowd"] in CROWD_NAMES[:3] and clip.labels["weather"] == "clear"
    assert clip.labels["seed"] == SyntheticDataset(seed=4).scenario(1)["seed"]
    # the exported drive is sample 1 of the streaming dataset with the same seed
    stream = SyntheticDataset(frames=4, height=32, width=64, seed=4, night_fraction=1.0, max_vehicles=4,
                              max_boxes=16).sample(1)
    video = (stream["video"].permute(0, 2, 3, 1).numpy() + 1) * 127.5
    mse = np.mean((clip.frames(range(4)).astype(np.float64) - video) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30
    boxes, classes, _ = clip.box_arrays(range(4), max_boxes=16)
    np.testing.assert_allclose(boxes, stream["boxes"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(classes, stream["box_classes"].numpy())
    ds = ClipDataset(tmp_path / "ds", "train", frames=2, fps=5.0, height=32, width=64)
    assert len(ds) == 2
    # every frame carries the world's exact ego motion, the same as the stream's
    ego = clip.ego_arrays(range(4))
    assert ego.known.all()
    np.testing.assert_allclose(ego.speed, stream["ego_speed"].numpy(), atol=1e-4)
    np.testing.assert_allclose(ego.yaw_rate, stream["ego_yaw_rate"].numpy(), atol=1e-5)


def test_synth_workers_write_the_same_dataset(tmp_path, capsys):
    assert synth(tmp_path / "one") == 0
    assert synth(tmp_path / "two", "--workers", "2") == 0
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert [(e.clip_id, e.split) for e in one] == [(e.clip_id, e.split) for e in two]
    for e in one:
        a, b = read_clip(tmp_path / "one" / e.clip_id), read_clip(tmp_path / "two" / e.clip_id)
        assert (a.path / "clip.json").read_bytes() == (b.path / "clip.json").read_bytes()
        np.testing.assert_array_equal(a.frames(range(a.num_frames)), b.frames(range(b.num_frames)))
    # resume with workers: the missing clip is rendered, the kept ones are untouched
    shutil.rmtree(tmp_path / "two" / "synth_000001")
    (tmp_path / "two" / MANIFEST).unlink()
    assert synth(tmp_path / "two", "--workers", "2", "--skip-existing") == 0
    assert len(read_manifest(tmp_path / "two")) == 3
    assert synth(tmp_path / "bad", "--workers", "-1") == 2
    assert "--workers >= 0" in capsys.readouterr().err


def test_synth_refuses_overwrite_and_resumes(tmp_path, capsys):
    out = tmp_path / "ds"
    assert synth(out, "--format", "png") == 0
    stamp = (out / "synth_000000" / "clip.json").stat().st_mtime_ns
    assert synth(out, "--format", "png") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # a killed run: one clip and the manifest missing -> --skip-existing finishes it
    shutil.rmtree(out / "synth_000002")
    (out / MANIFEST).unlink()
    assert synth(out, "--format", "png", "--skip-existing") == 0
    assert (out / "synth_000000" / "clip.json").stat().st_mtime_ns == stamp  # kept
    assert len(read_manifest(out)) == 3 and read_clip(out / "synth_000002").num_frames == 4
    assert synth(out, "--format", "png", "--skip-existing", "--seed", "5") == 1
    assert "other settings" in capsys.readouterr().err
    assert synth(out, "--overwrite") == 0
    assert read_clip(out / "synth_000000").frames_format == "mp4"


def test_check_reports_bad_clips(tmp_path, capsys):
    out = tmp_path / "ds"
    assert synth(out) == 0
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    assert "checked 3 clips (train: 2, val: 1); 0 bad" in capsys.readouterr().out
    meta = json.loads((out / "synth_000001" / "clip.json").read_text())
    meta["annotations"][0]["boxes"] = [[0.1, 0.1, float("nan"), 0.2]]
    meta["annotations"][0]["classes"] = [1]
    meta["annotations"][0]["track_ids"] = [1]
    meta["annotations"][0]["visibility"] = [1.0]
    (out / "synth_000001" / "clip.json").write_text(json.dumps(meta))
    data = (out / "synth_000002" / "frames.mp4").read_bytes()
    (out / "synth_000002" / "frames.mp4").write_bytes(data[: len(data) // 3])
    assert main(["data", "check", str(out)]) == 1
    text = capsys.readouterr().out
    assert "BAD synth_000001" in text and "annotations[0].boxes[0]" in text and "NaN" in text
    assert "BAD synth_000002" in text and "frames.mp4" in text and "2 bad, 1 ok" in text


def test_check_empty_folder_and_write_manifest(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty")]) == 2  # no dataset at all: a user error
    assert "empty" in capsys.readouterr().err
    out = tmp_path / "ds"
    assert synth(out) == 0
    (out / MANIFEST).unlink()
    assert main(["data", "check", str(out)]) == 2  # clips but no manifest: the error says how to write one
    assert "--write-manifest" in capsys.readouterr().err
    assert main(["data", "check", str(out), "--write-manifest", "--val-fraction", "0"]) == 0
    assert [e.split for e in read_manifest(out)] == ["train"] * 3


def test_synth_ego_programs_option(tmp_path, capsys):
    """--ego-programs 1: every clip's ego drives a random program (labelled with its seed); 0: none
    does. A clip without a program is the same drive either way."""
    assert synth(tmp_path / "all", "--ego-programs", "1", "--seconds", "2", "--format", "png") == 0
    assert synth(tmp_path / "none", "--ego-programs", "0", "--seconds", "2", "--format", "png") == 0
    for i in range(3):
        prog, plain = (read_clip(tmp_path / d / f"synth_{i:06d}") for d in ("all", "none"))
        assert isinstance(prog.labels["ego_program"], int) and "ego_program" not in plain.labels
        assert prog.labels["seed"] == plain.labels["seed"] and prog.ego.known.all() and plain.ego.known.all()
    assert synth(tmp_path / "all", "--ego-programs", "0", "--seconds", "2", "--format", "png", "--skip-existing") == 1
    assert "ego program" in capsys.readouterr().err
    source = SyntheticDataset(seed=4, max_vehicles=4, ego_program_fraction=0.5)
    half = [i for i in range(12) if source.scenario(i)["ego_program"] is None]
    assert synth(tmp_path / "half", "--clips", "12", "--val-fraction", "0", "--seconds", "2", "--format", "png") == 0
    assert synth(tmp_path / "zero", "--clips", "12", "--val-fraction", "0", "--seconds", "2", "--format", "png",
                 "--ego-programs", "0") == 0
    assert 0 < len(half) < 12
    for i in half:  # the default (half the clips with a program) leaves the others' drives unchanged
        a, b = (read_clip(tmp_path / d / f"synth_{i:06d}") for d in ("half", "zero"))
        assert (a.path / "clip.json").read_bytes() == (b.path / "clip.json").read_bytes()
    assert synth(tmp_path / "bad", "--ego-programs", "2") == 2
