"""The `drivesim` entry point.

`fit`, `validate`, `test` and `predict` are LightningCLI subcommands (configs under
`configs/`). Every other command lives in its own module that defines
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their
command runs, so `drivesim --help` stays fast and an optional extra (nuScenes) is needed
only by the command that uses it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

LIGHTNING_COMMANDS = {
    "fit": "train a stage from a YAML config (LightningCLI)",
    "validate": "run validation of a checkpoint (LightningCLI)",
    "test": "run the test loop of a checkpoint (LightningCLI)",
    "predict": "batch generation across devices with a prediction writer (LightningCLI)",
}

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("drivesim.tools.train", "train one stage with the packaged configs (make train)"),
    "demo": ("drivesim.tools.demo", "the whole tiny stack on the synthetic world (make demo)"),
    "sample": ("drivesim.tools.sample", "generate frames for given boxes/labels from an image LDM"),
    "rollout": ("drivesim.rollout.cli", "long scenario-driven rollouts streamed to mp4"),
    "eval": ("drivesim.metrics.cli", "FVD / FID / oracle metrics over clip folders -> report.json"),
}

DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("drivesim.data.export", "export the synthetic driving world to the clip format"),
    "check": ("drivesim.data.check", "validate a clip dataset and report bad clips"),
    "encode": ("drivesim.tools.encode", "encode a clip dataset into latent shards"),
    "nuscenes": ("data_prep.nuscenes_to_clips", "nuScenes (devkit) -> clip format"),
    "nuscenes-fixture": ("data_prep.synthetic_to_nuscenes", "synthetic world -> nuScenes-format tables"),
    "bdd100k": ("data_prep.bdd100k_to_clips", "BDD100K MOT labels + videos -> clip format"),
    "videos": ("data_prep.videos_to_clips", "plain dashcam videos -> clip format"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drivesim",
        description="Latent video diffusion for driving scenes: train, roll out, evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    data = sub.add_parser("data", help="data tools: " + ", ".join(DATA_COMMANDS))
    data_sub = data.add_subparsers(dest="data_command", metavar="TOOL")
    for name, (_, text) in DATA_COMMANDS.items():
        data_sub.add_parser(name, help=text, add_help=False)
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _run_tool(module_name: str, prog: str, help_text: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    return int(module.run(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from drivesim.training.lightning_cli import run_lightning_cli

        run_lightning_cli([command, *rest])
        return 0
    if command == "data":
        if not rest or rest[0] in ("-h", "--help") or rest[0] not in DATA_COMMANDS:
            top.parse_args(["data", *rest[:1]] if rest and rest[0] not in DATA_COMMANDS else ["data", "--help"])
            return 0
        module, text = DATA_COMMANDS[rest[0]]
        return _run_tool(module, f"drivesim data {rest[0]}", text, rest[1:])
    if command in COMMANDS:
        module, text = COMMANDS[command]
        return _run_tool(module, f"drivesim {command}", text, rest)
    top.parse_args(argv)  # prints the usage error with the list of commands
    return 2


if __name__ == "__main__":
    sys.exit(main())
