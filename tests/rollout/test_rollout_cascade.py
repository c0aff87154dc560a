"""The cascade in the rollout stream: two interpolation passes and the chunked upsampler,
with stand-in models: key frames unchanged, boxes at the output rate, chunk stitching,
kill-and-resume byte-identical, streaming equal to one-shot."""

import numpy as np
import pytest
import torch
from rollout_standins import StandinDecoder, StandinPredictor, StandinUpsampler, standin_interpolate

from drivesim.data.clip_format import read_clip
from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.engine import RolloutJob, RolloutModels, iter_rollout, run_rollout
from drivesim.rollout.scenario import NoBoxScenario, SyntheticScenario
from drivesim.rollout.streams import StreamingUpsampler

START = torch.linspace(-1, 1, 4 * 2 * 4).view(1, 1, 4, 2, 4)  # [1, S0=1, C, h, w]


class RecordingInterp:
    """standin_interpolate that records (pass name, pair, window) of every call."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, pair, cond, generator):
        self.log.append((self.name, pair.clone(), cond.window))
        return standin_interpolate(pair, cond, generator)


def cascade_models(log, upsampler=None):
    return RolloutModels(StandinPredictor(), StandinDecoder(), [RecordingInterp("x4", log), RecordingInterp("x16", log)],
                         decode_overlap=1, interp_factors=(4, 4), upsample=upsampler, upsample_chunk=8,
                         upsample_context=2)


def job(out, seconds=3.0, boxes=False, **kw):
    plan = RolloutPlan(seconds=seconds, model_fps=2.0, window=6, context=2, interp_factor=16)
    scenario = (SyntheticScenario(4, fps=plan.output_fps, crowd="crowded", max_boxes=8, traffic_range=60.0)
                if boxes else NoBoxScenario(daynight=1))
    return RolloutJob(plan, scenario, out, seed=5, fingerprint="fp", save_every=1, **kw)


def test_two_passes_keep_key_frames_and_fill_every_gap(tmp_path):
    log = []
    chunks = list(iter_rollout(job(None), cascade_models(log), START, progress=False))
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape[0] == 96  # 3 s at 2 fps x 16 = 32 fps
    first = [p for name, p, _ in log if name == "x4"]
    second = [p for name, p, _ in log if name == "x16"]
    assert all(w == 5 for _, _, w in log)  # 5-frame windows: 2 key frames + 3 new
    assert len(second) == 4 * len(first)  # every x4 gap is split again
    torch.testing.assert_close(first[0][:, 0], START[:, 0])  # the start frame is a key frame
    # the second pass starts from the same key frame and ends each x4 group on the first pass's key
    torch.testing.assert_close(second[0][:, 0], first[0][:, 0])
    torch.testing.assert_close(second[3][:, 1], first[0][:, 1])


def test_boxes_at_the_output_rate(tmp_path):
    out = tmp_path / "out"
    run_rollout(job(out, boxes=True), cascade_models([]), START, progress=False)
    clip = read_clip(out)
    assert clip.fps == 32.0 and clip.num_frames == 96
    scen = job(None, boxes=True).scenario
    expect = scen.frames_at([7, 50], 32.0)
    boxes, classes, _ = clip.box_arrays([7, 50], max_boxes=8)
    np.testing.assert_allclose(boxes, expect.boxes, atol=1e-6)  # in-between frames have their own boxes
    assert not np.allclose(boxes[0], boxes[1])


def test_streaming_upsampler_is_invariant_to_push_sizes():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(1, 23, 3, 4, 6, generator=g) * 2 - 1
    outs = []
    for sizes in ([23], [1] * 23, [5, 7, 11]):
        up = StandinUpsampler()
        stream = StreamingUpsampler.empty(up, chunk=8, context=2, like=low)
        gen, parts, i = torch.Generator().manual_seed(1), [], 0
        for n in sizes:
            out = stream.push(low[:, i: i + n], gen)
            parts += [] if out is None else [out]
            i += n
        parts.append(stream.flush(gen))
        outs.append(torch.cat(parts, 1))
        assert up.calls == [(0, 8), (2, 6), (2, 6), (2, 3)]  # 8-frame chunks, 2 context frames carried
    assert outs[0].shape == (1, 23, 3, 8, 12)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_cascade_with_upsampler_resumes_byte_identical(tmp_path):
    ref = tmp_path / "ref"
    run_rollout(job(ref, 9.0, debug_video=True), cascade_models([], StandinUpsampler()), START, progress=False)
    assert read_clip(ref).height == 2 * 2 * 8  # latents 2 high, decoder x8, upsampler x2

    class Killed(Exception):
        pass

    out, calls = tmp_path / "out", [0]
    models = cascade_models([], StandinUpsampler())
    predict = models.predict_segment

    def dying(*a):
        calls[0] += 1
        if calls[0] == 4:
            raise Killed
        return predict(*a)

    models.predict_segment = dying
    with pytest.raises(Killed):
        run_rollout(job(out, 9.0, debug_video=True), models, START, progress=False)
    assert not (out / "frames.mp4").exists()
    res = run_rollout(job(out, 9.0, debug_video=True), cascade_models([], StandinUpsampler()), None, resume=True,
                      progress=False)
    assert res.resumed_from == 3 and res.num_frames == 288
    for name in ("frames.mp4", "debug.mp4"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()


def test_wrong_factors_are_refused(tmp_path):
    models = cascade_models([])
    models.interp_factors = (4, 2)
    with pytest.raises(ValueError, match="interp_factor 16"):
        list(iter_rollout(job(None), models, START, progress=False))
