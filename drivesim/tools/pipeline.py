"""Staged runs with stamps: each stage is one `drivesim` command; a finished stage is skipped.

A stage counts as finished when its stamp file exists, every output it names exists, the
stamp's fingerprint (the command line plus the contents of the YAML configs it names) equals
the stage's, and the files it reads (``inputs``: the model files of earlier stages) are the
ones it was made from. The stamp is written atomically after the command succeeds.

What happens to a stage that is not finished (``stage_status``):

- ``new``: never finished. If an earlier attempt with the same fingerprint and inputs was
  stopped (its ``started`` marker matches), the stage's folder (``workdir``) is kept, so a
  training command given ``--ckpt_path last`` resumes from its last checkpoint; otherwise the
  folder's old contents move to ``<stamps>/../.previous/`` first, so a fresh attempt never
  resumes from a checkpoint made with other settings and nothing trained is deleted.
- ``stale``: finished, but an input changed since (an earlier stage was retrained): runs again.
- ``changed``: finished with another command line or config. ``run_pipeline(on_change=
  "rerun")`` runs it again (the demo); ``on_change="refuse"`` raises :class:`StageConflict`
  naming the difference before anything runs (``drivesim train``), unless ``force``.

Used by `drivesim demo` (the tiny stack end to end) and `drivesim train` (``tools/chain.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drivesim.utils.io import DriveSimInputError, atomic_write_json

ARCHIVE = ".previous"


@dataclass
class Stage:
    """One step of a pipeline: a `drivesim` command and the files it must leave behind.

    ``inputs``: files of earlier stages it reads (a changed one makes the stage stale);
    ``workdir``: the stage's own folder (logs, checkpoints), archived before a fresh attempt.
    """

    name: str
    title: str
    argv: list[str]
    outputs: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    program: list[str] | None = None  # default: this Python's `drivesim` CLI
    inputs: list[Path] = field(default_factory=list)
    workdir: Path | None = None


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float
    resumed: bool = False


class StageFailed(RuntimeError):
    pass


class StageConflict(DriveSimInputError):
    """A finished stage would be redone with other settings (refused unless forced)."""


Runner = Callable[[Stage], int]
Status = Literal["done", "stale", "changed", "new"]


def _stamp_path(stamp_dir: Path, stage: Stage) -> Path:
    return stamp_dir / f"{stage.name}.done.json"


def _started_path(stamp_dir: Path, stage: Stage) -> Path:
    return stamp_dir / f"{stage.name}.started.json"


def config_files(argv: Sequence[str]) -> list[Path]:
    """The ``.yaml`` files an argv names (the configs whose contents belong to the fingerprint)."""
    return [Path(a) for a in argv if a.endswith((".yaml", ".yml")) and Path(a).is_file()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(stage: Stage) -> str:
    """sha256 of the argv and of the contents of the ``.yaml`` files it names (the configs)."""
    h = hashlib.sha256(json.dumps(stage.argv).encode())
    for path in config_files(stage.argv):
        h.update(path.read_bytes())
    return h.hexdigest()


def inputs_state(stage: Stage) -> dict[str, list[int] | None]:
    """{input path: [size, mtime_ns]} (None for a missing one): which files the stage read."""
    out: dict[str, list[int] | None] = {}
    for path in stage.inputs:
        st = path.stat() if path.exists() else None
        out[str(path)] = None if st is None else [st.st_size, st.st_mtime_ns]
    return out


def attempt_key(stage: Stage) -> str:
    return hashlib.sha256((fingerprint(stage) + json.dumps(inputs_state(stage), sort_keys=True)).encode()).hexdigest()


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # an unreadable stamp: as if absent
        return None


def stage_status(stage: Stage, stamp_dir: Path) -> Status:
    stamp = _read(_stamp_path(stamp_dir, stage))
    if stamp is None:
        return "new"
    if stamp.get("fingerprint") != fingerprint(stage):
        return "changed"
    if not all(p.exists() for p in stage.outputs):
        return "new"
    return "done" if stamp.get("inputs", {}) == inputs_state(stage) else "stale"


def is_done(stage: Stage, stamp_dir: Path) -> bool:
    return stage_status(stage, stamp_dir) == "done"


def _flag_values(argv: Sequence[str]) -> dict[str, str]:
    """``--flag value`` pairs of an argv (repeated values joined); the words before the first
    flag (the command) under ""."""
    out, key = {"": ""}, ""
    for arg in argv:
        if arg.startswith("--"):
            key = arg
            out.setdefault(key, "")
            continue
        out[key] = arg if out[key] == "" else f"{out[key]} {arg}"
    return out


def describe_change(stage: Stage, stamp_dir: Path) -> str:
    """What differs between the finished stage's stamp and ``stage``: a flag or a config file."""
    stamp = _read(_stamp_path(stamp_dir, stage)) or {}
    old_argv = [str(a) for a in stamp.get("argv", [])]
    old, new = _flag_values(old_argv), _flag_values(stage.argv)
    for key in sorted(set(old) | set(new), key=lambda k: (k not in new, k)):
        if old.get(key) != new.get(key):
            return f"{key or 'command'} was {old.get(key, '(absent)')!r}, now {new.get(key, '(absent)')!r}"
    recorded = stamp.get("configs", {})
    for path in config_files(stage.argv):
        if str(path) in recorded and recorded[str(path)] != _sha256(path):
            return f"config {path} changed since the stage was trained"
    return "its command or configs changed"


