"""DataModule throughput at 64x128, T=8, for the ``synthetic`` and ``clips`` sources.

Printed per source: samples/s and frames/s through ``DriveDataModule.train_dataloader()``
(batch 4, collate included), and a ratio against a reference measured in the same run:

- synthetic: the world's bare render rate (``DrivingWorld.step()`` only), i.e. how much
  of the render budget the dataset keeps (world setup, warm-up, boxes, tensors);
- clips: a naive OpenCV reader that opens the mp4 and seeks (``CAP_PROP_POS_FRAMES``)
  for every window, i.e. what our kept-open, seek-aware PyAV reader buys.

Usage: python benchmarks/bench_datamodule.py [--samples 48] [--workers 0] [--clips 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from drivesim.data.clip_format import read_manifest
from drivesim.data.datamodule import DriveDataModule
from drivesim.data.datasets import resample_indices
from drivesim.data.export import add_arguments, run
from drivesim.data.world import DrivingWorld, WorldConfig

H, W, T, FPS, BATCH = 64, 128, 8, 10.0, 4


def loader_rate(dm: DriveDataModule, max_samples: int) -> float:
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen, start = 0, time.perf_counter()
    while seen < max_samples:  # several epochs if the dataset is small
        for batch in loader:
            seen += batch["video"].shape[0]
            if seen >= max_samples:
                break
    return seen / (time.perf_counter() - start)


def world_render_fps(frames: int = 64) -> float:
    world = DrivingWorld(WorldConfig(seed=0, height=H, width=W, fps=FPS))
    start = time.perf_counter()
    for _ in range(frames):
        world.step()
    return frames / (time.perf_counter() - start)


def naive_clip_rate(root: Path, max_samples: int) -> float:
    """Reference: reopen the video and seek with OpenCV for every window."""
    entries = [e for e in read_manifest(root) if e.split == "train"]
    starts = [(e, s) for e in entries for s in range(0, e.num_frames - T + 1, T)]
    seen, start = 0, time.perf_counter()
    while seen < max_samples:
        for e, s in starts:
            cap = cv2.VideoCapture(str(root / e.path / "frames.mp4"))
            frames = []
            for i in resample_indices(T, e.fps, FPS, s).tolist():
                cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                ok, bgr = cap.read()
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            cap.release()
            torch.from_numpy(np.stack(frames)).float()
            seen += 1
            if seen >= max_samples:
                break
    return seen / (time.perf_counter() - start)


def export(root: Path, clips: int) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run(parser.parse_args(["--out", str(root), "--clips", str(clips), "--seconds", "4", "--fps", str(FPS),
                           "--size", f"{H}x{W}", "--val-fraction", "0", "--no-progress"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--clips", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = dict(frames=T, fps=FPS, height=H, width=W, batch_size=BATCH, num_workers=args.workers)

    render = world_render_fps()
    synth = loader_rate(DriveDataModule(source="synthetic", samples_per_epoch=args.samples, **common), args.samples)
    print(f"synthetic: {synth:7.2f} samples/s = {synth * T:7.1f} frames/s | world render only "
          f"{render:7.1f} frames/s | ratio {synth * T / render:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        export(root, args.clips)
        clips = loader_rate(DriveDataModule(source="clips", root=str(root), **common), args.samples)
        naive = naive_clip_rate(root, args.samples)
    print(f"clips:     {clips:7.2f} samples/s = {clips * T:7.1f} frames/s | naive OpenCV seek "
          f"{naive:7.2f} samples/s | speed-up {clips / naive:.2f}x")


if __name__ == "__main__":
    main()
