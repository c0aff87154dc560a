"""C2ST calibration: real against real, and real against degraded real (blur, noise, frame shuffling).

    python benchmarks/eval_c2st_calibration.py [--real DIR] [--clips 64] [--steps 300]
        [--frame-size 64x128] [--clip-size 32x64]

Without ``--real`` it exports ``--clips`` synthetic-world clips (``drivesim data synth``) into
a temporary folder; with it, any clip-format dataset or mp4 folder is used (real footage too).
The videos are split in two halves (even / odd in listing order): the first half is the
"real" side of every row, the second half is compared as it is (real vs real: the test's
null, expected near 0.5) and degraded (``drivesim.metrics.degrade``): Gaussian blur, Gaussian
noise and shuffled frame order (appearance unchanged: only the clip variant should see it).

Each row runs ``evaluate_videos(..., metrics="c2st")`` with the default ``C2STConfig`` (except
``--steps`` and the input sizes) and prints held-out accuracy with its Wilson and clustered 95% intervals for the
frame and clip variants, and the wall time of the row. The machine's load average is printed
too: the accuracies do not depend on it, the times do.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from drivesim.metrics.c2st import C2STConfig
from drivesim.metrics.degrade import blurred, noisy, shuffled
from drivesim.metrics.evaluate import evaluate_videos
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sources import list_sources
from drivesim.utils.args import hw_size


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=None, help="dataset to split in halves (default: export world clips)")
    p.add_argument("--clips", type=int, default=64, help="world clips to export (without --real)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--size", default="64x128")
    p.add_argument("--seed", type=int, default=20000, help="world seed of the export")
    p.add_argument("--stride", type=int, default=2, help="frame stride of the C2ST clips")
    p.add_argument("--clips-per-video", type=int, default=8)
    p.add_argument("--steps", type=int, default=C2STConfig().steps)
    p.add_argument("--blur", type=float, default=1.0, help="Gaussian blur sigma (pixels)")
    p.add_argument("--noise", type=float, default=8.0, help="Gaussian noise sigma (grey levels)")
    p.add_argument("--cases", default="real,blur,noise,shuffle")
    p.add_argument("--frame-size", type=hw_size("--frame-size"), default=(64, 128),
                   help="the frame variant's input size, HxW (--c2st-frame-size)")
    p.add_argument("--clip-size", type=hw_size("--clip-size"), default=(32, 64),
                   help="the clip variant's input size, HxW (--c2st-clip-size)")
    return p.parse_args(argv)


def _export(args: argparse.Namespace, out: Path) -> Path:
    cmd = [sys.executable, "-m", "drivesim.cli", "data", "synth", "--out", str(out), "--clips", str(args.clips),
           "--seconds", str(args.seconds), "--fps", str(args.fps), "--size", args.size, "--seed",
           str(args.seed), "--val-fraction", "0", "--no-progress"]
    subprocess.run(cmd, check=True)
    return out


def _interval(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _row(name: str, res: dict, seconds: float) -> str:
    cells = []
    for variant in ("frame", "clip"):
        r = res[variant]
        if r.get("accuracy") is None:
            cells.append(f"{'-':>6} {r.get('note', '')[:40]:<40}")
            continue
        cells.append(f"{r['accuracy']:6.3f} {_interval(r['ci95'])} {_interval(r['ci95_clustered'])}")
    return f"{name:<18} " + "   ".join(cells) + f"   {seconds:6.1f}"


def main(argv: list[str]) -> int:
    args = _args(argv)
    with tempfile.TemporaryDirectory(prefix="c2st-calib-") as tmp:
        root = Path(args.real) if args.real else _export(args, Path(tmp) / "world")
        videos = [opener for _, opener in list_sources(root)]
        real, other = videos[0::2], videos[1::2]
        cases = {"real vs real": lambda o: o(), f"vs blur {args.blur:g}px": lambda o: blurred(o(), args.blur),
                 f"vs noise {args.noise:g}": lambda o: noisy(o(), args.noise),
                 "vs shuffled": lambda o: shuffled(o())}
        wanted = {"real": "real vs real", "blur": f"vs blur {args.blur:g}px",
                  "noise": f"vs noise {args.noise:g}", "shuffle": "vs shuffled"}
        protocol = EvalProtocol(window_seconds=None, frame_stride=args.stride,
                                c2st_clips_per_video=args.clips_per_video, c2st_max_clips=10_000)
        cfg = replace(C2STConfig(), steps=args.steps, frame_size=args.frame_size, clip_size=args.clip_size)
        print(f"{root}: {len(real)} real / {len(other)} compared videos; load average {os.getloadavg()[0]:.1f}")
        print(f"C2STConfig {cfg}")
        print(f"{'case':<18} {'frame acc':>6} {'Wilson 95%':<16} {'clustered 95%':<16}   "
              f"{'clip acc':>6} {'Wilson 95%':<16} {'clustered 95%':<16}   {'wall s':>6}")
        for key in args.cases.split(","):
            name = wanted[key]
            make = cases[name]
            start = time.perf_counter()
            res = evaluate_videos([lambda o=o, make=make: make(o) for o in other], real, metrics="c2st",
                                  protocol=protocol, c2st=cfg)["c2st"]
            print(_row(name, res, time.perf_counter() - start), flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
