"""Peak memory of cascade rollouts against their length: constant memory, measured.

    python benchmarks/bench_cascade_memory.py --run runs/demo [--seconds 30 300] [--steps 1]
        [--upsample-steps 1] [--threads 1]

Runs ``drivesim rollout --run RUN`` through the whole cascade (both interpolation passes and
the video upsampler, as ``make rollout``) once per length, each in its own process, and reads
that process's peak resident memory (``ru_maxrss``) when it ends. Printed: per length the
output frames, wall time and peak RSS, and the ratio of the longest drive's peak to the
shortest's (target: a 5-minute drive at most 1.15x a 30-second one). The sampler steps only
change how long each network call takes, not what is held, so the default of 1 step keeps a
5-minute CPU drive to minutes; the outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The child: run the CLI in this process, then report this process's own peak RSS.
CHILD = """
import json, resource, sys
from drivesim.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as done:
    code = done.code
print("PEAK_RSS_KIB " + json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(code or 0)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="run folder with interpolation and upsampler models")
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 300.0])
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--upsample-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scenario", default="synthetic:3")
    return p.parse_args(argv)


def rollout(args: argparse.Namespace, seconds: float, out: Path) -> dict:
    argv = ["rollout", "--run", args.run, "--scenario", args.scenario, "--seconds", f"{seconds:g}",
            "--steps", str(args.steps), "--upsample-steps", str(args.upsample_steps), "--interp-passes", "2",
            "--crowd", "crowded", "--traffic-range", "60", "--guidance-boxes", "2", "--no-progress",
            "--out", str(out), "--overwrite"]
    env_threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          env=os.environ | env_threads)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"rollout of {seconds:g} s failed ({done.returncode}):\n{done.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB"))
    clip = json.loads((out / "clip.json").read_text())
    return {"seconds": seconds, "output_frames": clip["num_frames"], "fps": clip["fps"],
            "size": f"{clip['height']}x{clip['width']}", "wall_s": round(wall, 1),
            "peak_rss_mib": round(peak / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for role in ("interpolation", "upsampler"):
        if not (Path(args.run) / role / "model.safetensors").is_file():
            print(f"bench_cascade_memory: {args.run} has no {role} model (make demo trains both)", file=sys.stderr)
            return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="cascade-memory-") as tmp:
        for seconds in sorted(args.seconds):
            row = rollout(args, seconds, Path(tmp) / f"s{seconds:g}")
            rows.append(row)
            print(f"{row['seconds']:6g} s drive: {row['output_frames']:6d} frames at {row['fps']:g} fps, {row['size']}, "
                  f"{row['wall_s']:7.1f} s, peak RSS {row['peak_rss_mib']:7.1f} MiB", flush=True)
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS {rows[-1]['seconds']:g} s / {rows[0]['seconds']:g} s: {ratio:.3f}x "
          f"(target <= 1.15x; {args.steps} step(s) per key segment and interpolation window, "
          f"{args.upsample_steps} per upsampler chunk, {args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