def check_changes(stages: Sequence[Stage], stamp_dir: Path, run: Path | None = None) -> None:
    """Raise :class:`StageConflict` for the first finished stage whose settings differ."""
    for stage in stages:
        if stage_status(stage, stamp_dir) == "changed":
            where = run if run is not None else stamp_dir.parent
            raise StageConflict(f"stage {stage.name} was finished with other settings ({describe_change(stage, stamp_dir)}); "
                                f"use another run folder, or force to retrain it (its files move to "
                                f"{where / ARCHIVE})", path=where, field=stage.name)


def banner(text: str) -> None:
    line = "=" * min(88, max(40, len(text) + 8))
    print(f"\n{line}\n==  {text}\n{line}", flush=True)


def archive_workdir(stage: Stage, stamp_dir: Path) -> Path | None:
    """Move the contents of ``stage.workdir`` to ``<stamps>/../.previous/<name>-<k>``; None if empty."""
    work = stage.workdir
    if work is None or not work.is_dir() or not any(work.iterdir()):
        return None
    root = stamp_dir.parent / ARCHIVE
    root.mkdir(parents=True, exist_ok=True)
    k = 1
    while (root / f"{stage.name}-{k}").exists():
        k += 1
    dest = root / f"{stage.name}-{k}"
    shutil.move(str(work), str(dest))
    work.mkdir(parents=True)
    return dest


def prepare_attempt(stage: Stage, stamp_dir: Path) -> bool:
    """Before a stage runs: True when it resumes a stopped attempt with the same settings and
    inputs (its folder kept), else archive the folder's old contents; then mark it started."""
    key = attempt_key(stage)
    started = _read(_started_path(stamp_dir, stage))
    resume = started is not None and started.get("key") == key and stage.workdir is not None
    if not resume:
        moved = archive_workdir(stage, stamp_dir)
        if moved is not None:
            print(f"-- earlier files of {stage.name} moved to {moved}", flush=True)
    stamp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_started_path(stamp_dir, stage), {"stage": stage.name, "key": key})
    return resume


def subprocess_runner(stage: Stage) -> int:
    program = stage.program or [sys.executable, "-m", "drivesim.cli"]
    return subprocess.run([*program, *stage.argv], env={**os.environ, **stage.env}, check=False).returncode


def _write_stamp(stage: Stage, stamp_dir: Path, seconds: float) -> None:
    atomic_write_json(_stamp_path(stamp_dir, stage),
                      {"stage": stage.name, "argv": stage.argv, "fingerprint": fingerprint(stage),
                       "configs": {str(p): _sha256(p) for p in config_files(stage.argv)},
                       "inputs": inputs_state(stage), "seconds": seconds,
                       "outputs": [str(p) for p in stage.outputs],
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    _started_path(stamp_dir, stage).unlink(missing_ok=True)


def run_stage(stage: Stage, stamp_dir: Path, *, force: bool = False, rerun: bool = False, index: int = 0,
              total: int = 0, runner: Runner | None = None) -> StageResult:
    """Run one stage unless it is already done; ``rerun`` runs it anyway (an earlier stage ran),
    ``force`` also starts it afresh (no resume). Raise StageFailed on error."""
    prefix = f"[{index}/{total}] " if total else ""
    if not (force or rerun) and is_done(stage, stamp_dir):
        prior = _read(_stamp_path(stamp_dir, stage)) or {}
        banner(f"{prefix}{stage.title}: done earlier ({prior.get('seconds', 0):.0f} s), skipping")
        return StageResult(stage.name, True, float(prior.get("seconds", 0.0)))
    _stamp_path(stamp_dir, stage).unlink(missing_ok=True)  # it no longer describes the stage's files
    if force:
        _started_path(stamp_dir, stage).unlink(missing_ok=True)
    resumed = prepare_attempt(stage, stamp_dir)
    banner(f"{prefix}{stage.title}" + (" (resuming the stopped attempt)" if resumed else ""))
    shown = "drivesim" if stage.program is None else " ".join(stage.program)
    print(f"$ {shown} " + " ".join(shlex.quote(a) for a in stage.argv), flush=True)
    start = time.monotonic()
    code = (runner or subprocess_runner)(stage)
    seconds = time.monotonic() - start
    if code != 0:
        raise StageFailed(f"stage '{stage.name}' failed with exit code {code} after "
                          f"{seconds:.0f} s: {shown} {' '.join(stage.argv)}")
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        raise StageFailed(f"stage '{stage.name}' finished but did not write {missing}")
    _write_stamp(stage, stamp_dir, seconds)
    print(f"-- {stage.title}: {seconds:.0f} s", flush=True)
    return StageResult(stage.name, False, seconds, resumed)


def run_pipeline(stages: Sequence[Stage], stamp_dir: Path, *, force: bool = False,
                 on_change: Literal["rerun", "refuse"] = "rerun", runner: Runner | None = None,
                 after_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Run a linear chain: each stage consumes the outputs of the ones before it, so once a
    stage actually runs (unfinished, or forced) every later stage runs again too; a stamp of
    a later stage made from the old inputs would otherwise skip it with stale results.
    ``on_change="refuse"`` checks every stage for changed settings before anything runs."""
    if on_change == "refuse" and not force:
        check_changes(stages, stamp_dir)
    results: list[StageResult] = []
    for i, stage in enumerate(stages, start=1):
        upstream_changed = any(not r.skipped for r in results)
        result = run_stage(stage, stamp_dir, force=force, rerun=upstream_changed, index=i, total=len(stages),
                           runner=runner)
        results.append(result)
        if after_stage is not None:
            after_stage(result)
    return results
