"""Kill-and-resume: a rollout process SIGKILLed mid-way, resumed, equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from rollout_standins import StandinDecoder, StandinPredictor, standin_interpolate

from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.engine import RolloutJob, RolloutModels, run_rollout
from drivesim.rollout.scenario import NoBoxScenario

SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, sys.argv[3])
    from drivesim.rollout.chaining import RolloutPlan
    from drivesim.rollout.engine import RolloutJob, RolloutModels, run_rollout
    from drivesim.rollout.scenario import NoBoxScenario
    from rollout_standins import StandinDecoder, StandinPredictor, standin_interpolate

    kill_at, calls = int(sys.argv[2]), [0]
    base = StandinPredictor()

    def predictor(ctx, cond, gen):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks
        return base(ctx, cond, gen)

    plan = RolloutPlan(seconds=9.0, model_fps=4.0, window=6, context=2, interp_factor=2)
    job = RolloutJob(plan, NoBoxScenario(daynight=1), sys.argv[1], seed=11, fingerprint="fp",
                     save_every=3, debug_video=True)
    models = RolloutModels(predictor, StandinDecoder(), standin_interpolate, decode_overlap=1)
    run_rollout(job, models, torch.zeros(1, 1, 4, 2, 4), progress=False)
""")


def job_and_models(out):
    plan = RolloutPlan(seconds=9.0, model_fps=4.0, window=6, context=2, interp_factor=2)
    job = RolloutJob(plan, NoBoxScenario(daynight=1), out, seed=11, fingerprint="fp", save_every=3,
                     debug_video=True)
    return job, RolloutModels(StandinPredictor(), StandinDecoder(), standin_interpolate, decode_overlap=1)


def test_sigkill_mid_rollout_then_resume_is_byte_identical(tmp_path):
    ref = tmp_path / "ref"
    run_rollout(*job_and_models(ref), torch.zeros(1, 1, 4, 2, 4), progress=False)
    out = tmp_path / "out"
    # killed inside the last segment (9 of 9): states were saved after segments 3 and 6;
    # the chunk written after the last state (segment 7) must be discarded and re-made
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), "9",
                           str(Path(__file__).parent)], capture_output=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (out / "frames.mp4").exists() and (out / ".rollout" / "chunk_000007.mp4").exists()
    job, models = job_and_models(out)
    res = run_rollout(job, models, None, resume=True, progress=False)
    assert res.resumed_from == 6
    for name in ("frames.mp4", "debug.mp4"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert res.num_frames == job.plan.num_output_frames == 72
