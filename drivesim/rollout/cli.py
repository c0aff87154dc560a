"""`drivesim rollout`: long scenario-driven rollouts streamed to mp4 (docs/rollout.md).

    drivesim rollout --run runs/x --scenario synthetic:3 --seconds 120 --daynight night \
        --guidance-context 1.5 --out runs/rollouts/night
    drivesim rollout --video-ckpt V --ae-ckpt A [--image-ckpt I] [--interp-ckpt P] ...
    drivesim rollout --preset demo --runs runs --seconds 120     # day and night (make rollout)

The command only parses: models go to ``drivesim.Simulator`` and every rollout option into
a ``RolloutConfig`` (one flag per field). ``--preset demo`` is ``--run RUNS/demo`` with the
output under ``RUNS/rollouts/demo`` and both day and night. ``--daynight both --workers 2``
renders the day and the night drive in two processes, the CPU threads split between them.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from drivesim.api import Simulator
from drivesim.data.labels import DAYNIGHT_NAMES
from drivesim.rollout.config import RolloutConfig
from drivesim.rollout.engine import RolloutResult, prepare_output
from drivesim.utils.io import DriveSimInputError
from drivesim.utils.parallel import spawn_pool

MODEL_FLAGS = {"ae_ckpt": "autoencoder", "video_ckpt": "video", "image_ckpt": "image", "interp_ckpt": "interpolation",
               "upsampler_ckpt": "upsampler"}


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RolloutConfig field, typed from its default; help and choices from its metadata."""
    for f in fields(RolloutConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.type in ("bool", bool):
            if f.default:  # on by default: the flag turns it off
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help="do not " + meta["help"])
            else:
                parser.add_argument(flag, action="store_true", help=meta["help"])
            continue
        kind = {"float": float, "float | None": float, "int": int, "int | None": int}.get(str(f.type), str)
        choices = meta.get("choices")
        if f.name == "daynight":
            choices = (*DAYNIGHT_NAMES, "both")
        parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=meta["help"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--run", help="run folder with the models (make train / make demo)")
    a("--video-ckpt", help="prediction model file (video LDM with context frames)")
    a("--ae-ckpt", help="autoencoder model file (temporal decoder)")
    a("--image-ckpt", help="image LDM model file for the start frame")
    a("--interp-ckpt", help="interpolation model file (output fps = fps * interp_factor ** interp_passes)")
    a("--upsampler-ckpt", help="video upsampler model file (output size = its scale x the decoded size)")
    a("--preset", choices=["demo"], help="--run RUNS/demo, output RUNS/rollouts/demo, day and night")
    a("--runs", default="runs", help="runs folder for --preset (default: runs)")
    a("--scenario", default="synthetic:3", help="synthetic:SEED | FILE.json | clip:DIR | none")
    a("--out", help="output clip folder (default with --preset: RUNS/rollouts/demo)")
    a("--resume", action="store_true", help="continue an interrupted rollout in --out")
    a("--overwrite", action="store_true", help="replace an existing output")
    a("--workers", type=int, default=1, help="with --daynight both: drives rendered in parallel "
      "processes, the CPU threads split between them (0: one per drive; default 1)")
    a("--no-progress", action="store_true")
    from drivesim.models.compile import COMPILE_MODES

    a("--compile", choices=COMPILE_MODES, help="torch.compile the diffusion networks in this mode (compiles "
      "once per shape; pays off on long drives: docs/scaling.md)")
    _config_flags(parser)


def rollout_config(args: argparse.Namespace, daynight: str | None) -> RolloutConfig:
    """The RolloutConfig of the parsed flags for one drive (``daynight`` replaces ``both``)."""
    values = {f.name: getattr(args, f.name) for f in fields(RolloutConfig)}
    return RolloutConfig(**{**values, "daynight": daynight})


def model_files(args: argparse.Namespace) -> dict[str, Any]:
    """Simulator.from_files arguments: the run folder's models, explicit flags winning."""
    from drivesim.inference.run_folder import resolve_run

    run = args.run or (str(Path(args.runs) / "demo") if args.preset == "demo" else None)
    files: dict[str, Any] = {} if run is None else dict(resolve_run(run))
    for flag, role in MODEL_FLAGS.items():
        if getattr(args, flag):
            files[role] = getattr(args, flag)
    for role, flag in (("video", "--video-ckpt"), ("autoencoder", "--ae-ckpt")):
        if role not in files:
            raise DriveSimInputError(f"{flag} is required (or --run RUN / --preset demo)", field=flag)
    return files


def rollout_targets(args: argparse.Namespace) -> list[tuple[str | None, Path]]:
    """(daynight, output folder) pairs: one, or day and night under --out with ``both``."""
    if args.preset == "demo":
        args.out = args.out or str(Path(args.runs) / "rollouts" / "demo")
        args.daynight = args.daynight or "both"
    if not args.out:
        raise DriveSimInputError("--out is required (or --preset demo)", field="--out")
    if args.daynight == "both":
        return [(dn, Path(args.out) / dn) for dn in ("day", "night")]
    return [(args.daynight, Path(args.out))]


def _report(res: RolloutResult, fps: float) -> None:
    print(f"wrote {res.out_dir}: {res.num_frames} frames at {fps:g} fps, "
          f"{res.num_segments} segments" + (f" (resumed at segment {res.resumed_from})"
                                            if res.resumed_from is not None else ""))


def _drive(sim: Simulator, args: argparse.Namespace, config: RolloutConfig, out: Path,
           position: int | None = None) -> tuple[RolloutResult, float]:
    res = sim.write_rollout(out, args.scenario, config, resume=args.resume, overwrite=args.overwrite,
                            progress=not args.no_progress, desc=f"rollout {config.daynight or out.name}",
                            position=position)
    return res, sim.plan(config).output_fps


def _simulator(args: argparse.Namespace, files: dict[str, Any]) -> Simulator:
    return Simulator.from_files(**files, compile=args.compile is not None, compile_mode=args.compile or "default")


def _run_one(args: argparse.Namespace, files: dict[str, Any], config: RolloutConfig, out: Path,
             position: int, threads: int) -> tuple[RolloutResult, float]:
    """One drive in a worker process (``--workers``): own models, ``threads`` CPU threads."""
    torch.set_num_threads(threads)
    return _drive(_simulator(args, files), args, config, out, position)


def run(args: argparse.Namespace) -> int:
    targets = rollout_targets(args)
    if args.workers < 0:
        raise DriveSimInputError("must be >= 0", field="--workers", value=args.workers)
    configs = [(rollout_config(args, dn), out) for dn, out in targets]  # validates every option
    files = model_files(args)
    for _, out in targets:  # refuse an existing output before loading or sampling anything
        prepare_output(out, resume=args.resume, overwrite=args.overwrite)
    workers = min(len(targets), args.workers or len(targets))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        with spawn_pool(workers) as pool:
            futures = [pool.submit(_run_one, args, files, cfg, out, i, threads)
                       for i, (cfg, out) in enumerate(configs)]
            for future in futures:  # a failed drive raises here
                _report(*future.result())
        return 0
    sim = _simulator(args, files)
    for cfg, out in configs:
        _report(*_drive(sim, args, cfg, out))
    return 0
