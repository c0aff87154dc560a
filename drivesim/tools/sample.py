"""`drivesim sample`: generate frames for given boxes and labels from a diffusion checkpoint.

    drivesim sample --ckpt runs/image_ldm/last.ckpt --synthetic 7 --daynight night --n 8 \\
        --steps 50 --guidance 3 --out samples/

Boxes come from a JSON file (``--boxes``) or from the synthetic world (``--synthetic SEED``:
sample i uses the drive of seed SEED + i). ``boxes.json`` schema: ``{"frames": [{"boxes":
[[x1, y1, x2, y2], ...], "classes": ["car", ...], "track_ids": [1, ...]}, ...]}`` with
normalised coordinates; one entry per frame (1 for an image model). Writes
``sample_000.png`` (``sample_000_f00.png`` ... for several frames), the same with
``_boxes`` when ``--draw-boxes``, and ``samples.json`` (the conditioning used), atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivesim.data.boxes import draw_boxes, pad_boxes, validate_boxes, validate_classes
from drivesim.data.labels import CROWD_NAMES, DAYNIGHT_NAMES, class_id, daynight_id
from drivesim.utils.io import DriveSimInputError, atomic_write_bytes, atomic_write_json, read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="diffusion model file (.safetensors / .pt) or Lightning .ckpt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--boxes", help="boxes.json (see the module docstring for the schema)")
    source.add_argument("--synthetic", type=int, metavar="SEED", help="boxes from the synthetic world")
    parser.add_argument("--daynight", choices=DAYNIGHT_NAMES, default="day")
    parser.add_argument("--crowd", choices=CROWD_NAMES, default="unknown")
    parser.add_argument("--n", type=int, default=8, help="number of samples")
    parser.add_argument("--frames", type=int, default=1, help="frames per sample (--synthetic)")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--sampler", choices=("ddim", "dpmpp_2m"), default="ddim")
    parser.add_argument("--guidance", type=float, default=3.0,
                        help="classifier-free guidance scale on boxes and labels (1 = none)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-boxes", type=int, default=16)
    parser.add_argument("--autoencoder", help="autoencoder model file (default: the checkpoint's)")
    parser.add_argument("--draw-boxes", action="store_true", help="also write frames with boxes drawn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true")


def _frame_boxes(entry: Any, path: Path, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    field = f"frames[{i}]"
    if not isinstance(entry, dict) or "boxes" not in entry:
        raise DriveSimInputError("each frame needs a 'boxes' list", path=path, field=field, value=entry)
    boxes = validate_boxes(entry["boxes"], path=path, field=f"{field}.boxes")
    try:
        classes = [class_id(c) for c in entry.get("classes", ["car"] * len(boxes))]
    except ValueError as err:
        raise DriveSimInputError(str(err), path=path, field=f"{field}.classes",
                                 value=entry.get("classes")) from err
    classes = validate_classes(np.asarray(classes, dtype=np.int64), len(boxes), path=path,
                               field=f"{field}.classes")
    ids = np.asarray(entry.get("track_ids", range(1, len(boxes) + 1)), dtype=np.int64)
    if ids.shape != (len(boxes),):
        raise DriveSimInputError(f"expected {len(boxes)} track ids", path=path,
                                 field=f"{field}.track_ids", value=entry.get("track_ids"))
    return boxes, classes, ids


def boxes_from_json(path: str | Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[(boxes [n, 4], classes [n], ids [n]) per frame] from a boxes.json file."""
    path = Path(path)
    data = read_json(path)
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise DriveSimInputError("expected {'frames': [ ... ]} with at least one frame", path=path,
                                 field="frames", value=frames)
    return [_frame_boxes(entry, path, i) for i, entry in enumerate(frames)]


