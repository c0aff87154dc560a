"""Ego motion in rollouts: each window carries the scenario's commanded ego motion, the prediction
model is guided on it (guidance_ego), models without it ignore it, and the rollout's clip.json and
frames record the command per frame."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from rollout_standins import StandinDecoder, StandinPredictor
from rollout_tiny_models import write_tiny_models

from drivesim import RolloutConfig, Simulator
from drivesim.data.clip_format import read_clip
from drivesim.data.ego_presets import preset
from drivesim.inference import load_model
from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.engine import RolloutJob, RolloutModels, run_rollout, segment_condition
from drivesim.rollout.sampler import PredictionSampler
from drivesim.rollout.scenario import NoBoxScenario
from drivesim.utils.io import DriveSimInputError

START = torch.linspace(-1, 1, 4 * 2 * 4).view(1, 1, 4, 2, 4)  # [1, S0=1, C, h, w]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def test_segment_condition_carries_the_commanded_ego_motion():
    scenario = NoBoxScenario(daynight=0, ego_track=preset("stop_and_go"))
    idx = [0, 24, 30, 40, 50]  # output frames at 2 fps: 0 s, 12 s (standing), 15 s, 20 s, 25 s
    cond = segment_condition(scenario, idx, 2.0, 1)
    want = scenario.ego_at(idx, 2.0)
    assert cond.ego_speed.shape == (1, 5) and cond.ego_known.all()
    np.testing.assert_allclose(cond.ego_speed[0].numpy(), want.speed)
    assert cond.ego_speed[0, 1] == 0.0 and cond.ego_speed[0, 0] == 12.0
    plain = segment_condition(NoBoxScenario(daynight=0), idx, 2.0, 1)
    assert plain.ego_speed is None and plain.ego_known is None  # no known frame: no ego at all


def test_rollout_clip_records_the_command_per_frame(tmp_path):
    scenario = NoBoxScenario(daynight=0, ego_track=preset("stop_and_go"))
    plan = RolloutPlan(seconds=6.0, model_fps=4.0, window=6, context=2)
    seen = []

    def predict(context, cond, generator):
        seen.append(cond.ego_speed)
        return StandinPredictor()(context, cond, generator)

    job = RolloutJob(plan, scenario, tmp_path / "out", seed=0, fingerprint="fp")
    run_rollout(job, RolloutModels(predict, StandinDecoder(), decode_overlap=1), START, progress=False)
    clip = read_clip(tmp_path / "out")
    recorded = clip.ego_arrays(range(clip.num_frames))
    want = scenario.ego_at(range(clip.num_frames), 4.0)
    assert recorded.known.all() and clip.num_frames == 24
    np.testing.assert_allclose(recorded.speed, want.speed, atol=1e-4)
    np.testing.assert_allclose(recorded.yaw_rate, want.yaw_rate, atol=1e-5)
    assert all(s is not None and s.shape == (1, 6) for s in seen)
    plain = tmp_path / "plain"
    run_rollout(RolloutJob(plan, NoBoxScenario(daynight=0), plain, seed=0, fingerprint="fp"),
                RolloutModels(StandinPredictor(), StandinDecoder(), decode_overlap=1), START, progress=False)
    rows = json.loads((plain / "clip.json").read_text())["annotations"]
    assert all("ego" not in row for row in rows) and not read_clip(plain).has_ego


def test_prediction_is_guided_on_the_ego_motion(ckpts):
    """The ego-conditioned model reacts to the command; guidance_ego 0 is the ego-dropped model
    (the null embedding, as for unknown motion); a model without ego ignores it."""
    model = load_model(ckpts["video"], "prediction")
    scenario = NoBoxScenario(daynight=0, ego_track=preset("stop_and_go"))
    moving = segment_condition(scenario, list(range(6)), 2.0, 2)  # 12 m/s
    standing = segment_condition(scenario, list(range(20, 26)), 2.0, 2)  # 0 m/s
    ctx = torch.randn(1, 2, 4, 8, 16, generator=torch.Generator().manual_seed(1))

    def run(sampler, cond):
        return sampler(ctx, cond, torch.Generator().manual_seed(0))

    plain = PredictionSampler(model, steps=2, guidance_context=1.0)
    a, b = run(plain, moving), run(plain, standing)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3
    unknown = run(plain, replace(moving, ego_speed=None, ego_yaw_rate=None, ego_known=None))
    dropped = run(PredictionSampler(model, steps=2, guidance_context=1.0, guidance_ego=0.0), moving)
    torch.testing.assert_close(dropped, unknown, atol=1e-4, rtol=1e-4)
    guided = run(PredictionSampler(model, steps=2, guidance_context=1.0, guidance_ego=3.0), moving)
    assert (guided[:, 2:] - a[:, 2:]).abs().max() > 1e-3
    blind = replace(model, network=type(model.network)(**{**model.network.config, "use_ego": False}))
    blind.network.load_state_dict({k: v for k, v in model.network.state_dict().items()
                                   if not k.startswith("ego_encoder.")})
    blind_sampler = PredictionSampler(blind, steps=2, guidance_context=1.0, guidance_ego=3.0)
    assert blind_sampler._cond(moving).ego_speed is None
    torch.testing.assert_close(run(blind_sampler, moving), run(blind_sampler, standing))


def test_api_frames_and_clip_carry_the_ego_track(tmp_path, ckpts):
    sim = Simulator.from_files(autoencoder=ckpts["ae"], video=ckpts["video"], image=ckpts["image"])
    config = RolloutConfig(seconds=3, steps=2, size="16x32", guidance_ego=2.0)
    frames = list(sim.rollout("synthetic:2:stop_and_go", config=config, out=tmp_path / "drive"))
    assert [f.ego_speed for f in frames[:3]] == pytest.approx([12.0] * 3, abs=1e-3)
    assert all(f.ego_yaw_rate is not None for f in frames)
    clip = read_clip(tmp_path / "drive")
    assert clip.labels["guidance_ego"] == 2.0
    np.testing.assert_allclose(clip.ego_arrays(range(clip.num_frames)).speed, [f.ego_speed for f in frames],
                               atol=1e-4)
    # synthetic:SEED has the world driver's motion; none has no ego motion at all
    assert all(f.ego_speed is None for f in sim.rollout("none", config=replace(config, seconds=1)))
    with pytest.raises(DriveSimInputError, match="guidance_ego"):
        RolloutConfig(guidance_ego="strong")
