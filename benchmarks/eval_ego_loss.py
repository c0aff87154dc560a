"""Does the video model use its ego conditioning? Paired diffusion loss with and without it.

    python benchmarks/eval_ego_loss.py --video RUN/video_ldm/model.safetensors \\
        [--latents RUN/latents --split val | --synthetic --seed 90000] [--batches 16] [--repeats 4]

A rollout that ignores the commanded motion (benchmarks/eval_ego_rollout.py) can mean two things:
the model never learned the conditioning, or it learned it and sampling loses it. This probe
separates them on the training objective itself. For each window of video latents (2 clean
context frames, the rest noised) it computes the model's diffusion loss three times with the same
noise level, noise and context (``LatentDiffusionModule.compute_loss`` with one generator seed):

- ``known``: the window's true ego speed and yaw rate;
- ``dropped``: ego unknown, the learned null embedding (what ``guidance_ego = 0`` samples with);
- ``other``: another window's ego motion (the batch rolled by one).

If the model uses the conditioning, ``known`` is lower than both, on windows it never trained on.
The differences are paired, so their 95% intervals are tight. ``--latents RUN/latents --split
train`` shows what it learned on its own training windows (memorised or general); ``--split
val`` the held-out windows of the export; ``--synthetic`` fresh world drives rendered now (seeds
from ``--seed``, three quarters following random ego programs) and encoded with ``--autoencoder``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from drivesim.data.datamodule import DriveDataModule
from drivesim.inference import load_model
from drivesim.training.diffusion_module import LatentDiffusionModule

VARIANTS = ("known", "dropped", "other")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="video LDM model file (use_ego)")
    p.add_argument("--latents", help="latent cache folder (a run's latents/)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--synthetic", action="store_true", help="fresh world drives instead of a latent cache")
    p.add_argument("--autoencoder", help="with --synthetic: the frozen autoencoder that encodes the drives")
    p.add_argument("--seed", type=int, default=90000, help="with --synthetic: the drives' world seed")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4, help="noise draws per batch")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if bool(args.latents) == args.synthetic:
        p.error("give --latents DIR or --synthetic")
    if args.synthetic and not args.autoencoder:
        p.error("--synthetic needs --autoencoder")
    return args


def data(args: argparse.Namespace) -> DriveDataModule:
    common = dict(frames=8, fps=2.0, stride=1, height=64, width=128, max_boxes=16, batch_size=args.batch_size,
                  val_samples=args.batches * args.batch_size)
    if args.synthetic:  # val drives of the world: seeds of their own, ego programs as in training
        dm = DriveDataModule(source="synthetic", seed=args.seed, ego_program_fraction=0.75, min_vehicles=4,
                             max_vehicles=12, traffic_range=60.0, **common)
    else:
        dm = DriveDataModule(source="latents", root=args.latents, val_split="val", **common)
    dm.setup("fit")
    return dm


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    unet = load_model(args.video, "prediction").network
    if not unet.config.get("use_ego"):
        raise SystemExit(f"{args.video}: this video model has no ego conditioning (use_ego false)")
    module = LatentDiffusionModule(unet=unet, stage="video", num_val_samples=0, context_probs=(0.0, 0.0, 1.0),
                                   autoencoder_path=args.autoencoder if args.synthetic else None).eval()
    dm = data(args)
    loader = dm.train_dataloader() if (args.split == "train" and not args.synthetic) else dm.val_dataloader()
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    start = time.monotonic()
    for b, batch in enumerate(loader):
        if b >= args.batches:
            break
        roll = torch.roll(torch.arange(batch["ego_speed"].shape[0]), 1)
        variants = {"known": batch, "dropped": {**batch, "ego_known": torch.zeros_like(batch["ego_known"])},
                    "other": {**batch, "ego_speed": batch["ego_speed"][roll],
                              "ego_yaw_rate": batch["ego_yaw_rate"][roll], "ego_known": batch["ego_known"][roll]}}
        for r in range(args.repeats):
            for name, variant in variants.items():
                generator = torch.Generator().manual_seed(1000 * b + r)  # the same t, noise, context per variant
                with torch.no_grad():
                    losses[name].append(float(module.compute_loss(variant, False, generator)))
    known = np.array(losses["known"])
    source = f"--synthetic seed {args.seed}" if args.synthetic else f"{args.latents} ({args.split})"
    print(f"{args.video}: {source}, {len(known)} paired losses ({time.monotonic() - start:.0f} s)")
    print("  " + "  ".join(f"{v} {np.mean(losses[v]):.5f}" for v in VARIANTS))
    for name in ("dropped", "other"):
        diff = np.array(losses[name]) - known
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"  {name} - known: {diff.mean():+.5f} [{diff.mean() - half:+.5f}, {diff.mean() + half:+.5f}] "
              f"({diff.mean() / known.mean():+.2%})  > 0: the model uses the true ego motion")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
