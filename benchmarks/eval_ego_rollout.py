"""Ego-motion control in long rollouts: does the simulated car drive the commanded speed and yaw rate?

    python benchmarks/eval_ego_rollout.py --run RUN [--scenario synthetic:7:stop_and_go_curve] \\
        [--seconds 120] [--steps 5] [--guidance-ego 2] [--guidance-boxes 1] [--crowd crowded] \\
        [--traffic-range 60] [--real-dir DIR] [--out runs/ego_rollout] [--reuse]
    (or --autoencoder AE --video VIDEO --image IMAGE instead of --run)
    python benchmarks/eval_ego_rollout.py --score ROLLOUT_DIR [...]   # score existing rollouts only

Rolls out the scenario (default: the world's traffic around an ego under the
``stop_and_go_curve`` preset) twice with the same models, seed and start frame: with the ego
motion guided at ``--guidance-ego`` and with it dropped (``guidance_ego = 0``: the learned null
embedding, the unconditional branch of ego guidance). Each rollout folder's ``clip.json``
records the commanded motion per frame, which is what the rollout is scored against:

- **follow**: the ego-motion oracle (``drivesim.metrics.ego_oracle``, trained at the rollout's
  frame rate and cached) reads speed and yaw rate from the frames; Pearson r and MAE of the
  estimates against the command (``follow_scores``). Reference: the same drive rendered by
  the synthetic world (its ceiling on this scenario);
- **frame change** (mean |grey-level change| between consecutive frames, in 1/255, at the
  oracle's 64x128) over the pairs where the command stands still (both frames <= 0.05 m/s)
  and where it drives (both >= 5 m/s). References: the world's render of the same drive
  (what a standing ego looks like there: only the traffic moves) and, with ``--real-dir``,
  real footage at the same rate and size (near-frozen clips show real stationary footage).

``--score DIR ...`` skips the rollouts and scores the given rollout folders (the first is
checked against the targets). Writes ``OUT/<variant>/`` (rollout clip folders), ``OUT/<variant>_sheet.png`` (frames every
``--sheet-every`` seconds, commanded speed / yaw rate under each) and ``OUT/report.json``.
Nothing here is a test: the numbers are what they are for the models and machine that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

from drivesim import RolloutConfig, Simulator
from drivesim.data.clip_format import read_clip
from drivesim.data.ego import EgoSeries
from drivesim.metrics.ego_oracle import (
    EgoOracle,
    EgoOracleConfig,
    follow_scores,
    grey,
    load_or_train_ego_oracle,
)

STOPPED, MOVING = 0.05, 5.0  # m/s: a pair of frames stands still / drives when both commands are
TARGETS = {"speed": 0.8, "yaw_rate": 0.7}  # Pearson r the ego-guided rollout should reach


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--run", help="run folder (make demo / make train); or the three model files below")
    a("--autoencoder")
    a("--video")
    a("--image")
    a("--scenario", default="synthetic:7:stop_and_go_curve")
    a("--seconds", type=float, default=120.0)
    a("--steps", type=int, default=5)
    a("--guidance-ego", type=float, default=2.0, help="ego guidance of the guided rollout")
    a("--guidance-boxes", type=float, default=1.0, help="box guidance (the demo rollouts use 2)")
    a("--guidance-context", type=float, default=1.5)
    a("--crowd", default="crowded")
    a("--traffic-range", type=float, default=60.0)
    a("--seed", type=int, default=0)
    a("--real-dir", default=None, help="folder of real front-camera mp4 files (frame-change reference)")
    a("--oracle-config", default="{}", help="JSON overrides of EgoOracleConfig (fps: the rollout's)")
    a("--cache-dir", default=None)
    a("--sheet-every", type=float, default=2.0, help="seconds between contact-sheet frames")
    a("--out", default="runs/ego_rollout")
    a("--reuse", action="store_true", help="score rollout folders already in OUT instead of redoing them")
    a("--score", nargs="+", default=None, metavar="DIR",
      help="only score these rollout folders (e.g. the demo's; the first one is checked against the targets)")
    a("--threads", type=int, default=2)
    return p.parse_args(argv)


def simulator(args: argparse.Namespace) -> Simulator:
    if args.run:
        return Simulator.from_run(args.run)
    if not (args.autoencoder and args.video):
        raise SystemExit("give --run RUN or --autoencoder AE --video VIDEO [--image IMAGE]")
    return Simulator.from_files(autoencoder=args.autoencoder, video=args.video, image=args.image)


def rollout(sim: Simulator, out: Path, args: argparse.Namespace, guidance_ego: float) -> tuple[Path, float]:
    """The rollout folder (made now unless ``--reuse`` finds it) and the seconds it took."""
    if args.reuse and (out / "clip.json").is_file():
        return out, 0.0
    config = RolloutConfig(seconds=args.seconds, steps=args.steps, seed=args.seed, crowd=args.crowd,
                           traffic_range=args.traffic_range, guidance_context=args.guidance_context,
                           guidance_boxes=args.guidance_boxes, guidance_ego=guidance_ego,
                           interp_passes=0, upsample=False)  # key frames: what the video model's ego conditioning makes
    start = time.monotonic()
    sim.write_rollout(out, args.scenario, config, overwrite=True, progress=True)
    return out, time.monotonic() - start


def frame_change(frames: np.ndarray, cfg: EgoOracleConfig) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` -> mean |grey change| of each consecutive pair, ``[n - 1]``, in 1/255."""
    luma = grey(frames, cfg.height, cfg.width)                              # [n, h, w] in [0, 1]
    return ((luma[1:] - luma[:-1]).abs().mean(dim=(1, 2)) * 255.0).numpy()


