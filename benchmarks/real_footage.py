"""Real footage: the tiny stack trained on real dashcam video, from scratch and from the synthetic world.

    python benchmarks/real_footage.py --footage DIR --held-out NAME.mp4 [--work runs/real_footage]
        [--synthetic-run RUN] [--minutes 8] [--synthetic-minutes 8] [--seconds 60] [--steps 5]
        [--stage-minutes autoencoder=15 ...] [--stacks synthetic,real,real_init] [--coarse-size 16x32]

Every step is a `drivesim` command (printed as it runs) or the Python API:

1. The footage folder's mp4s are split: ``--held-out`` is never trained on; the others are the
   training DATA (a folder of mp4s, converted by `drivesim train` itself).
2. Three stacks, stages data -> autoencoder -> temporal decoder -> latents -> image LDM -> video LDM
   at the tiny size: ``synthetic`` (`drivesim train --data synthetic`, or ``--synthetic-run``),
   ``real`` (the footage, from scratch) and ``real_init`` (the footage, ``--init`` the synthetic
   run's models: every stage, the video stage's temporal layers included), the two real ones
   with the same ``--minutes`` budget (``--stage-minutes`` gives a stage its own).
3. Autoencoder PSNR of each stack on the held-out video (64x128 centre crop, 6-frame windows at
   10 fps through the temporal decoder).
4. Rollouts of ``--seconds`` from real start frames (the held-out video's first frame, and the first
   frame of the training set's held-out val clip), no box scenario, key frames only (2 fps).
5. The C2ST realism metric (`drivesim eval --metrics c2st`) of each stack's rollouts against the real
   footage converted to the training framing (64x128 centre crop, 5-s clips) at the rollouts' 2 fps,
   with its Wilson and clustered 95% intervals; the same against the real clips passed through the
   stack's own autoencoder (what the diffusion models lose beyond the autoencoder's blur), and those
   reconstructions against the real clips (the autoencoder alone). Each is also run with the
   frame variant at ``--coarse-size`` (``--c2st-frame-size``): fine texture and blur left out,
   the scene's look (colours, layout) compared. Frames at 0, 5, 30 and 60 s are
   written as PNGs and one grid PNG (rows: stack x start, columns: the real start frame, then 0, 5,
   30, 60 s).

Results go to ``WORK/report.json``; the machine's load average is printed (it changes the steps
a wall-time budget buys, so the figures of a loaded machine are those of fewer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("data", "autoencoder", "autoencoder_temporal", "latents", "image_ldm", "video_ldm")
FAST_FIT = ("--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "2",
            "--trainer.num_sanity_val_steps", "0")
TIMES = (0.0, 5.0, 30.0, 60.0)
STACKS = ("synthetic", "real", "real_init")
SIZE = (64, 128)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--footage", required=True, help="folder of dashcam mp4s (no labels needed)")
    p.add_argument("--held-out", required=True, help="file name of the video never trained on")
    p.add_argument("--work", default="runs/real_footage")
    p.add_argument("--synthetic-run", default=None, help="a finished synthetic-world run to use and start from")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget of each real stack")
    p.add_argument("--synthetic-minutes", type=float, default=8.0)
    p.add_argument("--stage-minutes", action="append", default=[], metavar="STAGE=M",
                   help="a real stack's stage budget in place of its share of --minutes (repeatable)")
    p.add_argument("--seconds", type=float, default=60.0, help="rollout length")
    p.add_argument("--steps", type=int, default=5, help="sampler steps per rollout segment")
    p.add_argument("--c2st-steps", type=int, default=300)
    p.add_argument("--stacks", default=",".join(STACKS), help="comma-separated subset of " + ", ".join(STACKS))
    p.add_argument("--coarse-size", default="16x32", help="the coarse C2ST frame size, HxW ('' = none)")
    args = p.parse_args(argv)
    args.stacks = [s for s in args.stacks.split(",") if s]
    if not args.stacks or set(args.stacks) - set(STACKS):
        p.error(f"--stacks: expected names from {STACKS}, got {args.stacks}")
    if args.stacks == ["synthetic"]:
        p.error("--stacks: the start frames come from a real stack's data; add real or real_init")
    if "real_init" in args.stacks and "synthetic" not in args.stacks and not args.synthetic_run:
        p.error("--stacks real_init starts from the synthetic stack: keep synthetic or give --synthetic-run")
    return args


def drivesim(*argv: str) -> None:
    print("$ drivesim " + " ".join(shlex.quote(a) for a in argv), flush=True)
    subprocess.run([sys.executable, "-m", "drivesim.cli", *argv], check=True)


def split_footage(footage: Path, held_out: str, work: Path) -> tuple[Path, Path]:
    """Symlink folders: (training videos, the held-out video)."""
    train, test = work / "footage" / "train", work / "footage" / "held_out"
    for folder in (train, test):
        folder.mkdir(parents=True, exist_ok=True)
    videos = sorted(p for p in footage.iterdir() if p.suffix.lower() == ".mp4")
    if held_out not in {v.name for v in videos}:
        raise SystemExit(f"{footage}: no {held_out} among {[v.name for v in videos]}")
    for video in videos:
        link = (test if video.name == held_out else train) / video.name
        if not link.exists():
            link.symlink_to(video.resolve())
    return train, test


def train(run: Path, data: str, minutes: float, init: Path | None = None, stage_minutes: tuple[str, ...] = ()) -> Path:
    args = ["train", "--data", data, "--run", str(run), "--minutes", f"{minutes:g}", "--no-progress"]
    args += [a for m in stage_minutes for a in ("--minutes", m)]
    args += [a for s in STAGES for a in ("--stage", s)] + (["--init", str(init)] if init else [])
    drivesim(*args, "--", *FAST_FIT)
    return run


def training_steps(run: Path) -> dict[str, int]:
    """Optimizer steps each training stage of ``run`` made (its last logged step; wall-time budgets
    buy fewer steps on a loaded machine), from the TensorBoard logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for stage in STAGES:
        steps = 0
        for version in sorted((run / stage / "lightning_logs").glob("version_*")):
            events = EventAccumulator(str(version))
            events.Reload()
            steps = max([steps, *(events.Scalars(t)[-1].step for t in events.Tags()["scalars"])])
        if stage not in ("data", "latents"):
            out[stage] = steps
    return out


