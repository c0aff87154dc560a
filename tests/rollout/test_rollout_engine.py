"""The rollout loop with tiny stand-in models: determinism, context hand-over, causality,
streamed decoding, valid clip output, resume and bad input."""

import json
import shutil

import av
import numpy as np
import pytest
import torch
from rollout_standins import StandinDecoder, StandinPredictor, standin_interpolate

from drivesim.data.clip_format import read_clip
from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.engine import RolloutJob, RolloutModels, StreamingDecoder, run_rollout
from drivesim.rollout.scenario import SCHEMA, JsonScenario, NoBoxScenario
from drivesim.rollout.state import fingerprint
from drivesim.rollout.writer import WORK_DIR
from drivesim.utils.io import DriveSimInputError

START = torch.linspace(-1, 1, 4 * 2 * 4).view(1, 1, 4, 2, 4)  # [1, S0=1, C, h, w]


def plan(seconds=4.0, r=1, t=6):
    return RolloutPlan(seconds=seconds, model_fps=4.0, window=t, context=2, interp_factor=r)


def models(predict=None, r=1):
    return RolloutModels(predict or StandinPredictor(), StandinDecoder(),
                         standin_interpolate if r > 1 else None, decode_overlap=1)


def run(out, scenario=None, seed=0, p=None, m=None, **kw):
    p = p or plan()
    job = RolloutJob(p, scenario or NoBoxScenario(daynight=0), out, seed=seed, fingerprint="fp",
                     save_every=1, debug_video=kw.pop("debug_video", False))
    return run_rollout(job, m or models(), START, progress=False, **kw)


def clip_json_without_id(out):
    meta = json.loads((out / "clip.json").read_text())
    del meta["clip_id"]  # the folder name
    return meta


