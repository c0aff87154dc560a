"""`drivesim train` (make train): the whole stack on a DATA, one command.

    drivesim train --data DIR [--size tiny|base] [--trainer cpu|ddp|fsdp|FILE] [--run RUN]
                   [--stage NAME ...] [--init RUN] [--minutes M | --minutes STAGE=M ...] [--force]
                   [-- extra `drivesim fit` arguments for every training stage]

trains every stage in order into the run folder (``tools/chain.py``: autoencoder -> temporal
decoder -> latent cache -> image LDM -> video LDM -> interpolation -> upsampler), each stage's
model file feeding the next, and keeps ``RUN/run.json`` for ``make rollout RUN=name``. Each
stage's command is printed before it runs. A re-run continues at the first unfinished stage
(a stopped stage resumes from its last checkpoint); ``--stage`` trains only the named stages,
taking the earlier stages' files from the run folder. A finished stage whose settings changed
is refused naming the difference; ``--force`` retrains it (and, with ``--stage``, retrains the
named stages even when finished); the old files move to ``RUN/.previous/``. docs/training.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from drivesim.tools.chain import ORDER, SIZES, TRAINERS, ChainSpec
from drivesim.tools.pipeline import StageFailed, banner
from drivesim.tools.prepare import STREAM
from drivesim.tools.runs import manifest_summary, run_chain
from drivesim.utils.io import DriveSimInputError


def parse_minutes(values: list[str] | None) -> tuple[float | None, dict[str, float]]:
    """``["20", "video_ldm=3"]`` -> (20.0, {"video_ldm": 3.0})."""
    total, per_stage = None, {}
    for text in values or []:
        name, _, number = text.rpartition("=")
        try:
            minutes = float(number)
        except ValueError as err:
            raise DriveSimInputError("expected M or STAGE=M (minutes)", field="--minutes", value=text) from err
        if name:
            per_stage[name] = minutes
        else:
            total = minutes
    return total, per_stage


def run_path(data: str, size: str, run: str | None, runs: str) -> Path:
    """``--run`` as given, else RUNS/<name of DATA>-<size>."""
    if run:
        return Path(run)
    name = "synthetic" if data == "synthetic" else (Path(data).resolve().name or "data")
    return Path(runs) / f"{name}-{size}"


def init_path(init: str | None, runs: str) -> Path | None:
    """``--init`` as a path when it exists, else a run name under RUNS."""
    if not init:
        return None
    return Path(init) if Path(init).exists() or "/" in init else Path(runs) / init


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="clip folder, folder of videos, nuScenes dataroot, or 'synthetic'")
    parser.add_argument("--size", default="tiny", choices=SIZES, help="config size (default tiny)")
    parser.add_argument("--trainer", default=None,
                        help=f"trainer config: {', '.join(TRAINERS)} or a YAML file (default: the size config's)")
    parser.add_argument("--run", default=None, help="run folder (default RUNS/<data name>-<size>)")
    parser.add_argument("--runs", default="runs", help="folder of run folders (default runs)")
    parser.add_argument("--stage", action="append", choices=ORDER, default=None,
                        help="train only this stage (repeatable); earlier stages' files come from the run folder")
    parser.add_argument("--init", default=None, help="start from another run's models (a run name or folder)")
    parser.add_argument("--minutes", action="append", default=None,
                        help="wall-time budget: M in total (split over the stages) or STAGE=M (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="retrain finished stages whose settings changed (with --stage: the named ones)")
    parser.add_argument("--configs", default=None, help="config root (default: configs/)")
    parser.add_argument("--workers", type=int, default=1, help="processes for data conversion")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra `drivesim fit` arguments")


def spec_from_args(args: argparse.Namespace) -> ChainSpec:
    total, per_stage = parse_minutes(args.minutes)
    data = args.data if args.data in ("synthetic", STREAM) else os.path.normpath(args.data)  # "dir/" == "dir"
    return ChainSpec(run=run_path(data, args.size, args.run, args.runs), data=data, size=args.size,
                     trainer=args.trainer, init=init_path(args.init, args.runs),
                     stages=tuple(args.stage) if args.stage else None, minutes=total, stage_minutes=per_stage,
                     extra=tuple(a for a in args.extra if a != "--"),
                     config_root=Path(args.configs) if args.configs else None, workers=args.workers,
                     progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    try:
        results = run_chain(spec, force=bool(args.stage) and args.force,
                            on_change="rerun" if args.force else "refuse")
    except StageFailed as err:
        print(f"\ntrain stopped: {err}\n(run the same command again to continue from the stopped stage)")
        return 1
    banner(f"run {spec.run} ({spec.size}) finished")
    for r in results:
        print(f"  {r.name:22s} {'skipped' if r.skipped else f'{r.seconds:6.0f} s'}{' (resumed)' if r.resumed else ''}")
    summary = manifest_summary(spec.run)
    print(f"\nmodels:  {spec.run / 'run.json'}: {', '.join(sorted(summary['models'])) or 'none yet'}")
    if "video" in summary["models"]:
        name = spec.run.name if spec.run.parent == Path(args.runs) else str(spec.run)
        print(f"roll out: make rollout RUN={name}   (or: drivesim rollout --run {spec.run} --out OUT)")
    print(f"logs:    tensorboard --logdir {spec.run}")
    return 0