def boxes_from_world(seed: int, frames: int, night: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Boxes of ``frames`` consecutive steps of the synthetic drive ``seed`` (no rendering)."""
    from drivesim.data.world import DrivingWorld, WorldConfig

    world = DrivingWorld(WorldConfig(seed=seed, night=night))
    out = []
    for _ in range(frames):
        f = world.step(render=False)
        out.append((f.boxes, f.classes, f.track_ids))
    return out


def stack_boxes(per_sample: list[list[tuple]], max_boxes: int) -> dict[str, torch.Tensor]:
    """boxes [B, T, N, 4], box_classes / box_ids [B, T, N] (padded with class 0)."""
    n = max(1, min(max_boxes, max(len(b) for frames in per_sample for b, _, _ in frames)))
    padded = [[pad_boxes(b, c, i, n) for b, c, i in frames] for frames in per_sample]
    return {"boxes": torch.from_numpy(np.stack([[p.boxes for p in f] for f in padded])),
            "box_classes": torch.from_numpy(np.stack([[p.classes for p in f] for f in padded])),
            "box_ids": torch.from_numpy(np.stack([[p.ids for p in f] for f in padded]))}


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _check_out(out: Path, overwrite: bool) -> None:
    existing = sorted(out.glob("sample_*.png")) + sorted(out.glob("samples.json"))
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds samples ({existing[0].name}, ...); "
                              f"pass --overwrite to replace them")


def _write_sample(out: Path, index: int, frames: np.ndarray, boxes: dict, draw: bool) -> list[str]:
    names = []
    for t, rgb in enumerate(frames):
        stem = f"sample_{index:03d}" + (f"_f{t:02d}" if len(frames) > 1 else "")
        atomic_write_bytes(out / f"{stem}.png", _png(rgb))
        names.append(f"{stem}.png")
        if draw:
            drawn = draw_boxes(rgb, boxes["boxes"][index, t].numpy(), boxes["box_classes"][index, t].numpy(),
                               boxes["box_ids"][index, t].numpy())
            atomic_write_bytes(out / f"{stem}_boxes.png", _png(drawn))
    return names


def _load(args: argparse.Namespace):
    """(diffusion record, autoencoder) through the one loader; the autoencoder defaults to the
    one the diffusion model was trained with (recorded in its model file)."""
    from drivesim.inference import load_model

    model = load_model(args.ckpt, device=args.device)
    if model.role == "autoencoder":
        raise DriveSimInputError("expected a diffusion model file, got an autoencoder", path=args.ckpt,
                                 field="--ckpt")
    ae_path = args.autoencoder or model.hparams.get("autoencoder_path")
    if not ae_path or not Path(ae_path).is_file():
        raise DriveSimInputError("no autoencoder to decode with: the model file names none or it moved; "
                                 "pass --autoencoder", path=args.ckpt, field="autoencoder_path", value=ae_path)
    return model, load_model(ae_path, "autoencoder", device=args.device).network


def run(args: argparse.Namespace) -> int:
    from drivesim.inference import guidance_scales, sample
    from drivesim.models.conditioning import Conditioning
    from drivesim.training.sample_grid import frames_to_uint8

    out = Path(args.out)
    _check_out(out, args.overwrite)
    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        raise DriveSimInputError("--n, --steps and --batch-size must be >= 1",
                                 value=(args.n, args.steps, args.batch_size))
    night = args.daynight == "night"
    if args.boxes:
        per_sample = [boxes_from_json(args.boxes)] * args.n
    else:
        per_sample = [boxes_from_world(args.synthetic + i, args.frames, night) for i in range(args.n)]
    boxes = stack_boxes(per_sample, args.max_boxes)
    model, ae = _load(args)
    latent_hw = model.latent_size or (8, 16)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, args.n, args.batch_size):
        idx = slice(start, min(start + args.batch_size, args.n))
        b = idx.stop - idx.start
        batch = {k: v[idx] for k, v in boxes.items()}
        batch |= {"daynight": torch.full((b,), daynight_id(args.daynight)),
                  "crowd": torch.full((b,), CROWD_NAMES.index(args.crowd))}
        cond = Conditioning.from_batch(batch)
        latents = sample(model, cond, batch["boxes"].shape[1], latent_hw, steps=args.steps,
                         sampler=args.sampler, scales=guidance_scales(cond, labels=args.guidance, boxes=args.guidance),
                         generator=torch.Generator().manual_seed(args.seed + start), batch_size=b)
        with torch.no_grad():
            frames = frames_to_uint8(ae.decode_latents(latents).clamp(-1, 1))
        for j in range(b):
            written += _write_sample(out, start + j, frames[j], boxes, args.draw_boxes)
    atomic_write_json(out / "samples.json", {
        "ckpt": str(args.ckpt), "n": args.n, "steps": args.steps, "sampler": args.sampler,
        "guidance": args.guidance, "seed": args.seed, "daynight": args.daynight, "crowd": args.crowd,
        "source": args.boxes or f"synthetic:{args.synthetic}", "files": written,
        "boxes": boxes["boxes"].tolist(), "box_classes": boxes["box_classes"].tolist()})
    print(f"wrote {len(written)} frames to {out}")
    return 0
