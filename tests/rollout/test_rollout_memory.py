"""Constant memory: resident memory late in a long rollout is no higher than early on
(measured with RSS samples taken inside the loop, not timed)."""

import resource

import torch
from rollout_standins import StandinDecoder, StandinPredictor

from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.engine import RolloutJob, RolloutModels, run_rollout
from drivesim.rollout.scenario import NoBoxScenario

PAGE = resource.getpagesize()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def test_rss_does_not_grow_with_rollout_length(tmp_path):
    # 128x256 frames (96 KiB each): 640 output frames would be 60 MiB if anything kept them
    plan = RolloutPlan(seconds=64.0, model_fps=10.0, window=10, context=2)
    samples = []
    base = StandinPredictor()

    def predictor(ctx, cond, gen):
        samples.append(rss_mb())
        return base(ctx, cond, gen)

    job = RolloutJob(plan, NoBoxScenario(daynight=0), tmp_path / "o", seed=0, fingerprint="fp",
                     save_every=4)
    models = RolloutModels(predictor, StandinDecoder(scale=8), decode_overlap=1)
    run_rollout(job, models, torch.zeros(1, 1, 4, 16, 32), progress=False)
    n = len(samples)
    assert n == plan.num_segments == 80
    early = max(samples[n // 8: n // 4])  # after warm-up (allocator pools, encoder set-up)
    late = max(samples[3 * n // 4:])
    assert late - early < 15.0, f"RSS grew from {early:.1f} MiB to {late:.1f} MiB"
