"""The rollout flags a run folder asks for (``make rollout RUN=name`` adds them).

``drivesim train`` records in ``RUN/run.json`` (``rollout``) what a rollout of the run needs
beyond the models: footage without boxes is rolled out without a box scenario
(``--scenario none``: its models learned only the null box token), and real footage starts
from the run's start clip (``--start clip:RUN/start``, a frame of held-out footage).

    python -m drivesim.tools.run_info runs/NAME      # prints e.g. --scenario none --start clip:runs/NAME/start
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from drivesim.inference.run_folder import read_run_manifest


def rollout_args(run: str | Path) -> list[str]:
    """``drivesim rollout`` flags of ``run``'s recorded defaults (none for a run without them)."""
    run = Path(run)
    doc = read_run_manifest(run) or {}
    defaults = doc.get("rollout") or {}
    out = []
    if "scenario" in defaults:
        out += ["--scenario", str(defaults["scenario"])]
    start = str(defaults.get("start", ""))
    if start.startswith("clip:"):
        out += ["--start", f"clip:{run / start.split(':', 1)[1]}"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m drivesim.tools.run_info RUN", file=sys.stderr)
        return 2
    try:
        print(" ".join(shlex.quote(a) for a in rollout_args(args[0])))
    except ValueError as err:  # DriveSimInputError: a malformed run.json
        print(f"run_info: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
