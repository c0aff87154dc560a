"""GPU readiness without a GPU: every stage's base config, with the trainer configs `make train`
passes, parses as bf16-mixed DDP on GPUs, and runs one training step on CPU at reduced width
through `drivesim gpu-check`'s own stages (each stage's model file feeding the next)."""

import json
from pathlib import Path

import pytest
import yaml

from drivesim.cli import main
from drivesim.tools.chain import ChainSpec, available_stages, chain_stages
from drivesim.tools.gpu_check import check_stages, run_check

REPO = Path(__file__).resolve().parents[2]
TRAINED = ("autoencoder", "autoencoder_temporal", "image_ldm", "video_ldm", "interpolation", "upsampler")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _printed_config(argv, capsys) -> dict:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--print_config"])
    assert done.value.code in (None, 0), argv
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter")
def test_trainer_ddp_with_size_base_is_bf16_mixed_ddp_on_gpus_for_every_stage(tmp_path, capsys):
    stages = [s for s in chain_stages(ChainSpec(run=tmp_path / "run", data="synthetic", size="base", trainer="ddp"))
              if s.argv[0] == "fit"]
    assert [s.name for s in stages] == [s for s in TRAINED if s in available_stages(
        ChainSpec(run=tmp_path, data="synthetic", size="base"))]
    assert {"autoencoder", "autoencoder_temporal", "image_ldm", "video_ldm", "interpolation"} <= {s.name for s in stages}
    for stage in stages:  # the trainer config comes last and no flag after it overrides what it sets
        configs = [stage.argv[i + 1] for i, a in enumerate(stage.argv) if a == "--config"]
        assert configs[-1] == "configs/trainer/ddp.yaml", stage.name
        assert not {"--trainer.precision", "--trainer.strategy", "--trainer.accelerator"} & set(stage.argv)
    for stage in (stages[0], stages[3]):  # parsed: an image and a video stage
        trainer = _printed_config(stage.argv, capsys)["trainer"]
        assert trainer["precision"] == "bf16-mixed", stage.name
        assert trainer["accelerator"] == "gpu" and trainer["devices"] == -1, stage.name
        assert trainer["strategy"]["class_path"].endswith("DDPStrategy"), stage.name


@pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter")
def test_gpu_check_stages_parse_at_reduced_width(tmp_path, capsys):
    """Every check command is a valid config (the CPU step below runs them)."""
    for stage in check_stages(tmp_path, size="base", trainer="cpu", steps=1, warmup=0, narrow=True):
        config = _printed_config(stage.argv, capsys)
        assert config["trainer"]["max_steps"] == 1 and config["data"]["init_args"]["source"] == "synthetic"
        assert config["data"]["init_args"]["batch_size"] == 1, stage.name
        callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
        assert callbacks[-1] == "drivesim.training.throughput.ThroughputMeter", stage.name


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_base_config_trains_one_step_on_cpu_at_reduced_width(tmp_path):
    """About 15 s on an idle 2-core machine: six stages, each one step of its base config."""
    rows = run_check(tmp_path / "check", runner=lambda stage: main(stage.argv), size="base", trainer="cpu", steps=1,
                     warmup=0, narrow=True)
    assert [r["stage"] for r in rows] == [s for s in TRAINED if s in {r["stage"] for r in rows}]
    for row in rows:
        assert row["batches"] == 1 and row["device"] == "cpu" and row["batches_per_s"] > 0, row
        assert (tmp_path / "check" / row["stage"] / "model.safetensors").is_file(), row["stage"]
    assert json.loads((tmp_path / "check" / "gpu-check.json").read_text())["stages"] == rows
