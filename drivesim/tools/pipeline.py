"""Staged runs with stamps: each stage is one `drivesim` command; a finished stage is skipped.

A stage counts as finished when its stamp file exists, every output it names exists and
the stamp's fingerprint (the command line plus the contents of the YAML configs it names)
equals the stage's: a changed argument or config re-runs the stage instead of reusing
results made with the old settings. The stamp is written atomically after the command
succeeds, so a killed stage simply runs again. Used by `drivesim demo` (the tiny stack end
to end) and `drivesim train`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drivesim.utils.io import atomic_write_json


@dataclass
class Stage:
    """One step of a pipeline: a `drivesim` command and the files it must leave behind."""

    name: str
    title: str
    argv: list[str]
    outputs: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    program: list[str] | None = None  # default: this Python's `drivesim` CLI


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float


class StageFailed(RuntimeError):
    pass


def _stamp_path(stamp_dir: Path, stage: Stage) -> Path:
    return stamp_dir / f"{stage.name}.done.json"


def fingerprint(stage: Stage) -> str:
    """sha256 of the argv and of the contents of the ``.yaml`` files it names (the configs)."""
    h = hashlib.sha256(json.dumps(stage.argv).encode())
    for arg in stage.argv:
        if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
            h.update(Path(arg).read_bytes())
    return h.hexdigest()


def is_done(stage: Stage, stamp_dir: Path) -> bool:
    path = _stamp_path(stamp_dir, stage)
    if not (path.is_file() and all(p.exists() for p in stage.outputs)):
        return False
    try:
        return json.loads(path.read_text()).get("fingerprint") == fingerprint(stage)
    except (OSError, ValueError):  # an unreadable stamp: the stage runs again
        return False


def banner(text: str) -> None:
    line = "=" * min(88, max(40, len(text) + 8))
    print(f"\n{line}\n==  {text}\n{line}", flush=True)


def run_stage(stage: Stage, stamp_dir: Path, *, force: bool = False, index: int = 0,
              total: int = 0) -> StageResult:
    """Run one stage unless it is already done (or ``force``); raise StageFailed on error."""
    prefix = f"[{index}/{total}] " if total else ""
    if not force and is_done(stage, stamp_dir):
        prior = json.loads(_stamp_path(stamp_dir, stage).read_text())
        banner(f"{prefix}{stage.title}: done earlier ({prior.get('seconds', 0):.0f} s), skipping")
        return StageResult(stage.name, True, float(prior.get("seconds", 0.0)))
    banner(f"{prefix}{stage.title}")
    program = stage.program or [sys.executable, "-m", "drivesim.cli"]
    cmd = [*program, *stage.argv]
    shown = "drivesim" if stage.program is None else " ".join(stage.program)
    print(f"$ {shown} " + " ".join(shlex.quote(a) for a in stage.argv), flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, env={**os.environ, **stage.env}, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise StageFailed(f"stage '{stage.name}' failed with exit code {proc.returncode} after "
                          f"{seconds:.0f} s: {shown} {' '.join(stage.argv)}")
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        raise StageFailed(f"stage '{stage.name}' finished but did not write {missing}")
    stamp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_stamp_path(stamp_dir, stage),
                      {"stage": stage.name, "argv": stage.argv, "fingerprint": fingerprint(stage),
                       "seconds": seconds,
                       "outputs": [str(p) for p in stage.outputs],
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"-- {stage.title}: {seconds:.0f} s", flush=True)
    return StageResult(stage.name, False, seconds)


def run_pipeline(stages: Sequence[Stage], stamp_dir: Path, *, force: bool = False) -> list[StageResult]:
    """Run a linear chain: each stage consumes the outputs of the ones before it, so once a
    stage actually runs (unfinished, or forced) every later stage runs again too; a stamp of
    a later stage made from the old inputs would otherwise skip it with stale results."""
    results: list[StageResult] = []
    for i, stage in enumerate(stages, start=1):
        upstream_changed = any(not r.skipped for r in results)
        results.append(run_stage(stage, stamp_dir, force=force or upstream_changed, index=i,
                                 total=len(stages)))
    return results
