"""Frames per second of the synthetic world on one core, with and without rendering.

    python benchmarks/bench_world.py [--frames 300] [--vehicles 8]

Prints wall-clock and CPU-time rates (CPU time is the fairer number on a shared machine)
for 64x128 and 128x256, day and night; the requirement is >= 200 rendered frames/s at
128x256 on one core. A reference line times a fixed pure-Python loop (about 8-12 us of CPU
on an idle recent x86 core) so that rates measured on a loaded machine can be scaled.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2

from drivesim.data.world import DrivingWorld, WorldConfig


def rate(cfg: WorldConfig, frames: int, render: bool) -> tuple[float, float]:
    world = DrivingWorld(cfg)
    for _ in range(20):  # warm-up: renderer layers, road, scenery cache
        world.step(render=render)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(frames):
        world.step(render=render)
    return frames / (time.perf_counter() - wall), frames / (time.process_time() - cpu)


def reference_us(repeats: int = 3000) -> float:
    """CPU microseconds of ``sum(range(1000))``: a machine-speed yardstick."""
    start = time.process_time()
    for _ in range(repeats):
        sum(range(1000))
    return (time.process_time() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--vehicles", type=int, default=8)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    print(f"reference: sum(range(1000)) takes {reference_us():.1f} us of CPU here")
    print(f"{'size':>8} {'light':>6} {'mode':>9} {'wall fps':>9} {'cpu fps':>9}")
    for h, w in ((64, 128), (128, 256)):
        for night in (False, True):
            cfg = WorldConfig(seed=0, height=h, width=w, night=night, num_vehicles=args.vehicles)
            for render in (True, False):
                wall, cpu = rate(cfg, args.frames, render)
                mode = "render" if render else "no-render"
                print(f"{h}x{w:<5} {'night' if night else 'day':>6} {mode:>9} {wall:9.0f} {cpu:9.0f}")


if __name__ == "__main__":
    main()
