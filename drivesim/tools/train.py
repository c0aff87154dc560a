"""`drivesim train` (make train): one training stage with the packaged configs.

It only assembles a `drivesim fit` command (printed, so it can be reused by hand or in a
SLURM script) from the stage, the size (tiny | base), the data folder and the model files
of earlier stages, then runs it. Anything after `--` is passed to `drivesim fit` as is,
e.g. `-- --config configs/trainer/ddp.yaml --trainer.num_nodes 4`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drivesim.tools.pipeline import Stage, StageFailed, run_stage
from drivesim.utils.io import DriveSimInputError

# stage -> (config folder, config name pattern, data source, needs --ae, needs --init)
STAGES: dict[str, tuple[str, str, str, bool, bool]] = {
    "autoencoder": ("autoencoder", "{size}", "clips", False, False),
    "temporal_decoder": ("autoencoder", "temporal_{size}", "clips", False, True),
    "image_ldm": ("image_ldm", "{size}", "latents", True, False),
    "video_ldm": ("video_ldm", "{size}", "latents", True, True),
    "interpolation": ("video_ldm", "interp_{size}", "latents", True, True),
}


def config_root() -> Path:
    """configs/ of the working directory, else the one beside the installed package."""
    local = Path("configs")
    return local if local.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def build_fit_argv(stage: str, size: str, data: str, out: Path, *, ae: str | None = None,
                   init: str | None = None, extra: list[str] | None = None) -> list[str]:
    if stage not in STAGES:
        raise DriveSimInputError(f"unknown stage; expected one of {sorted(STAGES)}", field="--stage",
                                 value=stage)
    folder, pattern, source, needs_ae, needs_init = STAGES[stage]
    config = config_root() / folder / f"{pattern.format(size=size)}.yaml"
    if not config.is_file():
        raise DriveSimInputError(f"no {size} config for stage {stage}", path=config, field="--size",
                                 value=size)
    if needs_ae and not ae:
        raise DriveSimInputError(f"stage {stage} needs the autoencoder model file", field="--ae")
    if needs_init and not init:
        raise DriveSimInputError(f"stage {stage} starts from the previous stage's model file",
                                 field="--init")
    for flag, path in (("--ae", ae), ("--init", init)):
        if path and not Path(path).exists():
            raise DriveSimInputError("file not found", path=path, field=flag)
    if data != "synthetic" and not Path(data).is_dir():
        raise DriveSimInputError("data folder not found (or pass 'synthetic')", path=data,
                                 field="--data")
    data_args = (["--data.init_args.source", "synthetic"] if data == "synthetic" else
                 ["--data.init_args.source", source, "--data.init_args.root", data])
    argv = ["fit", "--config", str(config), *data_args, "--trainer.default_root_dir", str(out),
            "--model.init_args.model_file", str(out / "model.safetensors")]
    if ae and needs_ae:
        argv += ["--model.init_args.autoencoder_path", ae]
    if init:
        argv += ["--model.init_args.init_from", init]
    return argv + list(extra or [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=sorted(STAGES))
    parser.add_argument("--size", default="tiny", help="config size: tiny | base")
    parser.add_argument("--data", required=True,
                        help="clip folder (autoencoder stages), latent folder (LDM stages) or 'synthetic'")
    parser.add_argument("--out", required=True, help="run folder; the model file lands in OUT/model.safetensors")
    parser.add_argument("--ae", default=None, help="autoencoder model file (LDM stages)")
    parser.add_argument("--init", default=None, help="previous stage's model file")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra `drivesim fit` arguments")


def run(args: argparse.Namespace) -> int:
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    argv = build_fit_argv(args.stage, args.size, args.data, out, ae=args.ae, init=args.init,
                          extra=extra)
    stage = Stage(name=args.stage, title=f"train {args.stage} ({args.size})", argv=argv,
                  outputs=[out / "model.safetensors"])
    try:
        run_stage(stage, out / ".stamps", force=True)
    except StageFailed as err:
        print(err)
        return 1
    return 0