def change_by_motion(change: np.ndarray, ego: EgoSeries) -> dict:
    """Mean frame change over the pairs that stand still and those that drive (by command)."""
    s, k = ego.speed, ego.known
    pairs = {"stopped": (s[:-1] <= STOPPED) & (s[1:] <= STOPPED), "moving": (s[:-1] >= MOVING) & (s[1:] >= MOVING)}
    out = {}
    for name, mask in pairs.items():
        mask = mask & k[:-1] & k[1:]
        out[name] = {"pairs": int(mask.sum()), "mean": float(change[mask].mean()) if mask.any() else None}
    return out


def score_video(oracle: EgoOracle, frames: np.ndarray, fps: float, ego: EgoSeries) -> dict:
    return {"frames": int(len(frames)), "follow": follow_scores(oracle, frames, fps, ego),
            "frame_change": change_by_motion(frame_change(frames, oracle.config), ego)}


def world_render(scenario: dict, n: int, fps: float, size: tuple[int, int]) -> tuple[np.ndarray, EgoSeries] | None:
    """The drive of a ``synthetic:SEED[:EGO]`` rollout (``scenario``: its clip.json identity)
    rendered by the synthetic world, ``n`` frames at ``fps``: uint8 frames and the world's ego
    motion; None for other scenarios."""
    from drivesim.data.ego import load_track
    from drivesim.data.world import DrivingWorld, WorldConfig
    from drivesim.rollout.scenario import SYNTHETIC_VEHICLES

    if scenario.get("kind") != "synthetic":
        return None
    ego = scenario.get("ego")
    world = DrivingWorld(WorldConfig(seed=int(scenario["seed"]), height=size[0], width=size[1], fps=fps,
                                     night=bool(scenario["night"]), num_vehicles=SYNTHETIC_VEHICLES[scenario["crowd"]],
                                     traffic_range=float(scenario["traffic_range"]),
                                     ego_track=load_track(ego["name"]) if ego else None))
    drive = [world.step() for _ in range(n)]
    return (np.stack([f.rgb for f in drive]),
            EgoSeries.of([f.ego_speed for f in drive], [f.ego_yaw_rate for f in drive]))


def real_reference(real_dir: Path, cfg: EgoOracleConfig) -> dict:
    """Mean frame change of each real clip at the oracle's rate and size (and its frozen share)."""
    from eval_ego_oracle import frozen_fraction, load_video

    out = {}
    for path in sorted(real_dir.glob("*.mp4")):
        frames = load_video(path, cfg)
        if len(frames) >= 2:
            out[path.name] = {"pairs": len(frames) - 1, "mean_change": float(frame_change(frames, cfg).mean()),
                              "frozen_pairs": frozen_fraction(frames, cfg)}
    return out


