"""Video LDM quality probe: temporal coherence, context continuation, boxes per frame.

Real held-out windows (the ``val`` split of ``--data``, a ``drivesim data synth`` folder, at the
model's fps / num_frames) are encoded with the AE; the video LDM predicts the rest of each
window from its first S = 2 frames (``PredictionSampler``, the clip's own boxes and labels),
three times from identical noise: as trained ("normal"), with alpha forced to 1 ("alpha1":
temporal layers and context encoder off, ``UNet.image_only``) and as trained without the
boxes ("no_boxes": the chance level of box following). See docs/probes.md.

    python benchmarks/eval_video_ldm.py --ldm runs/demo/video_ldm/model.safetensors \\
        --ae runs/demo/autoencoder_temporal/model.safetensors --data runs/demo/data \\
        --out runs/demo/probes/video

Writes ``video_ldm_probe.json`` and ``video_ldm_probe.png`` (per clip: real, normal, alpha1
rows, one column per frame, boxes drawn) under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_image_ldm import latent_geometry

from drivesim.data.labels import PAD_CLASS
from drivesim.metrics.probes import (
    ImageOnlyNetwork,
    RealWindows,
    frames_uint8,
    image_grid,
    nonfinite_fields,
    png_bytes,
    video_probe_report,
    video_probe_rows,
    video_probe_table,
)
from drivesim.utils.io import DriveSimInputError, atomic_write_bytes, atomic_write_json

OUTPUTS = ("video_ldm_probe.json", "video_ldm_probe.png")
NUM_CONTEXT = 2  # S: prediction mode after the first rollout segment


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ldm", required=True, help="video LDM model file (prediction model: temporal + context)")
    p.add_argument("--ae", required=True, help="autoencoder model file (temporal decoder)")
    p.add_argument("--data", required=True, help="clip dataset folder (drivesim data synth); its val split is used")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips", type=int, default=16, help="context windows to predict from")
    p.add_argument("--reference", type=int, default=64,
                   help="real windows for the temporal metric (split in two for real-vs-real)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--sampler", choices=("ddim", "dpmpp_2m"), default="ddim")
    p.add_argument("--guidance-context", type=float, default=1.5, help="as `drivesim rollout`")
    p.add_argument("--guidance-schedule", choices=("constant", "taper"), default="taper")
    p.add_argument("--guidance-boxes", type=float, default=1.0)
    p.add_argument("--guidance-labels", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", default=None,
                   help="HxW of the frames when the model file records no latent_size (default 64x128)")
    p.add_argument("--oracle", default=None, help="oracle checkpoint (default: the cached one, trained if absent)")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def spread(count: int, available: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(available)`` (all when fewer)."""
    if available <= count:
        return list(range(available))
    return sorted({int(round(v)) for v in np.linspace(0, available - 1, count)})


def load_windows(dataset, indices: Sequence[int]) -> dict:
    """Stacked dataset items: video float [B, T, 3, H, W], boxes [B, T, N, 4], labels [B]."""
    items = [dataset[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]) for k in
            ("video", "boxes", "box_classes", "box_ids", "daynight", "crowd")}


