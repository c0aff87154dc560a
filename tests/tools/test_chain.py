"""The training chain's commands, run folder and refusals, without training: stages run through a
stand-in runner that only writes each stage's outputs (tests/tools/test_train_e2e.py trains)."""

import json
import shutil
from pathlib import Path

import pytest

from drivesim.inference.run_folder import resolve_run
from drivesim.tools.chain import ChainSpec, chain_stages
from drivesim.tools.pipeline import StageConflict
from drivesim.tools.run_info import rollout_args
from drivesim.tools.runs import run_chain
from drivesim.utils.io import DriveSimInputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the packaged configs/


def _videos(tmp_path) -> Path:
    folder = tmp_path / "footage"
    folder.mkdir(exist_ok=True)
    (folder / "a.mp4").write_bytes(b"")  # detection looks at names only; conversion is tested in test_prepare
    return folder


def _flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def _outputs_only(stage) -> int:
    """Stand-in runner: a stage 'trains' by writing its outputs."""
    for path in stage.outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stage.name)
    return 0


def test_video_data_chain_commands(tmp_path):
    run = tmp_path / "run"
    stages = {s.name: s for s in chain_stages(ChainSpec(run=run, data=str(_videos(tmp_path))))}
    assert list(stages) == ["data", "autoencoder", "autoencoder_temporal", "latents", "image_ldm", "video_ldm",
                            "interpolation", "upsampler"]
    data = stages["data"].argv
    assert data[:2] == ["data", "prepare"] and _flag(data, "--size") == "64x128"
    assert _flag(data, "--hr-out") == str(run / "data_hr") and _flag(data, "--hr-size") == "256x512"
    assert _flag(data, "--clip-seconds") == "4"  # the video stage's 8 frames at 2 fps span 3.5 s
    ae_t = str(run / "autoencoder_temporal" / "model.safetensors")
    assert _flag(stages["latents"].argv, "--ckpt") == ae_t
    expected_init = {"autoencoder_temporal": run / "autoencoder" / "model.safetensors",
                     "video_ldm": run / "image_ldm" / "model.safetensors",
                     "interpolation": run / "image_ldm" / "model.safetensors"}
    roots = {"autoencoder": run / "data", "autoencoder_temporal": run / "data", "image_ldm": run / "latents",
             "video_ldm": run / "latents", "interpolation": run / "latents", "upsampler": run / "data_hr"}
    for name, root in roots.items():
        argv = stages[name].argv
        assert argv[:3] == ["fit", "--config", f"configs/{ {'autoencoder': 'autoencoder/tiny', 'autoencoder_temporal': 'autoencoder/temporal_tiny', 'image_ldm': 'image_ldm/tiny', 'video_ldm': 'video_ldm/tiny', 'interpolation': 'video_ldm/interp_tiny', 'upsampler': 'upsampler/tiny'}[name] }.yaml"]
        assert _flag(argv, "--data.init_args.root") == str(root), name
        assert _flag(argv, "--model.init_args.model_file") == str(run / name / "model.safetensors")
        assert _flag(argv, "--model.init_args.init_from") == (str(expected_init[name]) if name in expected_init
                                                              else None), name
        assert _flag(argv, "--model.init_args.autoencoder_path") == (ae_t if name in ("image_ldm", "video_ldm",
                                                                                      "interpolation") else None)
        # footage without boxes: the LDM stages always see the learned null box token
        assert _flag(argv, "--model.init_args.drop_boxes") == ("1.0" if "ldm" in name or name == "interpolation"
                                                               else None), name
        assert argv[-2:] == ["--ckpt_path", "last"] and stages[name].workdir == run / name
        assert "--trainer.max_time" not in argv  # the size config's own length unless a budget is given


def test_synthetic_chain_exports_the_world_and_keeps_boxes(tmp_path):
    stages = {s.name: s for s in chain_stages(ChainSpec(run=tmp_path / "run", data="synthetic"))}
    assert stages["data"].argv[:2] == ["data", "synth"] and _flag(stages["data"].argv, "--size") == "64x128"
    assert all("--model.init_args.drop_boxes" not in s.argv for s in stages.values())
    assert "--data.init_args.root" not in stages["upsampler"].argv  # the config renders the world at its size
    # windows faster than the 10-fps export (interpolation: 8 and 32 fps) render the world too
    assert _flag(stages["interpolation"].argv, "--data.init_args.source") == "synthetic"
    assert _flag(stages["video_ldm"].argv, "--data.init_args.source") == "latents"


