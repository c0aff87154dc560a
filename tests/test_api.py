"""The Python API: the docs/api.md example runs as written; streaming equals the written clip."""

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "rollout"))
from rollout_tiny_models import write_tiny_models

from drivesim import RolloutConfig, Simulator
from drivesim.data.clip_format import read_clip
from drivesim.utils.io import DriveSimInputError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def demo_layout(root: Path, models: dict) -> Path:
    """The stage folders `make demo` writes, holding the tiny random-weight models."""
    from drivesim.models.model_files import load_model_file, save_model_file

    run = root / "runs" / "demo"
    for sub, key in (("autoencoder_temporal", "ae"), ("video_ldm", "video"), ("image_ldm", "image")):
        (run / sub).mkdir(parents=True)
        shutil.copy(models[key], run / sub / "model.pt")
    hparams, state = load_model_file(models["image"], "ldm")  # as a fit records it: 16x32 frames
    save_model_file(run / "image_ldm" / "model.pt", "ldm", {**hparams, "latent_size": [8, 16]}, state,
                    overwrite=True)
    return run


def test_docs_api_example_runs(tmp_path, models, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/api.md has no python example"
    demo_layout(tmp_path, models)
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_api"})
    printed = capsys.readouterr().out
    assert "(2, 16, 32, 3)" in printed  # sample_frames: 2 frames at the image model's size
    clip = read_clip(tmp_path / "night_drive")
    assert clip.num_frames == 20 and clip.labels["daynight"] == "night"


def test_streamed_frames_equal_the_written_drive(tmp_path, models):
    sim = Simulator.from_files(autoencoder=models["ae"], video=models["video"], image=models["image"])
    config = RolloutConfig(seconds=4, steps=2, size="16x32", seed=3)
    streamed = list(sim.rollout("synthetic:2", config=config))
    again = list(sim.rollout("synthetic:2", config=config, out=tmp_path / "out"))
    assert [f.index for f in streamed] == list(range(16)) and streamed[-1].time == pytest.approx(15 / 4)
    assert all(np.array_equal(a.rgb, b.rgb) and np.array_equal(a.boxes, b.boxes) for a, b in zip(streamed, again))
    clip = read_clip(tmp_path / "out")
    assert clip.num_frames == 16
    boxes, classes, _ = clip.box_arrays([5], max_boxes=16)
    assert np.allclose(boxes[0][classes[0] > 0], streamed[5].boxes, atol=1e-6)
    other = list(sim.rollout("synthetic:2", config=RolloutConfig(seconds=4, steps=2, size="16x32", seed=4)))
    assert not np.array_equal(other[-1].rgb, streamed[-1].rgb)  # the seed matters


def test_rollout_frames_stream_before_the_drive_ends(models):
    sim = Simulator.from_files(autoencoder=models["ae"], video=models["video"], image=models["image"])
    calls = []
    real = sim.callables

    def counting(config):
        out = real(config)
        predict = out.predict_segment
        out.predict_segment = lambda *a: calls.append(1) or predict(*a)
        return out

    sim.callables = counting
    frames = sim.rollout("none", config=RolloutConfig(seconds=30, steps=1, size="16x32"))
    first = next(frames)
    # the first frame comes once the decoder has its right-hand context (a segment or two), not at the end
    assert first.index == 0 and len(calls) <= 3 and sim.plan(RolloutConfig(seconds=30)).num_segments > 20
    frames.close()


def test_simulator_refuses_models_in_the_wrong_role(models):
    with pytest.raises(DriveSimInputError, match="not a prediction"):
        Simulator.from_files(autoencoder=models["ae"], video=models["image"])
    with pytest.raises(DriveSimInputError, match="autoencoder"):
        Simulator.from_files(autoencoder=models["video"], video=models["video"])
    sim = Simulator.from_files(autoencoder=models["ae"], video=models["video"])
    with pytest.raises(DriveSimInputError, match="image model"):
        sim.sample_frames(n=1)


@pytest.mark.parametrize("field,value", [("seconds", -5), ("seconds", float("nan")), ("steps", 0),
                                         ("sampler", "euler"), ("daynight", "dusk"), ("size", "64by128"),
                                         ("start", "video:x"), ("guidance_schedule", "cosine")])
def test_rollout_config_names_the_bad_field(field, value):
    with pytest.raises(DriveSimInputError, match=f"field '{field}'"):
        RolloutConfig(**{field: value})


def test_rollout_cli_flags_are_the_config_fields():
    import argparse
    from dataclasses import fields

    from drivesim.rollout.cli import add_arguments, rollout_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--seconds", "7.5", "--guidance-context", "2", "--debug-video", "--size", "8x16",
                              "--steps", "3", "--out", "x"])
    config = rollout_config(args, "night")
    assert (config.seconds, config.guidance_context, config.debug_video, config.size, config.steps,
            config.daynight) == (7.5, 2.0, True, "8x16", 3, "night")
    defaults = rollout_config(parser.parse_args([]), None)
    assert defaults == RolloutConfig()  # every flag defaults to the dataclass default
    assert {a.dest for a in parser._actions} >= {f.name for f in fields(RolloutConfig)}


def test_import_is_lazy():
    code = "import sys, drivesim; assert 'drivesim.api' not in sys.modules and 'torch' not in sys.modules"
    assert os.system(f'{sys.executable} -c "{code}"') == 0
    assert torch  # the API itself needs torch