def convert(videos: Path, out: Path, clip_seconds: float) -> Path:
    if not (out / "manifest.jsonl").is_file():
        drivesim("data", "videos", "--input", str(videos), "--out", str(out), "--size", f"{SIZE[0]}x{SIZE[1]}",
                 "--clip-seconds", f"{clip_seconds:g}", "--val-fraction", "0", "--no-progress")
    return out


def autoencoder_psnr(run: Path, clips: Path) -> float:
    """Mean PSNR (dB, 0..255) of the run's autoencoder over 6-frame 10-fps windows of ``clips``."""
    import torch

    from drivesim.data.clip_format import read_clip, read_manifest
    from drivesim.data.datasets import resample_indices, to_video_tensor, window_starts
    from drivesim.inference import load_model
    from drivesim.inference.run_folder import resolve_run

    ae = load_model(resolve_run(run)["autoencoder"], "autoencoder").network
    errors = []
    for entry in read_manifest(clips):
        clip = read_clip(clips / entry.path)
        for start in window_starts(clip.num_frames, 6, clip.fps, 10.0, 6):
            rgb = clip.frames(resample_indices(6, clip.fps, 10.0, start))            # [6, H, W, 3] uint8
            video = to_video_tensor(rgb)[None]                                        # [1, 6, 3, H, W]
            with torch.no_grad():
                recon = ae.decode_latents(ae.encode_latents(video)).clamp(-1, 1)
            diff = (recon - video) * 127.5
            errors.append(float(diff.pow(2).mean()))
        clip.close()
    return float(10 * np.log10(255.0 ** 2 / np.mean(errors)))


