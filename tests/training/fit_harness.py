"""Helpers for the end-to-end training tests: run `drivesim fit` in a subprocess on tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def export_clips(out: Path, clips: int = 4, seconds: float = 2.0, fps: float = 5.0,
                 size: str = "32x64") -> Path:
    subprocess.run([sys.executable, "-m", "drivesim.cli", "data", "synth", "--out", str(out),
                    "--clips", str(clips), "--seconds", str(seconds), "--fps", str(fps),
                    "--size", size, "--seed", "0", "--val-fraction", "0.25", "--no-progress"],
                   check=True, cwd=REPO, capture_output=True)
    return out


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit_command(configs: list[Path], extra: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "drivesim.cli", "fit"]
    for c in configs:
        cmd += ["--config", str(c)]
    return cmd + list(extra or [])


def run_fit(configs: list[Path], extra: list[str] | None = None, timeout: float = 400) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(fit_command(configs, extra), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"fit failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def run_fit_and_kill(configs: list[Path], kill_when: Path, extra: list[str] | None = None,
                     timeout: float = 400) -> None:
    """Start a fit, SIGKILL it as soon as ``kill_when`` exists (a checkpoint), like a crash."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(fit_command(configs, extra), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not kill_when.exists():
        if proc.poll() is not None:
            raise AssertionError(f"fit ended before {kill_when} appeared:\n{proc.stderr.read()[-6000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {kill_when}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def read_losses(prefix: Path, key: str = "loss") -> dict[int, float]:
    """step -> loss from LossRecorder files (a later record of a step wins: the resumed run)."""
    out: dict[int, float] = {}
    for f in sorted(prefix.parent.glob(prefix.name + ".rank*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if key in rec:
                out[rec["step"]] = rec[key]
    return out


def read_records(prefix: Path) -> list[dict]:
    recs = []
    for f in sorted(prefix.parent.glob(prefix.name + ".rank*.jsonl")):
        recs += [json.loads(line) for line in f.read_text().splitlines()]
    return recs