def contact_sheet(path: Path, frames: np.ndarray, ego: EgoSeries, fps: float, every_s: float,
                  columns: int = 8, rows: int = 4) -> None:
    """Frames every ``every_s`` seconds in a grid, the commanded speed / yaw rate under each."""
    from PIL import Image, ImageDraw

    idx = [i for i in np.arange(0, len(frames), max(1, round(every_s * fps)))][: columns * rows]
    h, w = frames.shape[1:3]
    sheet = Image.new("RGB", (columns * w, rows * (h + 12)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, i in enumerate(idx):
        x, y = (j % columns) * w, (j // columns) * (h + 12)
        sheet.paste(Image.fromarray(frames[i]), (x, y))
        label = f"{i / fps:.0f}s {ego.speed[i]:.0f}m/s {ego.yaw_rate[i]:+.2f}" if ego.known[i] else f"{i / fps:.0f}s"
        draw.text((x + 2, y + h), label, fill="black")
    sheet.save(path)


def print_report(report: dict) -> None:
    print(f"\nscenario {json.dumps(report['scenario'])}, {report['seconds']:g} s at {report['fps']:g} fps; oracle "
          f"{report['oracle']['key']} (calibration r speed {report['oracle']['speed_r']:.2f}, "
          f"yaw rate {report['oracle']['yaw_r']:.2f})")
    print(f"{'video':22s} {'speed r':>8s} {'MAE m/s':>8s} {'yaw r':>7s} {'MAE rad/s':>10s} "
          f"{'change stop':>12s} {'change move':>12s}")
    for name, rep in report["videos"].items():
        f, c = rep["follow"], rep["frame_change"]
        s, y = f["speed"] or {}, f["yaw_rate"] or {}
        cells = [f"{s.get('pearson', float('nan')):8.3f}", f"{s.get('mae', float('nan')):8.2f}",
                 f"{y.get('pearson', float('nan')):7.3f}", f"{y.get('mae', float('nan')):10.4f}"]
        cells += [f"{v['mean']:12.2f}" if v["mean"] is not None else f"{'-':>12s}"
                  for v in (c["stopped"], c["moving"])]
        print(f"{name:22s} " + " ".join(cells))
    for name, rep in report.get("real", {}).items():
        print(f"real {name}: mean frame change {rep['mean_change']:.2f}/255 over {rep['pairs']} pairs "
              f"({rep['frozen_pairs']:.0%} frozen)")
    for name, ok in report["targets"].items():
        print(f"target {name}: {'met' if ok else 'not met'}")


def targets(report: dict, guided: str) -> dict:
    """The issue's figures: guided r >= TARGETS, dropped |r| well below."""
    follow = report["videos"][guided]["follow"]
    out = {}
    for name, want in TARGETS.items():
        r = (follow[name] or {}).get("pearson", 0.0)
        out[f"{name} r >= {want} (guided: {r:.3f})"] = r >= want
    return out


def rollouts(args: argparse.Namespace, out: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """{name: rollout folder} to score and the seconds each took: ``--score`` folders as they are,
    else the guided and the ego-dropped rollout made now (or reused)."""
    if args.score:
        return {Path(d).name: Path(d) for d in args.score}, {}
    sim = simulator(args)
    folders, timings = {}, {}
    for name, g in ((f"ego_guided_{args.guidance_ego:g}", args.guidance_ego), ("ego_dropped", 0.0)):
        folders[name], timings[name] = rollout(sim, out / name, args, g)
    return folders, timings


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    folders, timings = rollouts(args, out)
    videos, scenario = {}, {}
    for name, folder in folders.items():
        clip = read_clip(folder)
        scenario = clip.labels.get("scenario", {})
        videos[name] = (clip.frames(list(range(clip.num_frames))), clip.ego_arrays(range(clip.num_frames)), clip.fps)
    fps = next(iter(videos.values()))[2]
    frames0 = next(iter(videos.values()))[0]
    cfg = EgoOracleConfig(**{"fps": fps, **json.loads(args.oracle_config)})
    oracle = load_or_train_ego_oracle(cfg, cache_dir=args.cache_dir)
    world = world_render(scenario, len(frames0), fps, frames0.shape[1:3])
    if world is not None:
        videos["world_render"] = (*world, fps)
    cal = oracle.calibration
    report = {"scenario": scenario, "seconds": len(frames0) / fps, "fps": fps, "steps": None if args.score else args.steps,
              "guidance": {"ego": args.guidance_ego, "boxes": args.guidance_boxes, "context": args.guidance_context},
              "rollout_seconds": timings, "threads": args.threads, "load_average": list(os.getloadavg()),
              "oracle": {"key": cfg.key(), "config": json.loads(args.oracle_config) | {"fps": fps},
                         "speed_r": cal["speed"]["pearson"], "yaw_r": cal["yaw_rate"]["pearson"]},
              "videos": {name: score_video(oracle, f, v_fps, ego) for name, (f, ego, v_fps) in videos.items()}}
    if args.real_dir:
        report["real"] = real_reference(Path(args.real_dir), cfg)
    report["targets"] = targets(report, next(iter(folders)))
    out.mkdir(parents=True, exist_ok=True)
    for name, (f, ego, v_fps) in videos.items():
        contact_sheet(out / f"{name}_sheet.png", f, ego, v_fps, args.sheet_every)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
