"""Constant memory: resident memory late in a long rollout is no higher than early on
(RSS samples taken inside the loop, not timed); with the cascade on (two interpolation passes
and the upsampler), the arrays Python holds do not grow, and a leaking decoder is caught."""

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


def _array_key(x, np) -> tuple[int, int] | None:
    """(storage key, bytes) of a CPU tensor or numpy array; None for anything else, including
    objects that cannot be inspected (dead weak proxies, fake tensors left by compile tests)."""
    try:
        if isinstance(x, torch.Tensor) and x.device.type == "cpu":
            return x.untyped_storage().data_ptr(), x.untyped_storage().nbytes()
        if isinstance(x, np.ndarray):
            base = x if x.base is None else x.base
            return id(base), getattr(base, "nbytes", x.nbytes)
    except (ReferenceError, RuntimeError, NotImplementedError):  # a dead proxy, a tensor without storage
        return None
    return None


def live_array_mb() -> float:
    """MiB of every tensor and numpy array reachable from Python objects (each storage once):
    what the process holds on purpose, without the allocator's and encoder's noise in RSS."""
    import gc
    import warnings
    import weakref

    import numpy as np

    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance on deprecated module-level objects warns
        warnings.simplefilter("ignore", FutureWarning)
        for obj in gc.get_objects():
            if type(obj) in weakref.ProxyTypes:  # may be dead: touching it raises
                continue
            for x in (obj, *(gc.get_referents(obj) if isinstance(obj, (list, tuple, dict)) else ())):
                found = _array_key(x, np)
                if found is not None and found[0] not in seen:
                    seen.add(found[0])
                    total += found[1]
    return total / 2**20


def cascade_rollout(tmp_path, keep_frames: bool) -> list[float]:
    """Both interpolation passes (x16) and the chunked upsampler (x4) on the stream, 128x256
    output frames (96 KiB each as uint8); live arrays sampled every 16th interpolation window.
    ``keep_frames``: a decoder that leaks every frame it makes (the control)."""
    from rollout_standins import StandinUpsampler, standin_interpolate

    plan = RolloutPlan(seconds=40.0, model_fps=2.0, window=6, context=2, interp_factor=16)
    samples, kept, calls = [], [], [0]

    def interpolate(pair, cond, gen):
        calls[0] += 1
        if calls[0] % 16 == 0:
            samples.append(live_array_mb())
        return standin_interpolate(pair, cond, gen)

    decoder = StandinDecoder(scale=8)

    def decode(z, *args, **kwargs):
        out = decoder(z, *args, **kwargs)
        if keep_frames:
            kept.append(out.clone())
        return out

    job = RolloutJob(plan, NoBoxScenario(daynight=0), tmp_path / f"o{int(keep_frames)}", seed=0, fingerprint="fp",
                     save_every=4)
    models = RolloutModels(StandinPredictor(), decode, [interpolate, interpolate], decode_overlap=1,
                           interp_factors=(4, 4), upsample=StandinUpsampler(scale=4), upsample_chunk=8,
                           upsample_context=2)
    res = run_rollout(job, models, torch.zeros(1, 1, 4, 4, 8), progress=False)
    assert res.num_frames == plan.num_output_frames == 1280
    assert calls[0] == 80 + 4 * 80  # one window per key-frame gap in pass 1, four per gap in pass 2
    return samples


def test_held_arrays_do_not_grow_with_the_cascade_on(tmp_path):
    """RSS moves by +-100 MiB here (x264 encoders and large transient buffers come and go), so
    this counts the arrays Python holds instead; a decoder that keeps its frames is caught."""
    samples = cascade_rollout(tmp_path, keep_frames=False)
    n = len(samples)
    early, late = max(samples[n // 8: n // 4]), max(samples[3 * n // 4:])
    assert late - early < 2.0, f"held arrays grew from {early:.1f} MiB to {late:.1f} MiB"
    leaky = cascade_rollout(tmp_path, keep_frames=True)
    assert max(leaky[3 * n // 4:]) - max(leaky[n // 8: n // 4]) > 5.0  # the measure sees a leak
