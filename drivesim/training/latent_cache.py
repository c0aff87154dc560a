"""``drivesim data encode``: encode a clip dataset once into latent shards (``drivesim.data.latents``).

Every source frame of every clip is encoded (per frame; the encoder never mixes time) after
the same resize/centre-crop as ``ClipDataset`` (``--size``, default the clips' own size),
and the Gaussian ``mean`` and ``logvar`` are stored (why both: see ``drivesim.data.latents``).
Windows at other frame rates are picked at read time, so one cache serves every stage.

Resumable and atomic: ``latents.json`` fixes the settings first, each shard appears under its
final name only when complete (a re-run skips finished shards), and ``manifest.jsonl`` is
written last. A re-run with another autoencoder or settings stops unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from drivesim.data.boxes import ResizeCrop
from drivesim.data.clip_format import ManifestEntry, read_clip, read_manifest
from drivesim.data.datasets import to_video_tensor
from drivesim.data.latents import MANIFEST, META, SCHEMA, LatentEntry, shard_name
from drivesim.models.autoencoder import AutoencoderKL, load_autoencoder
from drivesim.utils.io import DriveSimInputError, atomic_path, atomic_write_json, atomic_write_text

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def autoencoder_hash(ae: AutoencoderKL) -> str:
    """sha256 (first 16 hex digits) of the hparams and every weight, scale factor included."""
    digest = hashlib.sha256(json.dumps(ae.hparams, sort_keys=True).encode())
    for name, tensor in sorted(ae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_settings(out: Path, meta: dict, overwrite: bool) -> bool:
    """True when ``out`` already holds a complete cache of exactly these settings."""
    path = out / META
    if overwrite:  # remove our own files only; shards are re-encoded
        for p in [*out.glob("shard-*.safetensors"), out / MANIFEST, path]:
            p.unlink(missing_ok=True)
        return False
    if not path.is_file():
        return False
    old = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in meta if old.get(k) != meta[k]]
    if changed:
        k = changed[0]
        raise DriveSimInputError(f"this cache was made with {k}={old.get(k)!r}, now {meta[k]!r}; pass --overwrite "
                                 "to re-encode", path=path, field=k, value=meta[k])
    return (out / MANIFEST).is_file()


@torch.no_grad()
def _encode_clip(ae: AutoencoderKL, clip_dir: Path, size: tuple[int, int] | None, batch_frames: int,
                 dtype: torch.dtype, bar: tqdm) -> dict[str, torch.Tensor]:
    clip = read_clip(clip_dir)
    out_hw = size or (clip.height, clip.width)
    rc = ResizeCrop.center((clip.height, clip.width), out_hw)
    device = ae.scale_factor.device
    means, logvars = [], []
    try:
        for start in range(0, clip.num_frames, batch_frames):
            idx = np.arange(start, min(clip.num_frames, start + batch_frames))
            rgb = np.stack([rc.apply_image(f) for f in clip.frames(idx)])   # [n, H, W, 3]
            posterior = ae.encode(to_video_tensor(rgb)[None].to(device))   # [1, n, C, h, w]
            means.append(posterior.mean[0].to("cpu", dtype))
            logvars.append(posterior.logvar[0].to("cpu", dtype))
            bar.update(len(idx))
    finally:
        clip.close()
    boxes, classes, ids, counts = [], [], [], []
    for i in range(clip.num_frames):
        b, keep = rc.apply_boxes(clip.boxes[i])
        boxes.append(b[keep].astype(np.float32))
        classes.append(clip.classes[i][keep])
        ids.append(clip.track_ids[i][keep])
        counts.append(int(keep.sum()))
    return {"mean": torch.cat(means), "logvar": torch.cat(logvars),
            "boxes": torch.from_numpy(np.concatenate(boxes).reshape(-1, 4)),
            "classes": torch.from_numpy(np.concatenate(classes).astype(np.int64)),
            "ids": torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            "counts": torch.tensor(counts, dtype=torch.int64)}


def encode_dataset(ckpt: str | Path, data: str | Path, out: str | Path, *, splits: Sequence[str] | None = None,
                   size: tuple[int, int] | None = None, clips_per_shard: int = 8, batch_frames: int = 16,
                   dtype: str = "float32", device: str = "cpu", overwrite: bool = False,
                   progress: bool = True) -> dict:
    """Encode the clips of ``data`` (optionally only ``splits``) with the AE at ``ckpt`` into ``out``.

    Returns ``{"clips", "shards_written", "shards_skipped", "complete"}``.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES or clips_per_shard < 1 or batch_frames < 1:
        raise ValueError(f"encode: bad options dtype={dtype!r} clips_per_shard={clips_per_shard} "
                         f"batch_frames={batch_frames}")
    data, out = Path(data), Path(out)
    ae = load_autoencoder(ckpt).to(device)
    f = ae.downsample_factor
    if size is not None and (size[0] % f or size[1] % f):
        raise DriveSimInputError(f"frame size is not divisible by the autoencoder factor f={f}", field="size",
                                 value=size)
    entries: list[ManifestEntry] = [e for e in read_manifest(data) if splits is None or e.split in splits]
    if not entries:
        raise DriveSimInputError("no clips in the requested splits", path=data / "manifest.jsonl",
                                 field="splits", value=splits)
    meta = {"schema": SCHEMA, "ae_hash": autoencoder_hash(ae), "scale_factor": float(ae.scale_factor),
            "ae_hparams": ae.hparams, "source": str(data.resolve()), "size": list(size) if size else None,
            "dtype": dtype, "clips_per_shard": clips_per_shard,
            "clips_hash": hashlib.sha256("\n".join(e.clip_id for e in entries).encode()).hexdigest()[:16]}
    out.mkdir(parents=True, exist_ok=True)
    shards = [entries[i:i + clips_per_shard] for i in range(0, len(entries), clips_per_shard)]
    if _check_settings(out, meta, overwrite):
        return {"clips": len(entries), "shards_written": 0, "shards_skipped": len(shards), "complete": True}
    atomic_write_json(out / META, meta)
    written = skipped = 0
    todo = [k for k in range(len(shards)) if not (out / shard_name(k)).is_file()]
    with tqdm(total=sum(e.num_frames for k in todo for e in shards[k]), unit="frame", desc="encode",
              disable=not progress) as bar:
        for k, group in enumerate(shards):
            if k not in todo:
                skipped += 1
                continue
            tensors = {}
            for key, entry in enumerate(group):
                arrays = _encode_clip(ae, data / entry.path, size, batch_frames, DTYPES[dtype], bar)
                tensors.update({f"{key}.{name}": t.contiguous() for name, t in arrays.items()})
            with atomic_path(out / shard_name(k)) as tmp:
                save_file(tensors, str(tmp), metadata={"schema": SCHEMA, "ae_hash": meta["ae_hash"]})
            written += 1
    lines = [LatentEntry(e.clip_id, e.split, shard_name(k), str(key), e.num_frames, e.fps, e.daynight, e.crowd,
                         meta["ae_hash"], meta["scale_factor"]).__dict__
             for k, group in enumerate(shards) for key, e in enumerate(group)]
    atomic_write_text(out / MANIFEST, "".join(json.dumps(line) + "\n" for line in lines))
    return {"clips": len(entries), "shards_written": written, "shards_skipped": skipped, "complete": True}


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must be HxW like 64x128, got {text!r}") from err
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="autoencoder model file (.safetensors/.pt) or Lightning .ckpt")
    parser.add_argument("--data", required=True, help="clip dataset folder (with manifest.jsonl)")
    parser.add_argument("--out", required=True, help="latent cache folder")
    parser.add_argument("--splits", nargs="*", default=None, help="manifest splits to encode (default: all)")
    parser.add_argument("--size", type=_size, default=None, help="HxW frame size before encoding (default: clip size)")
    parser.add_argument("--clips-per-shard", type=int, default=8)
    parser.add_argument("--batch-frames", type=int, default=16, help="frames per encoder call")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage dtype of mean/logvar")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="re-encode a cache made with other settings")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    stats = encode_dataset(args.ckpt, args.data, args.out, splits=args.splits, size=args.size,
                           clips_per_shard=args.clips_per_shard, batch_frames=args.batch_frames, dtype=args.dtype,
                           device=args.device, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{args.out}: {stats['clips']} clips, {stats['shards_written']} shards written, "
          f"{stats['shards_skipped']} already done")
    return 0