def predict(samplers: dict, ae, batch: dict, num_context: int, seed: int,
            without_boxes: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """``{variant: uint8 [B, T, H, W, 3]}``: each sampler from the same noise seed; the variants
    named in ``without_boxes`` get no boxes (all padding), the chance level of box following."""
    from drivesim.rollout.engine import SegmentCondition

    with torch.no_grad():
        latents = ae.encode_latents(batch["video"])  # [B, T, C, h, w]
    cond = SegmentCondition(batch["boxes"], batch["box_classes"], batch["box_ids"], batch["daynight"],
                            batch["crowd"], num_context=num_context, window=latents.shape[1])
    empty = SegmentCondition(torch.zeros_like(batch["boxes"]), torch.full_like(batch["box_classes"], PAD_CLASS),
                             torch.zeros_like(batch["box_ids"]), batch["daynight"], batch["crowd"],
                             num_context=num_context, window=latents.shape[1])
    out = {}
    for name, sampler in samplers.items():
        z = sampler(latents[:, :num_context], empty if name in without_boxes else cond,
                    torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out[name] = frames_uint8(ae.decode_latents(z))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    torch.set_num_threads(1)
    args = parse_args(argv)
    from drivesim.data.datasets import ClipDataset
    from drivesim.inference import load_model
    from drivesim.metrics.oracle.model import load_or_train_oracle
    from drivesim.rollout.sampler import PredictionSampler

    out = Path(args.out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{out / existing[0]} exists; pass --overwrite to replace it")
    if args.clips < 1 or args.steps < 1 or args.batch_size < 1 or args.reference < 2:
        raise DriveSimInputError("--clips, --steps, --batch-size must be >= 1 and --reference >= 2",
                                 value=(args.clips, args.steps, args.batch_size, args.reference))
    t0 = time.perf_counter()
    model = load_model(args.ldm, "prediction")
    ae = load_model(args.ae, "autoencoder").network
    config = model.config
    fps = float(model.hparams.get("fps") or 10.0)
    frames = int(model.hparams.get("num_frames") or min(10, config["max_frames"]))
    if frames <= NUM_CONTEXT:
        raise DriveSimInputError(f"the model's window must exceed S = {NUM_CONTEXT} context frames",
                                 path=args.ldm, field="hparams.num_frames", value=frames)
    latent_shape, (height, width) = latent_geometry(model.hparams, int(config["in_channels"]),
                                                    ae.downsample_factor, args.size)
    dataset = ClipDataset(args.data, args.split, frames=frames, fps=fps, height=height, width=width,
                          max_boxes=int(config.get("max_boxes", 16)))
    kw = dict(sampler=args.sampler, guidance_boxes=args.guidance_boxes, guidance_labels=args.guidance_labels)
    samplers = {"normal": PredictionSampler(model, args.steps, args.guidance_context, args.guidance_schedule, **kw),
                "alpha1": PredictionSampler(replace(model, network=ImageOnlyNetwork(model.network)), args.steps,
                                            args.guidance_context, args.guidance_schedule, **kw)}
    samplers["no_boxes"] = samplers["normal"]  # the trained model with the boxes dropped: chance level
    oracle = load_or_train_oracle(path=args.oracle)

    chosen = spread(args.clips, len(dataset))
    parts: dict[str, list[np.ndarray]] = {"real": [], "boxes": [], "classes": [], **{n: [] for n in samplers}}
    for k, start in enumerate(range(0, len(chosen), args.batch_size)):
        batch = load_windows(dataset, chosen[start:start + args.batch_size])
        for name, value in predict(samplers, ae, batch, NUM_CONTEXT, args.seed + k, ("no_boxes",)).items():
            parts[name].append(value)
        parts["real"].append(frames_uint8(batch["video"]))
        parts["boxes"].append(batch["boxes"].numpy())
        parts["classes"].append(batch["box_classes"].numpy())
    real = RealWindows(np.concatenate(parts["real"]), np.concatenate(parts["boxes"]),
                       np.concatenate(parts["classes"]), fps)
    samples = {name: np.concatenate(parts[name]) for name in samplers}
    ref_idx = spread(args.reference, len(dataset))
    if len(ref_idx) < 2:
        raise DriveSimInputError("the temporal calibration needs at least 2 real windows", path=args.data,
                                 field="split", value=args.split)
    reference, decoded = [], []
    for i in ref_idx:
        video = dataset[i]["video"][None]
        reference.append(frames_uint8(video)[0])
        with torch.no_grad():  # the same window through the AE: the sharpness a latent model can reach
            decoded.append(frames_uint8(ae.decode_latents(ae.encode_latents(video)))[0])
    report = video_probe_report(oracle, real, samples, NUM_CONTEXT, reference, decoded)
    report["settings"] = {"ldm": str(args.ldm), "ae": str(args.ae), "data": str(args.data), "split": args.split,
                          "steps": args.steps, "sampler": args.sampler, "guidance_context": args.guidance_context,
                          "guidance_schedule": args.guidance_schedule, "guidance_boxes": args.guidance_boxes,
                          "guidance_labels": args.guidance_labels, "seed": args.seed,
                          "frame_size": [height, width], "latent_shape": list(latent_shape),
                          "windows_available": len(dataset), "seconds": round(time.perf_counter() - t0, 1)}
    bad = nonfinite_fields(report)
    if bad:
        print(f"warning: non-finite values in {bad[:5]}", file=sys.stderr)
    atomic_write_json(out / OUTPUTS[0], report, overwrite=args.overwrite)
    atomic_write_bytes(out / OUTPUTS[1], png_bytes(image_grid(video_probe_rows(real, samples))),
                       overwrite=args.overwrite)
    print(video_probe_table(report))
    print(f"wrote {out / OUTPUTS[0]} and {out / OUTPUTS[1]} ({report['settings']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
