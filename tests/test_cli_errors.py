"""Bad invocations across subcommands: one line on stderr, exit code 2, no traceback; the
traceback comes back with --debug or DRIVESIM_DEBUG=1, and bugs keep theirs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drivesim import cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "rollout"))
sys.path.insert(0, str(REPO / "tests" / "metrics"))

from metric_standins import save_standin  # noqa: E402
from rollout_tiny_models import write_tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    models = write_tiny_models(root / "models")
    (root / "bad.json").write_text('{"schema": "drivesim.scenario/1", "fps": ')
    (root / "labels").mkdir()
    (root / "labels" / "labels.csv").write_text("filename,daynight\nclip.mp4,dusk\n")
    (root / "videos").mkdir()
    (root / "empty").mkdir()
    save_standin("i3d", root / "i3d.pt", num_features=8)
    cfg = yaml.safe_load((REPO / "configs/image_ldm/tiny.yaml").read_text())
    cfg["model"]["init_args"]["autoencoder_path"] = str(root / "missing_ae.safetensors")
    (root / "fit.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": str(root), **{k: str(v) for k, v in models.items()}}


def _rollout(f, *extra):
    return ["rollout", "--video-ckpt", f["video"], "--ae-ckpt", f["ae"], "--out", f"{f['root']}/r",
            "--seconds", "2", "--no-progress", *extra]


# (id, argv builder, substrings the one line must contain)
CASES = [
    ("unknown-command", lambda f: ["trian"], ["drivesim trian: error:", "invalid choice: 'trian'"]),
    ("unknown-data-tool", lambda f: ["data", "sinth"], ["invalid choice: 'sinth'"]),
    ("fit-missing-config", lambda f: ["fit", "--config", f"{f['root']}/nope.yaml"],
     ["drivesim fit: error:", "nope.yaml", "config"]),
    ("fit-config-names-missing-model-file", lambda f: ["fit", "--config", f"{f['root']}/fit.yaml"],
     ["missing_ae.safetensors", "fit.model.init_args.autoencoder_path", "model file not found"]),
    ("fit-bad-value", lambda f: ["fit", "--config", f"{f['root']}/fit.yaml", "--trainer.max_steps", "abc"],
     ["trainer.max_steps", "abc"]),
    ("validate-missing-config", lambda f: ["validate", "--config", f"{f['root']}/nope.yaml"],
     ["drivesim validate: error:", "nope.yaml"]),
    ("rollout-negative-seconds", lambda f: _rollout(f, "--seconds", "-5"), ["seconds", "-5"]),
    ("rollout-not-a-number", lambda f: _rollout(f, "--seconds", "abc"), ["--seconds", "'abc'"]),
    ("rollout-malformed-scenario", lambda f: _rollout(f, "--scenario", f"{f['root']}/bad.json"),
     ["bad.json", "malformed JSON"]),
    ("rollout-missing-scenario", lambda f: _rollout(f, "--scenario", f"{f['root']}/none.json"),
     ["none.json", "not found"]),
    ("rollout-missing-model", lambda f: ["rollout", "--video-ckpt", f"{f['root']}/none.pt", "--ae-ckpt",
                                         f["ae"], "--out", f"{f['root']}/r"], ["none.pt", "model file not found"]),
    ("eval-missing-folder", lambda f: ["eval", "--real", f"{f['root']}/none", "--fake", f"{f['root']}/videos",
                                       "--out", f"{f['root']}/e.json", "--metrics", "temporal"],
     ["--real", "folder not found"]),
    ("eval-bad-metric", lambda f: ["eval", "--real", f["root"], "--fake", f["root"], "--out",
                                   f"{f['root']}/e.json", "--metrics", "fvd,lpips"], ["metrics", "lpips"]),
    ("eval-bad-protocol-value", lambda f: ["eval", "--real", f["root"], "--fake", f["root"], "--out",
                                           f"{f['root']}/e.json", "--metrics", "temporal", "--num-clips", "0"],
     ["protocol.num_clips", "0"]),
    ("eval-unknown-weights", lambda f: ["eval", "--real", f["root"], "--fake", f["root"], "--out",
                                        f"{f['root']}/e.json", "--metrics", "fvd", "--i3d", f"{f['root']}/i3d.pt"],
     ["i3d.pt", "sha256", "--allow-unknown-weights"]),
    ("encode-missing-model", lambda f: ["data", "encode", "--ckpt", f"{f['root']}/none.pt", "--data",
                                        f["root"], "--out", f"{f['root']}/lat"], ["none.pt", "not found"]),
    ("synth-bad-size", lambda f: ["data", "synth", "--out", f"{f['root']}/s", "--size", "12"], ["--size", "12"]),
    ("videos-missing-input", lambda f: ["data", "videos", "--input", f"{f['root']}/none", "--out",
                                        f"{f['root']}/v"], ["--input", "not found"]),
    ("videos-bad-labels-csv", lambda f: ["data", "videos", "--input", f"{f['root']}/videos", "--labels",
                                         f"{f['root']}/labels/labels.csv", "--out", f"{f['root']}/v"],
     ["labels.csv", "line 2.daynight", "dusk"]),
    ("videos-bad-clip-seconds", lambda f: ["data", "videos", "--input", f"{f['root']}/videos",
                                           "--clip-seconds", "-1", "--out", f"{f['root']}/v"], ["--clip-seconds"]),
    ("bdd100k-no-labels", lambda f: ["data", "bdd100k", "--labels", f"{f['root']}/empty", "--videos",
                                     f"{f['root']}/videos", "--out", f"{f['root']}/b"], ["empty", "--labels"]),
    ("nuscenes-no-tables", lambda f: ["data", "nuscenes", "--dataroot", f"{f['root']}/empty", "--out",
                                      f"{f['root']}/n"], ["empty", "--version"]),
    ("nuscenes-fixture-zero-scenes", lambda f: ["data", "nuscenes-fixture", "--out", f"{f['root']}/nf",
                                                "--scenes", "0"], ["--scenes", "0"]),
    ("train-bad-stage", lambda f: ["train", "--stage", "bogus"], ["--stage", "bogus"]),
    ("sample-missing-argument", lambda f: ["sample", "--out", f"{f['root']}/o"], ["required"]),
]


@pytest.mark.parametrize("build,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_exit_2(files, capsys, monkeypatch, build, expected):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    argv = build(files)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{cli._prog(argv)}: error: ") and "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]


def test_debug_flag_and_environment_show_the_traceback(files, monkeypatch):
    argv = _rollout(files, "--scenario", f"{files['root']}/bad.json")
    with pytest.raises(Exception, match="malformed JSON"):
        cli.main([*argv, "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(Exception, match="malformed JSON"):
        cli.main(argv)


def test_a_bug_keeps_its_traceback(monkeypatch):
    import drivesim.metrics.cli as eval_cli

    def broken(args):
        raise KeyError("a programming error")

    monkeypatch.setattr(eval_cli, "run", broken)
    with pytest.raises(KeyError):
        cli.main(["eval", "--real", "a", "--fake", "b", "--out", "c"])


def test_console_script_prints_one_line_and_exits_2(files):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(cli.DEBUG_ENV, None)
    cmd = [sys.executable, "-m", "drivesim.cli", "fit", "--config", f"{files['root']}/fit.yaml"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "model file not found" in lines[0] and "fit.model.init_args.autoencoder_path" in lines[0]
