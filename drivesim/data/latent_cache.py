"""Encode a clip dataset once into latent shards (the format of ``drivesim.data.latents``).

Every source frame of every clip is encoded (per frame; the encoder never mixes time) after
the same resize/centre-crop as ``ClipDataset`` (``--size``, default the clips' own size),
and the Gaussian ``mean`` and ``logvar`` are stored (why both: see ``drivesim.data.latents``),
with each frame's boxes and ego motion.
Windows at other frame rates are picked at read time, so one cache serves every stage.

Resumable and atomic: ``latents.json`` fixes the settings first, each shard appears under its
final name only when complete (a re-run skips finished shards), and ``manifest.jsonl`` is
written last. A re-run with another autoencoder or settings stops unless ``overwrite``.

The data layer imports no models: the encoder comes in as a :class:`LatentEncoder` (a
callable plus its identity); ``drivesim data encode`` (``drivesim.tools.encode``) builds one
from an autoencoder model file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from drivesim.data.boxes import ResizeCrop
from drivesim.data.clip_format import ManifestEntry, read_clip, read_manifest
from drivesim.data.datasets import to_video_tensor
from drivesim.data.latents import MANIFEST, META, SCHEMA, LatentEntry, shard_name
from drivesim.utils.io import DriveSimInputError, atomic_path, atomic_write_json, atomic_write_text

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LatentEncoder:
    """What the cache needs of an encoder.

    ``encode(video [1, n, 3, H, W] in [-1, 1]) -> (mean, logvar)`` each ``[1, n, C, h, w]``
    (per frame; unscaled posterior moments); ``fingerprint`` identifies the weights (a
    cache made with another encoder is refused); ``scale_factor`` multiplies the latents
    at read time; ``downsample_factor`` is H / h; ``hparams`` are recorded for provenance.
    """

    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    fingerprint: str
    scale_factor: float
    downsample_factor: int
    hparams: dict
    device: torch.device | str = "cpu"


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
def _encode_clip(encoder: LatentEncoder, clip_dir: Path, size: tuple[int, int] | None, batch_frames: int,
                 dtype: torch.dtype, bar: tqdm) -> dict[str, torch.Tensor]:
    clip = read_clip(clip_dir)
    out_hw = size or (clip.height, clip.width)
    rc = ResizeCrop.center((clip.height, clip.width), out_hw)
    means, logvars = [], []
    try:
        for start in range(0, clip.num_frames, batch_frames):
            idx = np.arange(start, min(clip.num_frames, start + batch_frames))
            rgb = np.stack([rc.apply_image(f) for f in clip.frames(idx)])   # [n, H, W, 3]
            mean, logvar = encoder.encode(to_video_tensor(rgb)[None].to(encoder.device))  # [1, n, C, h, w]
            means.append(mean[0].to("cpu", dtype))
            logvars.append(logvar[0].to("cpu", dtype))
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
            "counts": torch.tensor(counts, dtype=torch.int64),
            "ego_speed": torch.from_numpy(clip.ego.speed.copy()),          # [N] float32, 0 where unknown
            "ego_yaw_rate": torch.from_numpy(clip.ego.yaw_rate.copy()),
            "ego_known": torch.from_numpy(clip.ego.known.copy())}


def encode_dataset(encoder: LatentEncoder, data: str | Path, out: str | Path, *,
                   splits: Sequence[str] | None = None, size: tuple[int, int] | None = None,
                   clips_per_shard: int = 8, batch_frames: int = 16, dtype: str = "float32",
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Encode the clips of ``data`` (optionally only ``splits``) with ``encoder`` into ``out``.

    Returns ``{"clips", "shards_written", "shards_skipped", "complete"}``.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES or clips_per_shard < 1 or batch_frames < 1:
        raise ValueError(f"encode: bad options dtype={dtype!r} clips_per_shard={clips_per_shard} "
                         f"batch_frames={batch_frames}")
    data, out = Path(data), Path(out)
    f = encoder.downsample_factor
    if size is not None and (size[0] % f or size[1] % f):
        raise DriveSimInputError(f"frame size is not divisible by the autoencoder factor f={f}", field="size",
                                 value=size)
    entries: list[ManifestEntry] = [e for e in read_manifest(data) if splits is None or e.split in splits]
    if not entries:
        raise DriveSimInputError("no clips in the requested splits", path=data / "manifest.jsonl",
                                 field="splits", value=splits)
    meta = {"schema": SCHEMA, "ae_hash": encoder.fingerprint, "scale_factor": float(encoder.scale_factor),
            "ae_hparams": encoder.hparams, "source": str(data.resolve()), "size": list(size) if size else None,
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
                arrays = _encode_clip(encoder, data / entry.path, size, batch_frames, DTYPES[dtype], bar)
                tensors.update({f"{key}.{name}": t.contiguous() for name, t in arrays.items()})
            with atomic_path(out / shard_name(k)) as tmp:
                save_file(tensors, str(tmp), metadata={"schema": SCHEMA, "ae_hash": meta["ae_hash"]})
            written += 1
    lines = [LatentEntry(e.clip_id, e.split, shard_name(k), str(key), e.num_frames, e.fps, e.daynight, e.crowd,
                         meta["ae_hash"], meta["scale_factor"]).__dict__
             for k, group in enumerate(shards) for key, e in enumerate(group)]
    atomic_write_text(out / MANIFEST, "".join(json.dumps(line) + "\n" for line in lines))
    return {"clips": len(entries), "shards_written": written, "shards_skipped": skipped, "complete": True}
