"""Image LDM quality probe: do samples follow their boxes, are night samples darker?

For ``--pairs`` held-out world scenarios (``SyntheticDataset(seed=--scenario-seed).scenario(i)``,
rendered day and night at the model resolution) the image LDM samples day and night from
the same initial noise, once with the scenario's boxes and once with the boxes dropped (the
model's null box tokens); the oracle scores all four against the SAME conditioned boxes, and
the real renders give the ceiling. See docs/probes.md for what each number means.

    python benchmarks/eval_image_ldm.py --ldm runs/demo/image_ldm/model.safetensors \\
        --ae runs/demo/autoencoder_temporal/model.safetensors --out runs/demo/probes/image

Writes ``image_ldm_probe.json`` and ``image_ldm_probe.png`` (rows: real day, boxes day,
boxes night, no-boxes day, no-boxes night; conditioned boxes drawn) under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from drivesim.data.labels import DAY, NIGHT
from drivesim.metrics.probes import (
    ImageScenario,
    frames_uint8,
    image_grid,
    image_probe_report,
    image_probe_rows,
    image_probe_table,
    nonfinite_fields,
    png_bytes,
    sample_paired_images,
    world_scenarios,
)
from drivesim.utils.io import DriveSimInputError, atomic_write_bytes, atomic_write_json

OUTPUTS = ("image_ldm_probe.json", "image_ldm_probe.png")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ldm", required=True, help="image LDM model file (kind 'ldm', no temporal layers)")
    p.add_argument("--ae", required=True, help="autoencoder model file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--pairs", type=int, default=32, help="scenarios (each sampled day + night)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--sampler", choices=("ddim", "dpmpp_2m"), default="ddim")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="classifier-free guidance on boxes and labels (1 = none; the tiny configs "
                        "validate with 2)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--scenario-seed", type=int, default=10_000,
                   help="base seed of the held-out scenarios (training data uses other seeds)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", default=None,
                   help="HxW of the frames when the model file records no latent_size (default 64x128)")
    p.add_argument("--oracle", default=None, help="oracle checkpoint (default: the cached one, trained if absent)")
    p.add_argument("--traffic-range", type=float, default=60.0,
                   help="world traffic range of the scenarios (default: the tiny configs' 60 m)")
    p.add_argument("--min-vehicles", type=int, default=4)
    p.add_argument("--max-vehicles", type=int, default=12)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise DriveSimInputError("expected HxW, e.g. 64x128", field="--size", value=text) from err
    return h, w


def latent_geometry(hparams: dict, channels: int, factor: int, size: str | None) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """((C, h, w) latent shape, (H, W) frame size): the model file's ``latent_size`` when
    recorded, else ``--size`` (default 64x128) divided by the autoencoder factor."""
    if hparams.get("latent_size") and size is None:
        h, w = (int(v) for v in hparams["latent_size"])
    else:
        height, width = _size(size or "64x128")
        if height % factor or width % factor:
            raise DriveSimInputError(f"frame size must be divisible by the autoencoder factor {factor}",
                                     field="--size", value=size)
        h, w = height // factor, width // factor
    return (channels, h, w), (h * factor, w * factor)


def make_sample_fn(sampler, ae, latent_shape: tuple[int, int, int], max_boxes: int):
    """``sample_fn(scenarios, night, with_boxes, seed) -> uint8 [B, H, W, 3]`` for
    ``sample_paired_images``: the ImageStartSampler (guidance as configured) + AE decode.
    The noise comes first from a generator seeded with ``seed``, so it is paired."""
    from drivesim.rollout.engine import SegmentCondition
    from drivesim.tools.sample import stack_boxes

    def sample(scenarios: Sequence[ImageScenario], night: bool, with_boxes: bool, seed: int) -> np.ndarray:
        b = len(scenarios)
        boxes = stack_boxes([[(s.boxes, s.classes, s.track_ids)] for s in scenarios], max_boxes)
        cond = SegmentCondition(
            boxes=boxes["boxes"] if with_boxes else None,
            box_classes=boxes["box_classes"] if with_boxes else None,
            box_ids=boxes["box_ids"] if with_boxes else None,
            daynight=torch.full((b,), NIGHT if night else DAY, dtype=torch.int64),
            crowd=torch.tensor([s.crowd for s in scenarios], dtype=torch.int64),
            num_context=0, window=1)
        latents = sampler(cond, latent_shape, torch.Generator().manual_seed(seed))  # [B, 1, C, h, w]
        with torch.no_grad():
            return frames_uint8(ae.decode_latents(latents))[:, 0]

    return sample


def main(argv: Sequence[str] | None = None) -> int:
    torch.set_num_threads(1)
    args = parse_args(argv)
    from drivesim.inference import load_model
    from drivesim.metrics.oracle.model import load_or_train_oracle
    from drivesim.rollout.sampler import ImageStartSampler

    out = Path(args.out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{out / existing[0]} exists; pass --overwrite to replace it")
    if args.pairs < 1 or args.steps < 1 or args.batch_size < 1:
        raise DriveSimInputError("--pairs, --steps and --batch-size must be >= 1",
                                 value=(args.pairs, args.steps, args.batch_size))
    t0 = time.perf_counter()
    model = load_model(args.ldm, "image")
    ae = load_model(args.ae, "autoencoder").network
    config = model.config
    latent_shape, (height, width) = latent_geometry(model.hparams, int(config["in_channels"]),
                                                    ae.downsample_factor, args.size)
    max_boxes = int(config.get("max_boxes", 16))
    sampler = ImageStartSampler(model, args.steps, sampler=args.sampler, guidance_boxes=args.guidance,
                                guidance_labels=args.guidance)
    oracle = load_or_train_oracle(path=args.oracle)
    scenarios = world_scenarios(args.scenario_seed, args.pairs, height, width,
                                fps=float(model.hparams.get("fps") or 10.0), max_boxes=max_boxes,
                                min_vehicles=args.min_vehicles, max_vehicles=args.max_vehicles,
                                traffic_range=args.traffic_range)
    samples = sample_paired_images(make_sample_fn(sampler, ae, latent_shape, max_boxes), scenarios,
                                   args.batch_size, args.seed)
    report = image_probe_report(oracle, scenarios, samples)
    report["settings"] = {"ldm": str(args.ldm), "ae": str(args.ae), "steps": args.steps,
                          "sampler": args.sampler, "guidance": args.guidance, "seed": args.seed,
                          "scenario_seed": args.scenario_seed, "frame_size": [height, width],
                          "latent_shape": list(latent_shape), "seconds": round(time.perf_counter() - t0, 1)}
    bad = nonfinite_fields(report)
    if bad:
        print(f"warning: non-finite values in {bad[:5]}", file=sys.stderr)
    atomic_write_json(out / OUTPUTS[0], report, overwrite=args.overwrite)
    atomic_write_bytes(out / OUTPUTS[1], png_bytes(image_grid(image_probe_rows(scenarios, samples))),
                       overwrite=args.overwrite)
    print(image_probe_table(report))
    print(f"wrote {out / OUTPUTS[0]} and {out / OUTPUTS[1]} ({report['settings']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