def start_clips(work: Path, held_out_clips: Path, train_run: Path) -> list[Path]:
    """Start clips at the training size: the held-out video's first clip and the run's val clip."""
    from drivesim.tools.prepare import write_start_clip

    out = work / "starts"
    first = write_start_clip(held_out_clips, out / "held_out", SIZE, split="train")
    return [first, train_run / "start"]


def reconstructions(run: Path, clips: Path, out: Path) -> Path:
    """``clips`` passed through the run's autoencoder (temporal decoder), as clip folders: what the
    stack could show of the real footage at best, the C2ST reference that leaves its blur out."""
    import torch

    from drivesim.data.clip_format import ClipWriter, read_clip, read_manifest
    from drivesim.data.datasets import to_video_tensor
    from drivesim.inference import load_model
    from drivesim.inference.run_folder import resolve_run

    ae = load_model(resolve_run(run)["autoencoder"], "autoencoder").network
    for entry in read_manifest(clips):
        if (out / entry.clip_id / "clip.json").is_file():
            continue
        clip = read_clip(clips / entry.path)
        video = to_video_tensor(clip.frames(list(range(clip.num_frames))))[None]     # [1, N, 3, H, W]
        with torch.no_grad():
            recon = ae.decode_latents(ae.encode_latents(video)).clamp(-1, 1)[0]     # [N, 3, H, W]
        rgb = ((recon.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # [N, H, W, 3]
        with ClipWriter(out / entry.clip_id, fps=clip.fps, height=clip.height, width=clip.width,
                        labels=clip.labels) as writer:
            for frame in rgb:
                writer.add_frame(frame)
        clip.close()
    return out


def rollouts(run: Path, name: str, starts: list[Path], work: Path, seconds: float, steps: int) -> Path:
    root = work / "rollouts" / name
    for k, start in enumerate(starts):
        if (root / f"start{k}" / "clip.json").is_file():  # a re-run of the benchmark keeps finished drives
            continue
        drivesim("rollout", "--run", str(run), "--out", str(root / f"start{k}"), "--start", f"clip:{start}",
                 "--scenario", "none", "--seconds", f"{seconds:g}", "--steps", str(steps), "--seed", str(k),
                 "--interp-passes", "0", "--no-upsample", "--overwrite", "--no-progress")
    return root


def c2st(fake: Path, real: Path, out: Path, steps: int, frame_size: str | None = None) -> dict:
    size = ["--c2st-frame-size", frame_size] if frame_size else []
    drivesim("eval", "--real", str(real), "--fake", str(fake), "--metrics", "c2st", "--fps", "2",
             "--c2st-steps", str(steps), *size, "--out", str(out), "--overwrite", "--no-progress")
    return json.loads(out.read_text())["c2st"]


def frames_at(rollout: Path, times: tuple[float, ...]) -> list[np.ndarray]:
    from drivesim.data.clip_format import read_clip

    clip = read_clip(rollout)
    idx = [min(clip.num_frames - 1, int(round(t * clip.fps))) for t in times]
    frames = clip.frames(idx)
    clip.close()
    return list(frames)


def save_frames(work: Path, stacks: list[str], starts: list[Path]) -> Path:
    """PNG per (stack, start, time) and one grid: rows = stack x start, columns = the times."""
    import cv2

    from drivesim.data.clip_format import read_clip

    out, rows = work / "frames", []
    out.mkdir(parents=True, exist_ok=True)
    for name in stacks:
        for k, start in enumerate(starts):
            real = read_clip(start).frames([0])[0]
            frames = frames_at(work / "rollouts" / name / f"start{k}", TIMES)
            for t, rgb in zip(TIMES, frames):
                cv2.imwrite(str(out / f"{name}_start{k}_{int(t):02d}s.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            rows.append(np.concatenate([real, *frames], axis=1))  # [H, 5W, 3]: real start, 0, 5, 30, 60 s
    grid = np.concatenate(rows, axis=0)
    big = cv2.resize(grid, (grid.shape[1] * 2, grid.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(out / "grid.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    return out / "grid.png"


def _cell(result: dict) -> str:
    if result.get("accuracy") is None:
        return f"- ({result.get('note', '')})"
    (wl, wh), (cl, ch) = result["ci95"], result["ci95_clustered"]
    return f"{result['accuracy']:.3f} [{wl:.3f}, {wh:.3f}] [{cl:.3f}, {ch:.3f}] (n={result['held_out']})"


def main(argv: list[str]) -> int:
    args = _args(argv)
    work = Path(args.work)
    start_time, load0 = time.monotonic(), os.getloadavg()[0]
    train_videos, held_out = split_footage(Path(args.footage), args.held_out, work)
    synthetic = Path(args.synthetic_run) if args.synthetic_run else (
        train(work / "synthetic", "synthetic", args.synthetic_minutes) if "synthetic" in args.stacks else None)
    runs = {"synthetic": synthetic}
    if "real" in args.stacks:
        runs["real"] = train(work / "real", str(train_videos), args.minutes, stage_minutes=args.stage_minutes)
    if "real_init" in args.stacks:
        runs["real_init"] = train(work / "real_init", str(train_videos), args.minutes, init=synthetic,
                                  stage_minutes=args.stage_minutes)
    runs = {name: run for name, run in runs.items() if name in args.stacks}
    held_out_clips = convert(held_out, work / "held_out_clips", 4.0)
    real_clips = convert(Path(args.footage), work / "real_clips", 5.0)
    starts = start_clips(work, held_out_clips, next(r for n, r in runs.items() if n != "synthetic"))
    report: dict = {"psnr_held_out": {n: autoencoder_psnr(r, held_out_clips) for n, r in runs.items()},
                    "steps": {n: training_steps(r) for n, r in runs.items()}}
    sizes = {"": None, **({"_coarse": args.coarse_size} if args.coarse_size else {})}  # report key suffix: size
    for suffix, size in sizes.items():
        report["c2st" + suffix], report["c2st_vs_recon" + suffix], report["c2st_recon" + suffix] = {}, {}, {}
        for name, run in runs.items():
            fake = rollouts(run, name, starts, work, args.seconds, args.steps)
            recon = reconstructions(run, real_clips, work / "recon" / name)
            out = work / "eval" / name
            report["c2st" + suffix][name] = c2st(fake, real_clips, out / f"report{suffix}.json", args.c2st_steps, size)
            report["c2st_vs_recon" + suffix][name] = c2st(fake, recon, out / f"vs_recon{suffix}.json",
                                                          args.c2st_steps, size)
            report["c2st_recon" + suffix][name] = c2st(recon, real_clips, out / f"recon{suffix}.json",
                                                       args.c2st_steps, size)
    grid = save_frames(work, list(runs), starts)
    report.update(minutes=args.minutes, seconds=args.seconds, wall_minutes=(time.monotonic() - start_time) / 60,
                  load_average=[load0, os.getloadavg()[0]], grid=str(grid))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print("\ntraining steps per stage: " + "; ".join(f"{n} {steps}" for n, steps in report["steps"].items()))
    print("held-out autoencoder PSNR (dB): " + ", ".join(f"{n} {v:.2f}" for n, v in report["psnr_held_out"].items()))
    for suffix, size in sizes.items():
        at = f" (frame variant at {size})" if size else ""
        for key, what in (("c2st", "rollouts vs real"), ("c2st_vs_recon", "rollouts vs the stack's AE reconstructions"),
                          ("c2st_recon", "AE reconstructions vs real")):
            print(f"\nC2ST{at}, {what}:\n{'stack':<10} {'frame acc [Wilson 95%] [clustered 95%]':<56} clip acc")
            for name, res in report[key + suffix].items():
                print(f"{name:<10} {_cell(res['frame']):<56} {_cell(res['clip'])}")
    print(f"frames: {grid}; wall {report['wall_minutes']:.1f} min; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
