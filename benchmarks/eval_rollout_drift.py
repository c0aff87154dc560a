"""Rollout drift: oracle metrics per minute of a long rollout, constant vs tapered guidance.

    python benchmarks/eval_rollout_drift.py --runs runs --real runs/demo/data --minutes 5 \
        --schedules constant,taper --daynight day --steps 5 --out runs/bench/drift [--overwrite]

For each context-guidance schedule, one rollout (same checkpoints, scenario and seed) runs as
a subprocess of ``drivesim rollout`` and is measured from outside:

- wall time and frames/s (frames / wall seconds) of the whole subprocess (model loading included);
- CPU time of the child from ``os.wait4`` (``ru_utime + ru_stime``); its peak RSS is the
  largest ``VmHWM`` polled from ``/proc/<pid>/status`` (the child's own address space).
  ``ru_maxrss`` is recorded too (``ru_maxrss_mib``) but is not the child's own figure: Linux
  carries the parent's RSS at fork/exec into it, so after this process has run an
  evaluation (oracle, real clips in memory) every later rollout "peaks" at the parent's size;
- the same at 30 s, 2 min and 5 min of video: ``/proc/<pid>/status`` (VmHWM = peak RSS so
  far) and ``/proc/<pid>/stat`` (CPU ticks) polled every ``--poll`` seconds, the frames done
  read from the rollout's chunk records (``.rollout/boxes_*.json``).

Each video is then scored by ``drivesim eval --metrics oracle`` per ``--window-seconds``
window (60: per minute) against the ``--real-split`` clips of ``--real``. Writes
``OUT/<schedule>/`` (frames.mp4, clip.json, report.json and eval's plots), ``OUT/drift.json``
(per schedule: per-window metrics, last/first ratios with their direction, timings) and
``OUT/drift.png``; prints a compact table. Nothing is replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

from drivesim.cli import main as drivesim_main
from drivesim.diffusion.guidance import GUIDANCE_SCHEDULES
from drivesim.metrics.drift import (
    build_drift_report,
    check_outputs,
    format_table,
    plot_schedules,
    summarize_eval,
    write_drift_json,
)
from drivesim.rollout.cli import model_files
from drivesim.utils.io import DriveSimInputError, read_json

MARKS_S = (30.0, 120.0, 300.0)  # video seconds at which timings and RSS are reported
CHUNK_RE = re.compile(r"^boxes_(\d{6})\.json$")
MEASUREMENT = ("rollout as a subprocess of `drivesim rollout`; wall time around it; CPU time from "
               "os.wait4 (ru_utime + ru_stime); peak RSS = max /proc/<pid>/status VmHWM polled "
               "(ru_maxrss_mib: os.wait4's, includes the parent's RSS at fork); values at marks from "
               "/proc/<pid>/status VmHWM and /proc/<pid>/stat utime + stime polled every "
               "{poll:g} s, frames done from the .rollout/boxes_*.json chunk records")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--runs", default="runs", help="take checkpoints from RUNS/demo/<stage>/model.* (default: runs)")
    a("--video-ckpt"), a("--ae-ckpt"), a("--image-ckpt")
    a("--real", default=None, help="clip dataset (drivesim data synth) of the reference clips "
      "(default: RUNS/demo/data)")
    a("--real-split", default="val", help="manifest split of --real used as reference (default: val)")
    a("--minutes", type=float, default=5.0)
    a("--schedules", default=",".join(GUIDANCE_SCHEDULES), help="comma list of " + ", ".join(GUIDANCE_SCHEDULES))
    a("--daynight", default="day", choices=("day", "night"))
    a("--scenario", default="synthetic:3")
    a("--crowd", default="crowded", help="synthetic traffic, as `drivesim rollout --crowd` (default: the demo's)")
    a("--traffic-range", type=float, default=60.0,
      help="synthetic scenario traffic range in metres (default 60: the tiny configs' training data)")
    a("--seed", type=int, default=0)
    a("--steps", type=int, default=5, help="sampler steps per segment (default 5, as make rollout)")
    a("--guidance-context", type=float, default=1.5)
    a("--threads", type=int, default=1, help="torch threads of the rollout subprocess")
    a("--window-seconds", type=float, default=60.0, help="drift window (60 = per minute)")
    a("--eval-fps", type=float, default=None, help="frame rate both sides are sampled at for "
      "scoring (default: the rollout's fps, so frame differences compare like with like; 0: "
      "every frame)")
    a("--metrics", default="oracle", help="drivesim eval --metrics (fvd/fid need --i3d/--inception)")
    a("--oracle", default=None, help="oracle checkpoint (default: drivesim eval's cached one)")
    a("--cache-dir", default=None), a("--i3d", default=None), a("--inception", default=None)
    a("--poll", type=float, default=0.5, help="seconds between /proc samples")
    a("--out", default=None, help="output folder (default: RUNS/bench/drift)")
    a("--overwrite", action="store_true")
    args = p.parse_args(argv)
    args.schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    bad = [s for s in args.schedules if s not in GUIDANCE_SCHEDULES]
    if bad or not args.schedules:
        raise DriveSimInputError(f"expected a comma list of {GUIDANCE_SCHEDULES}", field="--schedules",
                                 value=",".join(bad) or "")
    if not args.minutes > 0 or not args.window_seconds > 0:
        raise DriveSimInputError("must be > 0", field="--minutes/--window-seconds",
                                 value=[args.minutes, args.window_seconds])
    args.real = args.real or str(Path(args.runs) / "demo" / "data")
    args.out = Path(args.out or Path(args.runs) / "bench" / "drift")
    return args


def resolve_checkpoints(args: argparse.Namespace) -> dict[str, str | None]:
    """Explicit --*-ckpt win; the others come from the run folder RUNS/demo (as `drivesim rollout --preset demo`)."""
    ns = argparse.Namespace(run=None, preset="demo", runs=args.runs, video_ckpt=args.video_ckpt,
                            ae_ckpt=args.ae_ckpt, image_ckpt=args.image_ckpt, interp_ckpt=None)
    files = model_files(ns)
    return {"video": str(files["video"]), "ae": str(files["autoencoder"]),
            "image": str(files["image"]) if files.get("image") else None}


def rollout_command(args: argparse.Namespace, ckpts: dict, schedule: str, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "drivesim.cli", "rollout", "--video-ckpt", ckpts["video"],
           "--ae-ckpt", ckpts["ae"], "--scenario", args.scenario, "--seconds", f"{args.minutes * 60:g}",
           "--daynight", args.daynight, "--seed", str(args.seed), "--steps", str(args.steps),
           "--guidance-context", f"{args.guidance_context:g}", "--guidance-schedule", schedule,
           "--crowd", args.crowd, "--traffic-range", f"{args.traffic_range:g}",
           "--out", str(out), "--no-progress"]
    if ckpts["image"]:
        cmd += ["--image-ckpt", ckpts["image"]]
    return cmd + (["--overwrite"] if args.overwrite else [])


class ProcPoller(threading.Thread):
    """Samples (wall s, frames done, VmHWM MiB, CPU s) of a running pid until told to stop."""

    def __init__(self, pid: int, work_dir: Path, interval: float, start: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.work_dir, self.interval, self.t0 = pid, work_dir, interval, start
        self.samples: list[tuple[float, int, float, float]] = []
        self.stop = threading.Event()
        self._frames, self._seen = 0, set()
        self._tick = os.sysconf("SC_CLK_TCK")

    def _frames_done(self) -> int:
        if not self.work_dir.is_dir():
            return self._frames
        for entry in os.scandir(self.work_dir):
            m = CHUNK_RE.match(entry.name)
            if m and entry.name not in self._seen:
                try:
                    rec = json.loads(Path(entry.path).read_text())
                except (OSError, ValueError):  # finalised and removed meanwhile
                    continue
                self._seen.add(entry.name)
                self._frames = max(self._frames, rec["first_frame"] + len(rec["boxes"]))
        return self._frames

    def _proc(self) -> tuple[float, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if hwm is None:  # exited (zombie)
            return None
        fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5); utime, stime = 14, 15
        return int(hwm.group(1)) / 1024, (int(fields[11]) + int(fields[12])) / self._tick

    def run(self) -> None:
        while not self.stop.is_set():
            proc = self._proc()
            if proc is not None:
                self.samples.append((time.perf_counter() - self.t0, self._frames_done(), *proc))
            self.stop.wait(self.interval)


def run_measured(cmd: list[str], out: Path, threads: int, poll: float) -> dict:
    """Run ``cmd``; wall, CPU, peak RSS of the child and the /proc samples taken meanwhile."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # chunk records of a killed earlier run would be counted as done (the rollout removes
    # them too, with --overwrite, but only after this poller has started)
    shutil.rmtree(out / ".rollout", ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    poller = ProcPoller(proc.pid, out / ".rollout", poll, t0)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not all children's)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    poller.stop.set()
    poller.join()
    if proc.returncode:
        raise RuntimeError(f"rollout failed with exit code {proc.returncode}: {' '.join(cmd)}")
    ru_maxrss = usage.ru_maxrss / 1024  # includes the parent's RSS at fork/exec (see the docstring)
    polled = max((s[2] for s in poller.samples), default=None)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": ru_maxrss if polled is None else polled, "ru_maxrss_mib": ru_maxrss,
            "samples": poller.samples}


