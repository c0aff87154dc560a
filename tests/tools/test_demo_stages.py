"""`drivesim demo`'s stages parse with the real command parsers (config keys, flags), without
training: a typo in a stage's argv or a renamed config key fails here, not 10 minutes into a demo."""

import argparse
import importlib
from pathlib import Path

import pytest
import yaml

from drivesim.cli import COMMANDS, DATA_COMMANDS, main
from drivesim.tools.demo import demo_stages


def _tool_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    if argv[0] == "data":
        module, rest = DATA_COMMANDS[argv[1]][0], argv[2:]
    else:
        module, rest = COMMANDS[argv[0]][0], argv[1:]
    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(module).add_arguments(parser)
    return parser, rest


@pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter")
def test_every_demo_stage_parses(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # configs/ paths are relative to the repo
    stages = demo_stages(tmp_path / "runs")
    assert [s.name for s in stages] == ["data", "autoencoder", "autoencoder_temporal", "latents", "image_ldm",
                                        "video_ldm", "interpolation", "upsampler", "rollouts", "cascade", "ego", "eval"]
    for stage in stages:
        if stage.argv[0] == "fit":
            with pytest.raises(SystemExit) as done:
                main([*stage.argv, "--print_config"])
            assert done.value.code in (None, 0), stage.name
            config = yaml.safe_load(capsys.readouterr().out)
            model_file = config["model"]["init_args"]["model_file"]
            assert model_file == str(stage.outputs[0]), stage.name  # the override reached the model
            assert config["trainer"]["max_time"], stage.name
            # a stage re-runs only when unfinished or forced, and must then replace its own output
            assert config["model"]["init_args"]["overwrite"] is True, stage.name
        else:
            parser, rest = _tool_parser(stage.argv)
            args = parser.parse_args(rest)  # raises on an unknown or malformed flag
            if stage.name in ("data", "latents", "rollouts", "cascade", "ego", "eval"):
                assert args.overwrite, stage.name
    rollout = next(s for s in stages if s.name == "rollouts")
    assert "--debug-video" in rollout.argv  # the README promises the boxes-drawn video
    i = rollout.argv.index("--guidance-boxes")  # box guidance: recall 0.15 -> 0.40 in the demo rollouts
    assert float(rollout.argv[i + 1]) == 2.0
    # the 2-minute drives go through one interpolation pass and the upsampler (8 fps, 4x size;
    # scored at the 2 fps key frames); the cascade drive runs both passes; the ego drive guides
    # the stop-and-go + curve preset's motion
    assert rollout.argv[rollout.argv.index("--interp-passes") + 1] == "1" and "--no-upsample" not in rollout.argv
    cascade = next(s for s in stages if s.name == "cascade")
    assert cascade.argv[cascade.argv.index("--interp-passes") + 1] == "2" and "--no-upsample" not in cascade.argv
    ego = next(s for s in stages if s.name == "ego")
    assert ego.argv[ego.argv.index("--scenario") + 1].endswith(":stop_and_go_curve")
    assert float(ego.argv[ego.argv.index("--guidance-ego") + 1]) > 1.0
    # real clips are scored at the rollouts' frame rate (the video config's), not at 10 fps
    ev = next(s for s in stages if s.name == "eval")
    video_fps = yaml.safe_load(Path("configs/video_ldm/tiny.yaml").read_text())["data"]["init_args"]["fps"]
    assert float(ev.argv[ev.argv.index("--fps") + 1]) == float(video_fps) == 2.0
    # the extra drives stay out of the folder the eval stage scores
    scored = Path(ev.argv[ev.argv.index("--fake") + 1])
    for extra in (cascade, ego):
        out = Path(extra.argv[extra.argv.index("--out") + 1])
        assert scored != out and scored not in out.parents, extra.name


def test_demo_budget_scales_the_training_stages(tmp_path):
    full = {s.name: s for s in demo_stages(tmp_path, minutes=20.0)}
    half = {s.name: s for s in demo_stages(tmp_path, minutes=10.0)}
    time_of = lambda s: s.argv[s.argv.index("--trainer.max_time") + 1]  # noqa: E731
    assert time_of(full["autoencoder"]) == "00:00:03:00" and time_of(half["autoencoder"]) == "00:00:01:30"
