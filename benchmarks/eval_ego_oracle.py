"""How well the ego-motion oracle reads speed and yaw rate: held-out world drives and real footage.

    python benchmarks/eval_ego_oracle.py [--drives 16] [--real-dir DIR] \\
        [--config '{"steps": 3000}'] [--cache-dir DIR] [--out report.json]

Loads the oracle of ``EgoOracleConfig`` (overridden by ``--config``; trained and cached on the
first run, which takes minutes on a CPU) and reports:

- **held-out world drives** (seeds disjoint from its training and calibration drives, the
  same mix of lighting, weather, traffic and ego programs): Pearson correlation and mean
  absolute error of the speed and yaw-rate estimates against the world's exact labels, the
  error of always answering the training mean (the floor), and the same scores with each
  drive's frames shuffled (a control: an oracle that reads motion loses its correlation);
- **real footage** (every ``*.mp4`` in ``--real-dir``, a folder of unlabelled front-camera
  highway clips; skipped without it): resampled to the oracle's frame rate and size (cover, centre crop), the mean and
  median speed estimate, the share of windows with a plausible highway speed (15-40 m/s,
  54-144 km/h), the mean |yaw rate|, and the same for the frames shuffled within each video
  (the control: shuffled footage is not driving, so the speed it reads is not a speed); and,
  to read those, how much the footage moves: the share of consecutive frame pairs (at the
  oracle's rate) whose mean grey-level change is below 0.5/255, i.e. frozen frames.

Nothing here is a test: the numbers are what they are on the machine that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from drivesim.metrics.ego_oracle import (
    SPEED_SCALE,
    YAW_SCALE,
    EgoOracle,
    EgoOracleConfig,
    grey,
    load_or_train_ego_oracle,
    motion_scores,
    render_drives,
    window_targets,
)

HIGHWAY = (15.0, 40.0)  # m/s: 54-144 km/h


def shuffled(frames: np.ndarray, seed: int) -> np.ndarray:
    return frames[np.random.default_rng(seed).permutation(len(frames))]


def world_report(oracle: EgoOracle, drives: int) -> dict:
    cfg = oracle.config
    start = cfg.seed * 1000 + 900  # disjoint from train_seeds (100..) and calibration_seeds (700..)
    data = render_drives(cfg, range(start, start + drives))
    out: dict = {"drives": drives}
    for name, order in (("in_order", False), ("shuffled", True)):
        preds, truths = [], []
        for d, (frames, speed, yaw) in enumerate(zip(data["frames"], data["speed"], data["yaw"])):
            preds.append(np.stack(oracle.estimate(shuffled(frames, d) if order else frames), axis=1))
            truths.append(window_targets(speed, yaw, cfg.stack) * [SPEED_SCALE, YAW_SCALE])
        pred, truth = np.concatenate(preds), np.concatenate(truths)
        constant = oracle.calibration.get("constant", [float(truth[:, 0].mean()), 0.0])
        out[name] = {key: {**motion_scores(pred[:, j], truth[:, j]),
                           "constant_mae": float(np.abs(constant[j] - truth[:, j]).mean())}
                     for j, key in enumerate(("speed", "yaw_rate"))}
    return out


def load_video(path: Path, cfg: EgoOracleConfig) -> np.ndarray:
    """The video at the oracle's rate and size: uint8 ``[n, h, w, 3]``."""
    from data_prep.common import (
        ResizeCrop,
        iter_video_frames,
        probe_video,
        resample_times,
        sample_at,
    )

    info = probe_video(path)
    times = resample_times(0.0, info.duration, cfg.fps)
    resize = ResizeCrop.create((info.height, info.width), (cfg.height, cfg.width))
    return np.stack([resize.image(rgb) for _, rgb in sample_at(iter_video_frames(path), times,
                                                               tail=1.0 / max(info.fps, 1.0))])