def mark_rows(samples: list, fps: float, frames: int, final: tuple[float, float, float]) -> list[dict]:
    """Wall / CPU / peak RSS when the rollout had written 30 s, 2 min, 5 min of video.

    ``source`` is ``poll`` (first /proc sample with that many frames done) or ``exit`` (the
    mark was reached after the last sample: the whole-run ``final`` = (wall, CPU, peak RSS)).
    """
    rows = []
    for mark in MARKS_S:
        need = round(mark * fps)
        if need > frames:
            break
        hit = next((s for s in samples if s[1] >= need), None)
        if hit is None:
            (t, cpu, hwm), done, source = final, frames, "exit"
        else:
            (t, done, hwm, cpu), source = hit, "poll"
        rows.append({"video_s": mark, "frames": done, "wall_s": round(t, 2), "cpu_s": round(cpu, 2),
                     "frames_per_s": round(done / t, 3), "peak_rss_mib": round(hwm, 1), "source": source})
    return rows


def evaluate(args: argparse.Namespace, clip_dir: Path, video_fps: float) -> dict:
    """``drivesim eval`` of one rollout folder; returns its report.json."""
    report = clip_dir / "report.json"
    argv = ["eval", "--real", args.real, "--real-split", args.real_split, "--fake", str(clip_dir),
            "--metrics", args.metrics, "--out", str(report), "--window-seconds", f"{args.window_seconds:g}",
            "--no-progress"]
    fps = video_fps if args.eval_fps is None else args.eval_fps
    if fps:
        argv += ["--fps", f"{fps:g}"]
    for flag in ("oracle", "cache_dir", "i3d", "inception"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if drivesim_main(argv + (["--overwrite"] if args.overwrite else [])) != 0:
        raise RuntimeError(f"drivesim eval failed for {clip_dir}")
    return read_json(report)


def run_schedule(args: argparse.Namespace, ckpts: dict, schedule: str) -> dict:
    out = args.out / schedule
    print(f"## {schedule}: rollout of {args.minutes:g} min -> {out}", flush=True)
    measured = run_measured(rollout_command(args, ckpts, schedule, out), out, args.threads, args.poll)
    clip = read_json(out / "clip.json")
    final = (measured["wall_s"], measured["cpu_s"], measured["peak_rss_mib"])
    frames, fps = int(clip["num_frames"]), float(clip["fps"])
    rollout = {"frames": frames, "video_fps": fps, "wall_s": round(measured["wall_s"], 2),
               "cpu_s": round(measured["cpu_s"], 2), "frames_per_s": round(frames / measured["wall_s"], 3),
               "peak_rss_mib": round(measured["peak_rss_mib"], 1),
               "ru_maxrss_mib": round(measured["ru_maxrss_mib"], 1),
               "marks": mark_rows(measured["samples"], fps, frames, final)}
    print(f"## {schedule}: eval per {args.window_seconds:g} s window", flush=True)
    report = evaluate(args, out, fps)
    summary = summarize_eval(report, num_windows=math.ceil(frames / fps / args.window_seconds))
    return {**summary, "rollout": rollout, "video": f"{schedule}/frames.mp4",
            "report": f"{schedule}/report.json"}


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    try:
        args = parse_args(argv)
        check_outputs(args.out, args.schedules, overwrite=args.overwrite)
        ckpts = resolve_checkpoints(args)
        results = {s: run_schedule(args, ckpts, s) for s in args.schedules}
    except (DriveSimInputError, FileExistsError, RuntimeError) as err:
        print(f"eval_rollout_drift: error: {err}", file=sys.stderr)
        return 2
    settings = {"minutes": args.minutes, "window_seconds": args.window_seconds, "steps": args.steps,
                "seed": args.seed, "scenario": args.scenario, "daynight": args.daynight,
                "crowd": args.crowd, "traffic_range": args.traffic_range,
                "guidance_context": args.guidance_context, "threads": args.threads,
                "checkpoints": ckpts, "real": str(Path(args.real).resolve()),
                "real_split": args.real_split, "metrics": args.metrics, "eval_fps": args.eval_fps,
                "torch": torch.__version__}
    report = build_drift_report(results, settings=settings, measurement=MEASUREMENT.format(poll=args.poll))
    write_drift_json(args.out / "drift.json", report, overwrite=args.overwrite)
    png = plot_schedules(results, args.out / "drift.png", overwrite=args.overwrite)
    print(format_table(results))
    for name, s in results.items():
        for m in s["rollout"]["marks"]:
            print(f"{name:<10} at {m['video_s']:g} s of video: wall {m['wall_s']:.1f} s, "
                  f"{m['frames_per_s']:.2f} frames/s, CPU {m['cpu_s']:.1f} s, "
                  f"peak RSS {m['peak_rss_mib']:.0f} MiB ({m['source']})")
    print(f"wrote {args.out / 'drift.json'}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
