"""Chaining arithmetic: exact frame and segment counts for many durations, fps, T, S, r."""

import itertools
import math

import pytest

from drivesim.rollout.chaining import RolloutPlan


def simulate(plan: RolloutPlan) -> tuple[int, list[tuple[int, int, int]]]:
    """Step the chain one segment at a time, the way the loop does, independently of the plan's
    closed forms: returns (key frames produced, [(window start, context, new frames)])."""
    keys, spans = plan.first_context, []
    while keys < plan.num_key_frames:
        ctx = plan.first_context if not spans else plan.context
        spans.append((keys - ctx, ctx, plan.window - ctx))
        keys += plan.window - ctx
    return keys, spans


CASES = list(itertools.product(
    [0.1, 0.5, 1.0, 1.3, 2.0, 7.25, 30.0, 120.0, 300.0],  # seconds
    [1.875, 2.0, 3.0, 7.5, 10.0],  # model fps
    [(3, 1), (5, 2), (10, 2), (10, 3), (16, 2)],  # (T, S)
    [1, 2, 4],  # interpolation factor
    [1, 2],  # first-segment context
))


@pytest.mark.parametrize("seconds,fps,ts,r,s0", CASES)
def test_plan_matches_step_by_step_chain(seconds, fps, ts, r, s0):
    t, s = ts
    if s0 >= t:
        return
    plan = RolloutPlan(seconds=seconds, model_fps=fps, window=t, context=s, first_context=s0,
                       interp_factor=r)
    n_out = plan.num_output_frames
    assert n_out == max(1, round(seconds * fps * r))
    # enough key frames to cover every output frame, and not one more than needed
    k = plan.num_key_frames
    assert (k - 1) * r + 1 >= n_out
    assert k == 1 or (k - 2) * r + 1 < n_out
    produced, spans = simulate(plan)
    assert plan.num_segments == len(spans)
    emitted = min(s0, k)
    for i, (start, ctx, new) in enumerate(spans):
        seg = plan.segment(i)
        assert (seg.start, seg.context) == (start, ctx)
        assert seg.stop - seg.start == t
        assert seg.new_start == emitted  # new frames follow the frames already emitted
        assert 0 < seg.emit <= new
        assert seg.emit == new or i == len(spans) - 1  # only the last segment drops frames
        emitted += seg.emit
        assert plan.key_frames_after(i + 1) == emitted
    assert emitted == k
    assert produced - k < t  # the surplus of the last segment is less than one window
    assert plan.output_frames_for_keys(k) == n_out


def test_paper_setting_counts():
    # 2 minutes at the paper's key-frame rate ~1.875 fps, T = 10, S = 2, first segment S = 1:
    # 225 key frames; the first segment gives 10, every later one 8 -> 1 + ceil(215 / 8) = 28.
    plan = RolloutPlan(seconds=120, model_fps=1.875, window=10, context=2)
    assert plan.num_key_frames == 225
    assert plan.num_segments == 28
    assert plan.segment(27).emit == 215 - 26 * 8
    # with the interpolation model (x4): 900 output frames need 1 + ceil(899 / 4) = 226 keys
    plan4 = RolloutPlan(seconds=120, model_fps=1.875, window=10, context=2, interp_factor=4)
    assert plan4.num_output_frames == 900 and plan4.num_key_frames == 226
    assert plan4.output_fps == 7.5


def test_very_short_rollout_needs_no_segment():
    plan = RolloutPlan(seconds=0.1, model_fps=2.0, window=10, context=2)
    assert plan.num_output_frames == 1 and plan.num_segments == 0
    with pytest.raises(IndexError):
        plan.segment(0)


@pytest.mark.parametrize("kwargs", [
    {"seconds": 0}, {"seconds": -1}, {"seconds": math.nan}, {"model_fps": 0},
    {"window": 2, "context": 2}, {"context": 0}, {"first_context": 10}, {"interp_factor": 0},
])
def test_bad_plans_raise(kwargs):
    args = {"seconds": 10.0, "model_fps": 2.0, "window": 10, "context": 2} | kwargs
    with pytest.raises(ValueError):
        RolloutPlan(**args)