def footage_stats(speed: np.ndarray, yaw: np.ndarray) -> dict:
    return {"mean_speed": float(speed.mean()), "median_speed": float(np.median(speed)),
            "highway_fraction": float(((speed >= HIGHWAY[0]) & (speed <= HIGHWAY[1])).mean()),
            "mean_abs_yaw_rate": float(np.abs(yaw).mean())}


def frozen_fraction(frames: np.ndarray, cfg: EgoOracleConfig) -> float:
    """Share of consecutive frame pairs whose mean |grey change| is below 0.5 / 255."""
    luma = grey(frames, cfg.height, cfg.width)
    return float(((luma[1:] - luma[:-1]).abs().mean(dim=(1, 2)) < 0.5 / 255).float().mean())


def real_report(oracle: EgoOracle, real_dir: Path) -> dict:
    out = {}
    for k, path in enumerate(sorted(real_dir.glob("*.mp4"))):
        frames = load_video(path, oracle.config)
        if len(frames) < oracle.config.stack:
            continue
        out[path.name] = {"windows": len(frames) - oracle.config.stack + 1,
                          "frozen_pairs": frozen_fraction(frames, oracle.config),
                          "in_order": footage_stats(*oracle.estimate(frames)),
                          "shuffled": footage_stats(*oracle.estimate(shuffled(frames, k)))}
    return out


def print_report(report: dict) -> None:
    cal = report["calibration"]
    print(f"oracle {report['config_key']} ({report['load_s']:.0f} s to load or train)")
    print(f"calibration ({cal['windows']} windows): speed r {cal['speed']['pearson']:.3f}, "
          f"MAE {cal['speed']['mae']:.2f} m/s (constant {cal['speed']['constant_mae']:.2f}); yaw rate r "
          f"{cal['yaw_rate']['pearson']:.3f}, MAE {cal['yaw_rate']['mae']:.4f} rad/s "
          f"(constant {cal['yaw_rate']['constant_mae']:.4f})")
    world = report["world"]
    print(f"\nheld-out world drives ({world['drives']}):")
    print(f"{'':10s} {'speed r':>8s} {'MAE m/s':>8s} {'const':>7s} {'yaw r':>7s} {'MAE rad/s':>10s} {'const':>8s}")
    for name in ("in_order", "shuffled"):
        s, y = world[name]["speed"], world[name]["yaw_rate"]
        print(f"{name:10s} {s['pearson']:8.3f} {s['mae']:8.2f} {s['constant_mae']:7.2f} {y['pearson']:7.3f} "
              f"{y['mae']:10.4f} {y['constant_mae']:8.4f}")
    print("\nreal footage (no labels):")
    print(f"{'video':34s} {'frozen':>6s} {'order':9s} {'mean m/s':>9s} {'median':>7s} {'15-40 m/s':>10s} "
          f"{'|yaw| rad/s':>12s}")
    for name, rep in report["real"].items():
        for order in ("in_order", "shuffled"):
            r = rep[order]
            print(f"{name:34s} {rep['frozen_pairs']:6.2f} {order:9s} {r['mean_speed']:9.2f} {r['median_speed']:7.2f} "
                  f"{r['highway_fraction']:10.2f} {r['mean_abs_yaw_rate']:12.4f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drives", type=int, default=16, help="held-out world drives")
    parser.add_argument("--real-dir", default=None, help="folder of front-camera highway mp4 files (no labels)")
    parser.add_argument("--config", default="{}", help="JSON overrides of EgoOracleConfig")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="also write the report as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = EgoOracleConfig(**json.loads(args.config))
    start = time.monotonic()
    oracle = load_or_train_ego_oracle(cfg, cache_dir=args.cache_dir)
    report = {"config_key": cfg.key(), "config": json.loads(args.config), "load_s": time.monotonic() - start,
              "calibration": oracle.calibration, "world": world_report(oracle, args.drives)}
    real_dir = Path(args.real_dir) if args.real_dir else None
    if real_dir is not None and not real_dir.is_dir():
        parser.error(f"--real-dir {real_dir}: folder not found")
    report["real"] = real_report(oracle, real_dir) if real_dir is not None else {}
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