def test_budgets_and_trainer_configs(tmp_path):
    spec = ChainSpec(run=tmp_path / "run", data="synthetic", minutes=14.0, stage_minutes={"video_ldm": 1.0},
                     trainer="ddp", extra=("--trainer.num_nodes", "2"))
    stages = {s.name: s for s in chain_stages(spec)}
    assert _flag(stages["autoencoder"].argv, "--trainer.max_time") == "00:00:03:30"  # share 3.5 of 14
    assert _flag(stages["video_ldm"].argv, "--trainer.max_time") == "00:00:01:00"
    for name in ("autoencoder", "image_ldm", "upsampler"):
        argv = stages[name].argv
        assert argv[3:5] == ["--config", "configs/trainer/ddp.yaml"] and "--trainer.num_nodes" in argv
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("trainer:\n  accelerator: cpu\n")
    assert str(yaml_file) in chain_stages(ChainSpec(run=tmp_path / "r", data="synthetic", trainer=str(yaml_file)))[1].argv
    with pytest.raises(DriveSimInputError, match="TRAINER.*'dpp'"):
        chain_stages(ChainSpec(run=tmp_path / "r", data="synthetic", trainer="dpp"))
    with pytest.raises(DriveSimInputError, match="SIZE.*'huge'"):
        chain_stages(ChainSpec(run=tmp_path / "r", data="synthetic", size="huge"))


def test_a_run_writes_its_manifest_and_rollout_defaults(tmp_path):
    run = tmp_path / "run"
    results = run_chain(ChainSpec(run=run, data=str(_videos(tmp_path))), runner=_outputs_only)
    assert [r.skipped for r in results] == [False] * 8
    doc = json.loads((run / "run.json").read_text())
    assert doc["size"] == "tiny" and doc["data"]["kind"] == "videos" and not doc["data"]["boxes"]
    files = resolve_run(run)
    assert files["autoencoder"] == run / "autoencoder_temporal" / "model.safetensors"
    assert files["video"] == run / "video_ldm" / "model.safetensors" and "upsampler" in files
    assert rollout_args(run) == ["--scenario", "none", "--start", f"clip:{run / 'start'}"]
    again = run_chain(ChainSpec(run=run, data=str(_videos(tmp_path))), runner=_outputs_only)
    assert all(r.skipped for r in again)  # a re-run continues at the first unfinished stage: none


def test_a_rerun_continues_at_the_first_unfinished_stage(tmp_path):
    run = tmp_path / "run"
    spec = ChainSpec(run=run, data="synthetic")
    run_chain(spec, runner=_outputs_only)
    (run / "video_ldm" / "model.safetensors").unlink()  # as if stopped during the video stage
    ran = [r.name for r in run_chain(spec, runner=_outputs_only) if not r.skipped]
    assert ran == ["video_ldm", "interpolation", "upsampler"]


def test_one_stage_takes_earlier_files_from_the_run_folder(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DriveSimInputError, match="latents/manifest.jsonl.*train stage latents first"):
        run_chain(ChainSpec(run=run, data="synthetic", stages=("video_ldm",)), runner=_outputs_only)
    run_chain(ChainSpec(run=run, data="synthetic"), runner=_outputs_only)
    before = {p: p.read_text() for p in run.glob("*/model.safetensors")}
    only = run_chain(ChainSpec(run=run, data="synthetic", stages=("video_ldm",)), runner=_outputs_only)
    assert [(r.name, r.skipped) for r in only] == [("video_ldm", True)]  # finished: kept
    redone = run_chain(ChainSpec(run=run, data="synthetic", stages=("video_ldm",)), force=True, runner=_outputs_only)
    assert [(r.name, r.skipped) for r in redone] == [("video_ldm", False)]
    assert (run / ".previous" / "video_ldm-1" / "model.safetensors").read_text() == "video_ldm"  # moved, not lost
    assert {p: p.read_text() for p in run.glob("*/model.safetensors")} == before


