"""Run every benchmarks/bench_*.py in turn (each prints its own ratios against a reference
measured in the same run). Usage: python benchmarks/run_all.py [name-substring ...]

The eval_*.py scripts are not run here: they score trained model files (``make demo`` first)
and take minutes each; docs/probes.md and docs/rollout.md say how to run them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(a in s.name for a in argv)]
    failed = []
    for script in scripts:
        print(f"\n### {script.name}", flush=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(script)], check=False)
        print(f"### {script.name}: exit {proc.returncode} in {time.monotonic() - start:.0f} s",
              flush=True)
        if proc.returncode:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
