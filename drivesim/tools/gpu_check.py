"""`drivesim gpu-check` (make gpu-check): every stage's base config for a few steps on CUDA.

    drivesim gpu-check [--size base] [--trainer ddp] [--steps 20] [--warmup 5] [--out runs/gpu-check-base]

Trains each stage of the chain (``tools/chain.py``) for ``--steps`` batches on the synthetic
world rendered on the fly (``synthetic-stream``: no export, no latent cache; the LDM stages
encode with the autoencoder the earlier stages wrote), with the trainer config (``ddp``:
bf16-mixed DDP on every GPU), each stage's model file feeding the next as in a real run, and
prints per stage the training speed after ``--warmup`` batches (compilation falls there) and the
peak CUDA memory (``training/throughput.ThroughputMeter``). The output folder is scratch: it is
replaced on every run. ``--device cpu --narrow`` runs the same stages at reduced width on CPU
(how the test suite checks every base config without a GPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from drivesim.tools.chain import FIT_STAGES, ChainSpec, chain_stages, stage_config
from drivesim.tools.pipeline import Stage, StageFailed, run_pipeline
from drivesim.tools.prepare import STREAM
from drivesim.utils.io import DriveSimInputError, atomic_write_json

MARKER = "gpu-check.json"
METER = "drivesim.training.throughput.ThroughputMeter"
# Reduced widths for the CPU check (--narrow): the structure of each base config, not its size.
NARROW: dict[str, tuple[str, ...]] = {
    "autoencoder": ("--model.init_args.autoencoder.init_args.base_channels", "8"),
    "image_ldm": ("--model.init_args.unet.init_args.model_channels", "32", "--model.init_args.unet.init_args.token_dim",
                  "64"),
    "upsampler": ("--model.init_args.upsampler.init_args.model_channels", "32", "--model.init_args.patch_size",
                  "[64, 64]", "--data.init_args.height", "128", "--data.init_args.width", "256"),
}
NARROW_ALL = ("--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0")


def narrow_args(config: Path, name: str) -> tuple[str, ...]:
    """Reduced width, batch 1, and no compilation where the stage's module compiles."""
    import yaml

    model = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("init_args", {})
    compile_off = ("--model.init_args.compile", "false") if "compile" in model else ()
    return (*NARROW_ALL, *compile_off, *NARROW.get(name, ()))


def check_args(out: Path, name: str, steps: int, warmup: int) -> tuple[str, ...]:
    """A short fit: ``steps`` batches, no validation or logger, the meter writing ``out/<stage>``."""
    return ("--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps",
            "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.val_check_interval", "null", "--trainer.callbacks+=" + METER,
            "--trainer.callbacks.out", str(out / name / "throughput.json"), "--trainer.callbacks.warmup", str(warmup))


def check_stages(out: Path, *, size: str = "base", trainer: str | None = "ddp", steps: int = 20, warmup: int = 5,
                 narrow: bool = False, config_root: Path | None = None) -> list[Stage]:
    """The chain's training stages as short runs into ``out`` (see the module doc)."""
    if steps < 1 or not 0 <= warmup < steps:
        raise DriveSimInputError("expected steps >= 1 and 0 <= warmup < steps", field="--warmup",
                                 value=[steps, warmup])
    spec = ChainSpec(run=out, data=STREAM, size=size, trainer=trainer, config_root=config_root)
    stages = chain_stages(spec)
    stage_args = {s.name: (*check_args(out, s.name, steps, warmup),
                           *(narrow_args(stage_config(spec, s.name), s.name) if narrow else ())) for s in stages}
    return chain_stages(ChainSpec(run=out, data=STREAM, size=size, trainer=trainer, config_root=config_root,
                                  stage_args=stage_args))


def fresh_folder(out: Path) -> None:
    """Empty ``out`` if it is an earlier check's folder; refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DriveSimInputError("not empty and not a gpu-check folder", path=out, field="--out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def report(out: Path, stages: list[Stage]) -> list[dict]:
    rows = []
    for stage in stages:
        path = out / stage.name / "throughput.json"
        rows.append({"stage": stage.name, **(json.loads(path.read_text()) if path.is_file() else {})})
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(rows: list[dict]) -> None:
    print(f"\n{'stage':22s} {'batches/s':>10s} {'samples/s':>10s} {'peak alloc GiB':>15s} {'reserved GiB':>13s}  device")
    for r in rows:
        print(f"{r['stage']:22s} {_fmt(r.get('batches_per_s'), '10.2f')} {_fmt(r.get('samples_per_s'), '10.1f')} "
              f"{_fmt(r.get('peak_allocated_gib'), '15.2f')} {_fmt(r.get('peak_reserved_gib'), '13.2f')}  "
              f"{r.get('device', '-')} ({r.get('precision', '-')}, world size {r.get('world_size', '-')})")


def run_check(out: Path, *, runner: Callable[[Stage], int] | None = None, **options) -> list[dict]:
    fresh_folder(out)
    atomic_write_json(out / MARKER, {k: str(v) for k, v in options.items()})
    stages = check_stages(out, **options)
    run_pipeline(stages, out / ".stamps", runner=runner)
    rows = report(out, stages)
    atomic_write_json(out / MARKER, {"options": {k: str(v) for k, v in options.items()}, "stages": rows})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="base", help="config size (default base)")
    parser.add_argument("--trainer", default="ddp", help="trainer config: cpu, ddp, fsdp or a YAML file (default ddp)")
    parser.add_argument("--steps", type=int, default=20, help="training batches per stage")
    parser.add_argument("--warmup", type=int, default=5, help="batches left out of the timing")
    parser.add_argument("--out", default=None, help="scratch folder (default runs/gpu-check-SIZE)")
    parser.add_argument("--narrow", action="store_true", help="reduced widths, batch 1, no compile (CPU check)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default) refuses to start without a GPU; cpu needs --trainer cpu")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise DriveSimInputError("no CUDA device: this check measures GPUs (use --device cpu --trainer cpu --narrow "
                                 "for the CPU check)", field="--device", value="cuda")
    out = Path(args.out or f"runs/gpu-check-{args.size}")
    try:
        rows = run_check(out, size=args.size, trainer=args.trainer, steps=args.steps, warmup=args.warmup,
                         narrow=args.narrow)
    except StageFailed as err:
        print(f"\ngpu-check stopped: {err}")
        return 1
    print_report(rows)
    print(f"\n{out / MARKER}")
    return 0


__all__ = ["FIT_STAGES", "check_stages", "run_check"]