def frames_of(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def scenario_file(tmp_path, name, n, change_from=None):
    frames = []
    for i in range(n):
        x = 0.05 + 0.01 * i if change_from is None or i < change_from else 0.6
        frames.append({"boxes": [[x, 0.3, x + 0.2, 0.6]], "classes": ["car"], "track_ids": [1]})
    p = tmp_path / name
    p.write_text(json.dumps({"schema": SCHEMA, "fps": 4.0, "daynight": "day", "crowd": "quiet",
                             "frames": frames}))
    return JsonScenario(p)


def test_same_seed_same_bytes_and_valid_clip(tmp_path):
    sc = scenario_file(tmp_path, "s.json", 16)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ra = run(a, sc, debug_video=True)
    run(b, sc, debug_video=True)
    run(c, sc, seed=1)
    assert (a / "frames.mp4").read_bytes() == (b / "frames.mp4").read_bytes()
    assert (a / "debug.mp4").read_bytes() == (b / "debug.mp4").read_bytes()
    assert clip_json_without_id(a) == clip_json_without_id(b)
    assert (a / "frames.mp4").read_bytes() != (c / "frames.mp4").read_bytes()
    assert not (a / WORK_DIR).exists()
    clip = read_clip(a)  # validates clip.json and the frame count / size of frames.mp4
    assert clip.num_frames == ra.num_frames == plan().num_output_frames == 16
    assert (clip.fps, clip.height, clip.width) == (4.0, 16, 32)
    assert len(frames_of(a / "debug.mp4")) == 16
    np.testing.assert_allclose(clip.boxes[5], sc.frames_at([5], 4.0).boxes[0], atol=1e-6)
    assert clip.labels["scenario"]["kind"] == "json"


def test_context_is_handed_over_exactly(tmp_path):
    calls = []

    def recording(ctx, cond, gen):
        out = StandinPredictor()(ctx, cond, gen)
        calls.append((ctx.clone(), out.clone(), cond.num_context))
        return out

    p = plan(seconds=5.0)
    run(tmp_path / "o", p=p, m=models(recording))
    assert len(calls) == p.num_segments > 2
    torch.testing.assert_close(calls[0][0], START, rtol=0, atol=0)
    assert [c[2] for c in calls] == [1] + [2] * (len(calls) - 1)
    for (_, prev_out, _), (ctx, out, s) in zip(calls, calls[1:]):
        assert torch.equal(ctx, prev_out[:, -2:])  # the last S = 2 generated frames
        assert torch.equal(out[:, :s], ctx)  # stand-in re-imposes the context


def test_future_scenario_changes_do_not_alter_emitted_frames(tmp_path):
    p = plan(seconds=5.0)  # 20 key frames, window 6: segments start at keys 0, 4, 8, 12, 16
    change = 13
    base = scenario_file(tmp_path, "a.json", 20)
    changed = scenario_file(tmp_path, "b.json", 20, change_from=change)
    run(tmp_path / "a", base, p=p)
    run(tmp_path / "b", changed, p=p)
    fa, fb = frames_of(tmp_path / "a" / "frames.mp4"), frames_of(tmp_path / "b" / "frames.mp4")
    first_affected = next(p.segment(k).new_start for k in range(p.num_segments)
                          if p.segment(k).stop > change)
    safe = first_affected - 1  # the decoder's right-hand overlap of 1 latent frame
    np.testing.assert_array_equal(fa[:safe], fb[:safe])
    assert not np.array_equal(fa[first_affected:], fb[first_affected:])


def test_streaming_decoder_equals_whole_video_decode(generator):
    z = torch.randn(1, 23, 4, 2, 3, generator=generator)
    dec = StandinDecoder()
    sd = StreamingDecoder(dec, overlap=1, left=z[:, :0], pending=z[:, :0])
    pieces, i = [], 0
    for n in (1, 5, 2, 7, 8):
        out = sd.push(z[:, i: i + n])
        i += n
        if out is not None:
            pieces.append(out)
    pieces.append(sd.flush())
    streamed = torch.cat(pieces, dim=1)
    torch.testing.assert_close(streamed, dec(z), rtol=0, atol=1e-6)
    # without right-hand context chunking would differ at the chunk borders
    naive = torch.cat([dec(z[:, :6]), dec(z[:, 6:])], dim=1)
    assert not torch.allclose(naive, dec(z), atol=1e-4)


def test_interpolated_rollout_frame_count(tmp_path):
    p = plan(seconds=3.0, r=3)
    res = run(tmp_path / "o", p=p, m=models(r=3))
    assert res.num_frames == p.num_output_frames == 36
    clip = read_clip(tmp_path / "o")
    assert clip.fps == 12.0 and clip.num_frames == 36


class Crash(RuntimeError):
    pass


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    sc = scenario_file(tmp_path, "s.json", 24)
    p = plan(seconds=6.0)
    run(tmp_path / "ref", sc, p=p, debug_video=True)
    count = {"n": 0}

    def crashing(ctx, cond, gen):
        count["n"] += 1
        if count["n"] == 4:
            raise Crash
        return StandinPredictor()(ctx, cond, gen)

    with pytest.raises(Crash):
        run(tmp_path / "out", sc, p=p, m=models(crashing), debug_video=True)
    assert not (tmp_path / "out" / "frames.mp4").exists()
    res = run(tmp_path / "out", sc, p=p, resume=True, debug_video=True)
    assert res.resumed_from == 3
    assert clip_json_without_id(tmp_path / "out") == clip_json_without_id(tmp_path / "ref")
    for name in ("frames.mp4", "debug.mp4"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_bad_inputs_fail_clearly_and_touch_nothing(tmp_path):
    out = tmp_path / "o"
    run(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DriveSimInputError, match="--overwrite"):
        run(out, seed=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(DriveSimInputError, match="no resume state"):
        run(out, resume=True)
    run(out, seed=3, overwrite=True)
    assert (out / "frames.mp4").read_bytes() != before["frames.mp4"]
    # a resume state written under another fingerprint is refused
    with pytest.raises(Crash):
        run(tmp_path / "k", m=models(lambda *a: (_ for _ in ()).throw(Crash())))
    job = RolloutJob(plan(), NoBoxScenario(daynight=0), tmp_path / "k", seed=0, fingerprint="other")
    with pytest.raises(DriveSimInputError, match="different rollout"):
        run_rollout(job, models(), None, resume=True, progress=False)
    # a predictor returning the wrong shape is named
    with pytest.raises(ValueError, match="predict_segment returned"):
        run(tmp_path / "w", m=models(lambda ctx, cond, gen: ctx), overwrite=True)


def test_fingerprint_depends_on_checkpoint_bytes_args_and_scenario(tmp_path):
    ck = tmp_path / "m.pt"
    ck.write_bytes(b"weights-1")
    base = fingerprint({"video": ck, "image": None}, {"seed": 0}, {"kind": "none"})
    assert base == fingerprint({"video": ck, "image": None}, {"seed": 0}, {"kind": "none"})
    assert base != fingerprint({"video": ck, "image": None}, {"seed": 1}, {"kind": "none"})
    assert base != fingerprint({"video": ck, "image": None}, {"seed": 0}, {"kind": "json"})
    ck.write_bytes(b"weights-2")
    assert base != fingerprint({"video": ck, "image": None}, {"seed": 0}, {"kind": "none"})
    shutil.rmtree(tmp_path)


def test_interpolation_surplus_does_not_read_past_an_exact_scenario(tmp_path):
    # 17 frames at 12 fps: 7 key frames at 4 fps give 19 frames, the last 2 are surplus
    frames = [{"boxes": [[0.1, 0.1, 0.2, 0.2]], "classes": ["bus"], "track_ids": [2]}] * 17
    path = tmp_path / "exact.json"
    path.write_text(json.dumps({"schema": SCHEMA, "fps": 12.0, "frames": frames}))
    p = RolloutPlan(seconds=17 / 12, model_fps=4.0, window=6, context=2, interp_factor=3)
    assert p.num_output_frames == 17 and (p.num_key_frames - 1) * 3 + 1 == 19
    res = run(tmp_path / "o", JsonScenario(path), p=p, m=models(r=3))
    assert res.num_frames == 17 and read_clip(tmp_path / "o").num_frames == 17
