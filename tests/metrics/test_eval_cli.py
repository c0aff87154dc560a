"""`drivesim eval` end to end with TorchScript stand-ins for I3D and Inception."""

import json

import numpy as np
import pytest
import torch
from metric_standins import save_standin

from drivesim.cli import main
from drivesim.data.clip_format import ClipWriter
from drivesim.data.video_io import VideoWriter
from drivesim.metrics.oracle.model import Oracle, OracleConfig, VehicleSegmenter


def _moving_box_video(rng, n=36, h=32, w=64, night=False):
    """A box sliding right over a gradient: smooth motion, like a driving clip."""
    base = np.linspace(40, 200, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    base = base * (0.3 if night else 1.0)
    x0, speed = rng.integers(0, w // 2), rng.uniform(0.3, 1.0)
    frames, boxes = [], []
    for t in range(n):
        img = base.copy()
        x = int(x0 + speed * t) % (w - 12)
        img[12:24, x:x + 12] = (200, 30, 30)
        frames.append(img.clip(0, 255).astype(np.uint8))
        boxes.append([[x / w, 12 / h, (x + 12) / w, 24 / h]])
    return np.stack(frames), np.asarray(boxes, np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    for i in range(3):  # real: clip-format folders with boxes
        frames, boxes = _moving_box_video(rng, night=i == 2)
        with ClipWriter(root / "real" / f"clip{i}", fps=10.0, height=32, width=64,
                        labels={"daynight": "night" if i == 2 else "day"}) as writer:
            for f, b in zip(frames, boxes):
                writer.add_frame(f, boxes=b, classes=np.ones(1, np.int64))
    (root / "fake").mkdir()
    for i in range(3):  # fake: a plain mp4 folder
        frames, _ = _moving_box_video(rng)
        with VideoWriter(root / "fake" / f"gen{i}.mp4", fps=10.0) as writer:
            for f in frames:
                writer.write(f)
    save_standin("i3d", root / "i3d.pt", num_features=32)
    save_standin("inception", root / "inception.pt", num_features=48)
    oracle = Oracle(OracleConfig(height=32, width=64, channels=4), VehicleSegmenter(4), 0.3)
    oracle.save(root / "oracle.pt")
    return root


def _args(root, *extra):
    return ["eval", "--real", str(root / "real"), "--fake", str(root / "fake"), "--out",
            str(root / "out" / "report.json"), "--i3d", str(root / "i3d.pt"), "--inception",
            str(root / "inception.pt"), "--oracle", str(root / "oracle.pt"), "--cache-dir",
            str(root / "cache"), "--num-clips", "8", "--frames", "8", "--fid-frames", "60",
            "--window-seconds", "1", "--no-progress", "--metrics", "fvd,fid,oracle",
            "--allow-unknown-weights", "--min-window-clips", "2", "--min-window-frames", "2", *extra]


def test_eval_cli_end_to_end_with_cache(setup, capsys):
    root = setup
    with pytest.warns(UserWarning, match="only"):
        assert main(_args(root)) == 0
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["schema"] == "drivesim.eval/1"
    assert report["protocol"]["num_clips"] == 8 and report["protocol"]["frames_per_clip"] == 8
    # 36 frames -> 4 clips of 8 per video, capped at 8 per side
    assert report["fvd"]["real_clips"] == 8 and report["fvd"]["fake_clips"] == 8
    assert report["fid"]["real_frames"] == 60 and report["fid"]["fake_frames"] == 60
    assert report["fvd"]["value"] > 0 and report["fid"]["value"] > 0
    assert [w["window"] for w in report["fvd"]["windows"]] == [0, 1, 2]
    assert report["temporal"]["w1"] is not None and report["temporal"]["real_pairs"] == 3 * 35
    assert report["oracle"]["box_fidelity"]["real"]["boxes"] == 3 * 36  # calibration side
    assert report["oracle"]["daynight"]["real"]["scored"] == 3 * 4       # 3 videos x 4 windows
    assert report["versions"]["torch"] == torch.__version__
    assert len(report["extractors"]["i3d"]["sha256"]) == 64
    # stand-in weights: recorded as not the published files, the metrics as non-standard
    assert report["extractors"]["i3d"]["published"] is False
    assert report["fvd"]["standard"] is False and "non-standard" in report["fvd"]["note"]
    assert report["fid"]["weights_sha256"] == report["extractors"]["inception"]["sha256"]
    assert report["fvd"]["clip_sampling"] == {"real": "consecutive", "fake": "consecutive"}
    for name in report["plots"]:
        assert (root / "out" / name).stat().st_size > 0
    assert not report["fvd"]["real_from_cache"]
    assert len(list((root / "cache" / "stats").glob("*.npz"))) == 2
    first = report["fvd"]["value"]
    # refuses to overwrite; then reuses the cached real statistics with the same result
    assert main(_args(root)) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="only"):
        assert main(_args(root, "--overwrite")) == 0
    again = json.loads((root / "out" / "report.json").read_text())
    assert again["fvd"]["real_from_cache"] and again["fid"]["real_from_cache"]
    assert again["fvd"]["value"] == pytest.approx(first, rel=1e-9)


def test_eval_cli_missing_weights_and_bad_folder(setup, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("DRIVESIM_I3D", raising=False)
    args = ["eval", "--real", str(setup / "real"), "--fake", str(setup / "fake"), "--out",
            str(tmp_path / "r.json"), "--metrics", "fvd", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "i3d_torchscript.pt" in err and "DRIVESIM_I3D" in err
    assert not (tmp_path / "r.json").exists()
    args = ["eval", "--real", str(tmp_path), "--fake", str(setup / "fake"), "--out",
            str(tmp_path / "r.json"), "--metrics", "temporal", "--no-progress"]
    assert main(args) == 2
    assert "no clips" in capsys.readouterr().err


def test_eval_cli_refuses_unknown_weights(setup, capsys, tmp_path):
    args = [a for a in _args(setup) if a != "--allow-unknown-weights"]
    args[args.index("--out") + 1] = str(tmp_path / "r.json")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drivesim eval: error:") and "sha256" in err and "\n" not in err
    assert not (tmp_path / "r.json").exists()


def test_eval_cli_c2st_needs_no_weights(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DRIVESIM_I3D", raising=False)
    out = tmp_path / "c2st.json"
    args = ["eval", "--real", str(setup / "real"), "--fake", str(setup / "fake"), "--out", str(out),
            "--metrics", "c2st", "--c2st-steps", "5", "--c2st-clips-per-video", "4", "--window-seconds", "2",
            "--no-progress", "--no-cache"]
    assert main(args) == 0
    assert "c2st/frame=" in capsys.readouterr().out
    report = json.loads(out.read_text())
    c2st = report["c2st"]
    assert c2st["real_clips"] == c2st["fake_clips"] == 3 * 4 and c2st["config"]["steps"] == 5
    # 3 videos a side (< min_groups): split units are 10 s segments, one per 3.6 s video
    assert c2st["frame"]["grouping"] == {"real": "segment", "fake": "segment"}
    assert 0.0 <= c2st["frame"]["accuracy"] <= 1.0 and c2st["frame"]["held_out"] == 2 * 12 * 4
    assert report["protocol"]["c2st_clips_per_video"] == 4
    assert (tmp_path / "c2st_drift.png").stat().st_size > 0
    assert c2st["config"]["frame_size"] == [64, 128]
    # a coarser frame variant (scene look without fine texture): recorded in the report
    coarse = tmp_path / "coarse.json"
    args[args.index("--out") + 1] = str(coarse)
    assert main([*args, "--c2st-frame-size", "16x32", "--c2st-clip-size", "16x32"]) == 0
    config = json.loads(coarse.read_text())["c2st"]["config"]
    assert config["frame_size"] == [16, 32] and config["clip_size"] == [16, 32]
    capsys.readouterr()
    assert main([*args, "--c2st-frame-size", "8x16", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "field 'c2st.frame_size'" in err and "\n" not in err.strip()
    assert main([*args, "--c2st-frame-size", "big", "--overwrite"]) == 2
    assert "--c2st-frame-size must be HxW" in capsys.readouterr().err


def test_eval_cli_real_against_itself_scores_below_a_different_set(setup, tmp_path):
    """End to end: the real set against itself gives ~0, against the generated set clearly more
    (the clamp at 0 alone would pass a '>= 0' check whatever the pipeline did)."""
    scores = {}
    for name, fake in (("same", setup / "real"), ("different", setup / "fake")):
        args = _args(setup, "--no-cache")
        args[args.index("--fake") + 1] = str(fake)
        args[args.index("--out") + 1] = str(tmp_path / f"{name}.json")
        args[args.index("--metrics") + 1] = "fvd,fid"
        with pytest.warns(UserWarning, match="only"):
            assert main(args) == 0
        report = json.loads((tmp_path / f"{name}.json").read_text())
        scores[name] = (report["fvd"]["value"], report["fid"]["value"])
    for same, different in zip(scores["same"], scores["different"]):
        assert same == pytest.approx(0.0, abs=1e-6)
        assert different > 1e-4, scores   # stand-in features are small: FVD 1.4e-3, FID 7e-3