def test_init_starts_every_stage_from_another_run(tmp_path):
    other = tmp_path / "world"
    run_chain(ChainSpec(run=other, data="synthetic"), runner=_outputs_only)
    stages = {s.name: s for s in chain_stages(ChainSpec(run=tmp_path / "mine", data="synthetic", init=other))}
    ae = stages["autoencoder"].argv
    assert _flag(ae, "--model.init_args.init_from") == str(other / "autoencoder" / "model.safetensors")
    assert _flag(ae, "--model.init_args.autoencoder") == "null"  # the architecture comes from the file
    assert _flag(stages["image_ldm"].argv, "--model.init_args.init_from") == str(other / "image_ldm" / "model.safetensors")
    mine = tmp_path / "mine"
    for name, earlier in (("autoencoder_temporal", "autoencoder"), ("video_ldm", "image_ldm"),
                          ("interpolation", "image_ldm")):  # this run's earlier stage + the other's added layers
        argv = stages[name].argv
        assert _flag(argv, "--model.init_args.init_from") == str(mine / earlier / "model.safetensors")
        assert _flag(argv, "--model.init_args.temporal_from") == str(other / name / "model.safetensors")
    up = stages["upsampler"].argv
    assert _flag(up, "--model.init_args.init_from") == str(other / "upsampler" / "model.safetensors")
    assert _flag(up, "--model.init_args.upsampler") == "null"
    plain = {s.name: s.argv for s in chain_stages(ChainSpec(run=mine, data="synthetic"))}
    assert not any("--model.init_args.temporal_from" in argv for argv in plain.values())
    assert "--model.init_args.init_from" not in plain["upsampler"]
    (other / "interpolation" / "model.safetensors").unlink()
    with pytest.raises(DriveSimInputError, match="field 'INIT'.*no interpolation model"):
        chain_stages(ChainSpec(run=mine, data="synthetic", init=other))
    run_chain(ChainSpec(run=tmp_path / "base_run", data="synthetic", size="base", stages=("data",)),
              runner=_outputs_only)
    with pytest.raises(DriveSimInputError, match="size 'base'"):
        run_chain(ChainSpec(run=tmp_path / "x", data="synthetic", init=tmp_path / "base_run"), runner=_outputs_only)
    with pytest.raises(DriveSimInputError, match="does not exist"):
        run_chain(ChainSpec(run=tmp_path / "x", data="synthetic", init=tmp_path / "nope"), runner=_outputs_only)


def test_mismatched_run_folders_are_refused_and_nothing_is_lost(tmp_path):
    run, configs = tmp_path / "run", tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    run_chain(ChainSpec(run=run, data="synthetic", config_root=configs), runner=_outputs_only)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(DriveSimInputError, match="trained at size 'tiny'.*field 'size'|field 'size'.*tiny"):
        run_chain(ChainSpec(run=run, data="synthetic", size="base", config_root=configs), runner=_outputs_only)
    with pytest.raises(DriveSimInputError, match="field 'data'.*trained on DATA=synthetic"):
        run_chain(ChainSpec(run=run, data=str(_videos(tmp_path)), config_root=configs), runner=_outputs_only)
    config = configs / "image_ldm" / "tiny.yaml"
    config.write_text(config.read_text().replace("lr: 1.2e-3", "lr: 1.0e-3"))
    with pytest.raises(StageConflict, match=f"stage image_ldm .*config {config} changed"):
        run_chain(ChainSpec(run=run, data="synthetic", config_root=configs), runner=_outputs_only)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DriveSimInputError, match="not a drivesim run folder"):
        run_chain(ChainSpec(run=tmp_path / "foreign", data="synthetic"), runner=_outputs_only)
    forced = run_chain(ChainSpec(run=run, data="synthetic", config_root=configs), on_change="rerun",
                       runner=_outputs_only)
    assert [r.name for r in forced if not r.skipped] == ["image_ldm", "video_ldm", "interpolation", "upsampler"]


def test_a_clip_folder_is_used_in_place(tmp_path, capsys):
    from drivesim.cli import main

    clips = tmp_path / "clips"
    assert main(["data", "synth", "--out", str(clips), "--clips", "2", "--seconds", "1", "--fps", "10",
                 "--size", "32x64", "--val-fraction", "0", "--no-progress"]) == 0
    run = tmp_path / "run"
    stages = {s.name: s for s in chain_stages(ChainSpec(run=run, data=str(clips)))}
    assert _flag(stages["autoencoder"].argv, "--data.init_args.root") == str(clips)
    assert _flag(stages["autoencoder"].argv, "--data.init_args.val_split") == "train"  # the set has no val split
    assert "upsampler" not in stages  # 32x64 clips cannot train a 256x512 upsampler
    assert "--model.init_args.drop_boxes" not in stages["image_ldm"].argv  # the world's clips carry boxes
    run_chain(ChainSpec(run=run, data=str(clips), stages=("data",)), runner=_outputs_only)
    assert "upsampler left out: the clips are 32x64" in capsys.readouterr().out


def test_train_command_line(tmp_path, capsys):
    from drivesim.cli import main
    from drivesim.tools.train import init_path, parse_minutes, run_path

    assert parse_minutes(["20", "video_ldm=3"]) == (20.0, {"video_ldm": 3.0})
    with pytest.raises(DriveSimInputError, match="--minutes.*'a lot'"):
        parse_minutes(["a lot"])
    assert run_path("synthetic", "tiny", None, "runs") == Path("runs/synthetic-tiny")
    assert run_path(str(tmp_path / "dashcam"), "base", None, "runs") == Path("runs/dashcam-base")
    assert init_path("world", "runs") == Path("runs/world") and init_path(str(tmp_path), "runs") == tmp_path
    assert main(["train", "--data", str(tmp_path / "nothing"), "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drivesim train: error:") and "DATA folder not found" in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing created for a bad DATA
