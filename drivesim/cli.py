"""The `drivesim` entry point.

`fit`, `validate`, `test` and `predict` are LightningCLI subcommands (configs under
`configs/`). Every other command lives in its own module that defines
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their
command runs, so `drivesim --help` stays fast and an optional extra (nuScenes) is needed
only by the command that uses it.

User errors (``DriveSimInputError``, a bad flag, a missing or unreadable file, a config
naming a model file that does not exist) print one line, ``drivesim <command>: error: ...``,
and exit with code 2; ``--debug`` anywhere on the command line or ``DRIVESIM_DEBUG=1`` shows
the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from drivesim.utils.io import DriveSimInputError, input_error_in

DEBUG_ENV = "DRIVESIM_DEBUG"
# OSErrors about a file the user named are user errors too (their message names the file).
FILE_ERRORS = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

LIGHTNING_COMMANDS = {
    "fit": "train a stage from a YAML config (LightningCLI)",
    "validate": "run validation of a checkpoint (LightningCLI)",
    "test": "run the test loop of a checkpoint (LightningCLI)",
    "predict": "batch generation across devices with a prediction writer (LightningCLI)",
}

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("drivesim.tools.train", "train the whole stack on a DATA into a run folder (make train)"),
    "gpu-check": ("drivesim.tools.gpu_check", "every stage's base config for a few steps on CUDA (make gpu-check)"),
    "demo": ("drivesim.tools.demo", "the whole tiny stack on the synthetic world (make demo)"),
    "sample": ("drivesim.tools.sample", "generate frames for given boxes/labels from an image LDM"),
    "rollout": ("drivesim.rollout.cli", "long scenario-driven rollouts streamed to mp4"),
    "eval": ("drivesim.metrics.cli", "FVD / FID / oracle metrics over clip folders -> report.json"),
}

DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("drivesim.data.export", "export the synthetic driving world to the clip format"),
    "check": ("drivesim.data.check", "validate a clip dataset and report bad clips"),
    "encode": ("drivesim.tools.encode", "encode a clip dataset into latent shards"),
    "prepare": ("drivesim.tools.prepare", "any training DATA (clips, videos, nuScenes) -> a run's clip folders"),
    "nuscenes": ("data_prep.nuscenes_to_clips", "nuScenes (devkit) -> clip format"),
    "nuscenes-fixture": ("data_prep.synthetic_to_nuscenes", "synthetic world -> nuScenes-format tables"),
    "bdd100k": ("data_prep.bdd100k_to_clips", "BDD100K MOT labels + videos -> clip format"),
    "videos": ("data_prep.videos_to_clips", "plain dashcam videos -> clip format"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
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


class UsageError(DriveSimInputError):
    """A bad command line (unknown flag, bad value for a typed flag, missing argument)."""


class ToolParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing the usage and exiting,
    so ``main`` reports it as one line like every other user error."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _run_tool(module_name: str, prog: str, help_text: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(module_name)
    parser = ToolParser(prog=prog, description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    return int(module.run(args) or 0)


def user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err``: a ``DriveSimInputError`` anywhere in its cause / context
    chain (jsonargparse wraps the one a model's constructor raised), else ``err`` itself when it
    is a file error or an argument-parsing error; None for anything else (a bug)."""
    found = input_error_in(err)
    if found is not None:
        return found
    return err if isinstance(err, (*FILE_ERRORS, argparse.ArgumentError)) else None


_DROPPED = ("Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")


def one_line(err: BaseException) -> str:
    """The message on one line: jsonargparse's multi-line reports keep their key and error
    lines, without the echoed subtypes and values."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [lines[0]] + [line.removeprefix("- ") for line in lines[1:] if not line.startswith(_DROPPED)] \
        if lines else []
    text = " ".join(lines) or type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _prog(argv: Sequence[str]) -> str:
    if argv and argv[0] == "data" and len(argv) > 1 and argv[1] in DATA_COMMANDS:
        return f"drivesim data {argv[1]}"
    return f"drivesim {argv[0]}" if argv else "drivesim"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a user error prints one line to stderr and returns 2 (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return _dispatch(argv)
    except Exception as err:
        cause = user_error(err)
        if cause is None or debug:
            raise
        print(f"{_prog(argv)}: error: {one_line(cause)}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
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
    top.parse_args(argv)  # raises UsageError naming the unknown command and the list of commands
    return 2


if __name__ == "__main__":
    sys.exit(main())
