"""`drivesim rollout` end to end with tiny random real models (UNet + temporal decoder)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from rollout_tiny_models import write_tiny_models

from drivesim.cli import main
from drivesim.data.clip_format import read_clip
from drivesim.diffusion.guidance import context_guidance_scales
from drivesim.inference import load_model
from drivesim.rollout.engine import SegmentCondition
from drivesim.rollout.sampler import PredictionSampler
from drivesim.rollout.scenario import SCHEMA
from drivesim.utils.io import DriveSimInputError


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def scenario(tmp_path, n=40):
    frames = [{"boxes": [[0.1 + 0.01 * i, 0.4, 0.3 + 0.01 * i, 0.7]], "classes": ["car"],
               "track_ids": [3]} for i in range(n)]
    p = tmp_path / "scenario.json"
    p.write_text(json.dumps({"schema": SCHEMA, "fps": 4.0, "daynight": "day", "frames": frames}))
    return p


def argv(ckpts, out, scen, *extra):
    return ["rollout", "--video-ckpt", str(ckpts["video"]), "--ae-ckpt", str(ckpts["ae"]),
            "--image-ckpt", str(ckpts["image"]), "--scenario", str(scen), "--size", "16x32",
            "--steps", "2", "--seconds", "2.5", "--out", str(out), "--no-progress", *extra]


def test_cli_rollout_is_a_deterministic_valid_clip(tmp_path, ckpts):
    scen = scenario(tmp_path)
    assert main(argv(ckpts, tmp_path / "a", scen, "--debug-video")) == 0
    assert main(argv(ckpts, tmp_path / "b", scen)) == 0
    clip = read_clip(tmp_path / "a")
    assert clip.num_frames == 10 and clip.fps == 4.0 and (clip.height, clip.width) == (16, 32)
    assert clip.labels["daynight"] == "day" and clip.labels["scenario"]["kind"] == "json"
    assert (tmp_path / "a" / "frames.mp4").read_bytes() == (tmp_path / "b" / "frames.mp4").read_bytes()
    assert (tmp_path / "a" / "debug.mp4").is_file()
    # output exists: refused, untouched; night label gives a different video
    before = (tmp_path / "a" / "frames.mp4").read_bytes()
    with pytest.raises(DriveSimInputError, match="--overwrite"):
        main(argv(ckpts, tmp_path / "a", scen, "--daynight", "night", "--debug"))
    assert (tmp_path / "a" / "frames.mp4").read_bytes() == before
    main(argv(ckpts, tmp_path / "a", scen, "--daynight", "night", "--overwrite"))
    assert read_clip(tmp_path / "a").labels["daynight"] == "night"


def test_day_and_night_in_parallel_workers_equal_the_serial_run(tmp_path, ckpts):
    scen = scenario(tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # -> one thread per worker, as the serial run below
        assert main(argv(ckpts, tmp_path / "par", scen, "--daynight", "both", "--workers", "2")) == 0
        torch.set_num_threads(1)
        assert main(argv(ckpts, tmp_path / "ser", scen, "--daynight", "both")) == 0
    finally:
        torch.set_num_threads(threads)
    for dn in ("day", "night"):
        assert read_clip(tmp_path / "par" / dn).labels["daynight"] == dn
        assert ((tmp_path / "par" / dn / "frames.mp4").read_bytes()
                == (tmp_path / "ser" / dn / "frames.mp4").read_bytes())
    with pytest.raises(DriveSimInputError, match="--workers"):
        main(argv(ckpts, tmp_path / "bad", scen, "--daynight", "both", "--workers", "-1", "--debug"))


def test_clip_start_and_interpolation_pass(tmp_path, ckpts):
    import numpy as np

    from drivesim.data.clip_format import ClipWriter

    clip_dir = tmp_path / "clip"
    rng = np.random.default_rng(0)
    with ClipWriter(clip_dir, fps=4.0, height=16, width=32, labels={"daynight": "night"}) as w:
        for _ in range(12):
            w.add_frame(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8),
                        boxes=np.array([[0.1, 0.2, 0.4, 0.6]]), classes=np.array([1]),
                        track_ids=np.array([4]))
    out = tmp_path / "o"
    cmd = ["rollout", "--video-ckpt", str(ckpts["video"]), "--ae-ckpt", str(ckpts["ae"]),
           "--interp-ckpt", str(ckpts["interp"]), "--interp-factor", "2", "--interp-passes", "1",
           "--scenario", f"clip:{clip_dir}", "--start-frames", "2", "--steps", "1",
           "--seconds", "2.5", "--out", str(out), "--no-progress"]
    assert main(cmd) == 0  # no --image-ckpt: the start frames come from the clip
    clip = read_clip(out)
    assert clip.fps == 8.0 and clip.num_frames == 20 and clip.labels["daynight"] == "night"
    with pytest.raises(DriveSimInputError, match="field 'frames'"):
        main([*cmd[:-5], "--seconds", "5", "--out", str(tmp_path / "long"), "--no-progress", "--debug"])
    assert not (tmp_path / "long").exists()


def test_compile_flag_compiles_the_diffusion_networks_and_keeps_the_video(tmp_path, ckpts, monkeypatch):
    """--compile MODE reaches every diffusion network (traced here with dynamo's eager backend:
    no code generation); the video equals the uncompiled one. reduce-overhead is refused on CPU."""
    import drivesim.inference.loading as loading

    compiled = []
    real = loading.compile_network

    def traced(net, mode, device=None):
        compiled.append((type(net).__name__, mode, str(device)))
        return real(net, mode, device=device, backend="eager")  # the mode checks stay real

    monkeypatch.setattr(loading, "compile_network", traced)
    scen = scenario(tmp_path)
    assert main(argv(ckpts, tmp_path / "eager", scen)) == 0
    assert compiled == []
    assert main(argv(ckpts, tmp_path / "compiled", scen, "--compile", "default")) == 0
    assert sorted(compiled) == [("UNet", "default", "cpu")] * 2  # the image and the video UNet
    assert (tmp_path / "compiled" / "frames.mp4").read_bytes() == (tmp_path / "eager" / "frames.mp4").read_bytes()
    with pytest.raises(DriveSimInputError, match="records CUDA graphs"):
        main(argv(ckpts, tmp_path / "cuda", scen, "--compile", "reduce-overhead", "--debug"))
    assert not (tmp_path / "cuda").exists()


def test_wrong_checkpoints_are_refused(tmp_path, ckpts):
    scen = scenario(tmp_path)
    for bad in (["--video-ckpt", str(ckpts["image"])], ["--video-ckpt", str(ckpts["ae"])]):
        with pytest.raises(DriveSimInputError) as info:
            main(argv(ckpts, tmp_path / "o", scen) + bad + ["--debug"])
        assert str(ckpts["image"] if "image" in bad[1] else ckpts["ae"]) in str(info.value)
    with pytest.raises(DriveSimInputError, match="not a prediction"):
        load_model(ckpts["image"], "prediction")
    from drivesim.models.model_files import load_model_file, save_model_file

    hparams, state = load_model_file(ckpts["video"], "ldm")
    hparams["unet"]["bogus_option"] = 1
    save_model_file(tmp_path / "odd.pt", "ldm", hparams, state)
    with pytest.raises(DriveSimInputError, match="hparams.unet"):
        load_model(tmp_path / "odd.pt", "prediction")
    assert not (tmp_path / "o").exists()


def test_prediction_sampler_reproduces_context_and_is_seeded(ckpts):
    model = load_model(ckpts["video"], "prediction")
    sampler = PredictionSampler(model, steps=3, guidance_context=2.0, guidance_schedule="taper")
    cond = SegmentCondition(torch.full((1, 6, 4, 4), 0.2), torch.ones(1, 6, 4, dtype=torch.long),
                            torch.ones(1, 6, 4, dtype=torch.long), torch.tensor([1]), torch.tensor([0]), 2, 6)
    ctx = torch.randn(1, 2, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    a = sampler(ctx, cond, torch.Generator().manual_seed(0))
    b = sampler(ctx, cond, torch.Generator().manual_seed(0))
    c = sampler(ctx, cond, torch.Generator().manual_seed(1))
    assert a.shape == (1, 6, 4, 8, 16)
    assert torch.equal(a[:, :2], ctx)  # context re-imposed exactly
    assert torch.equal(a, b) and not torch.allclose(a[:, 2:], c[:, 2:])
    const = PredictionSampler(model, steps=3, guidance_context=2.0, guidance_schedule="constant")
    assert not torch.allclose(const(ctx, cond, torch.Generator().manual_seed(0))[:, 2:], a[:, 2:])


def test_guidance_schedules():
    torch.testing.assert_close(context_guidance_scales(6, 2, 1.5, "constant"), torch.full((6,), 1.5))
    w = context_guidance_scales(6, 2, 3.0, "taper")
    torch.testing.assert_close(w, torch.tensor([3.0, 3.0, 3.0, 2.5, 2.0, 1.5]))
    assert w[-1] < w[2]  # frames that become the next context get the least guidance
    with pytest.raises(ValueError):
        context_guidance_scales(6, 2, 1.5, "cosine")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, ckpts):
    """The real CLI killed from outside mid-way (the stand-in version in
    test_rollout_sigkill.py is the fast default test)."""
    scen = scenario(tmp_path, n=60)
    common = ["--seconds", "7", "--save-every", "1"]
    ref = tmp_path / "ref"
    assert main(argv(ckpts, ref, scen, *common)) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "drivesim.cli", *argv(ckpts, out, scen, *common)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = out / ".rollout"
    deadline = time.monotonic() + 120
    while not (work / "chunk_000003.mp4").exists():  # a few segments done, more to come
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "frames.mp4").exists()
    # a different seed does not match the saved state
    with pytest.raises(DriveSimInputError, match="different rollout"):
        main(argv(ckpts, out, scen, *common, "--resume", "--seed", "5", "--debug"))
    assert main(argv(ckpts, out, scen, *common, "--resume")) == 0
    assert (out / "frames.mp4").read_bytes() == (ref / "frames.mp4").read_bytes()
    ref_meta, out_meta = (json.loads((d / "clip.json").read_text()) for d in (ref, out))
    ref_meta.pop("clip_id"), out_meta.pop("clip_id")
    assert ref_meta == out_meta
