"""Cached autoencoder latents (written by ``drivesim data encode``) and their dataset.

Layout of a latent cache folder::

    latents.json        schema drivesim.latents/1, AE hash + hparams, scale_factor, frame size
    manifest.jsonl      one line per clip: clip_id, split, shard, key, num_frames, fps, labels,
                        ae_hash, scale_factor (written last: its presence marks a complete cache)
    shard-00000.safetensors ...  per clip ``{key}.mean`` / ``{key}.logvar`` ``[N, C, h, w]`` (all N
                        source frames), boxes ``{key}.boxes [K, 4]``, ``.classes``, ``.ids`` ``[K]``
                        flattened over frames with ``{key}.counts [N]`` boxes per frame, and the
                        ego motion ``{key}.ego_speed`` / ``.ego_yaw_rate`` float32 and
                        ``.ego_known`` bool ``[N]`` (absent in caches written before it: unknown)

Why the Gaussian mean *and* log-variance rather than one sample: the dataset can then draw
a fresh ``z = mean + std * eps`` every time a window is used, which is what LDM training does
when it encodes on the fly (the diffusion model never sees the same latent twice), at twice
the storage of a single sample.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from drivesim.data.boxes import pad_boxes
from drivesim.data.datasets import ego_tensors, resample_indices, window_starts
from drivesim.data.ego import EgoSeries
from drivesim.utils.io import DriveSimInputError, read_json

SCHEMA = "drivesim.latents/1"
META = "latents.json"
MANIFEST = "manifest.jsonl"
ARRAYS = ("mean", "logvar", "boxes", "classes", "ids", "counts")
EGO_ARRAYS = ("ego_speed", "ego_yaw_rate", "ego_known")  # optional: a cache may predate them


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


@dataclass(frozen=True)
class LatentEntry:
    """One line of a latent cache's ``manifest.jsonl``."""

    clip_id: str
    split: str
    shard: str
    key: str
    num_frames: int
    fps: float
    daynight: int
    crowd: int
    ae_hash: str
    scale_factor: float


def read_latent_meta(root: str | os.PathLike) -> dict:
    path = Path(root) / META
    if not path.is_file():
        raise DriveSimInputError("not a latent cache (no latents.json); create it with `drivesim data encode`",
                                 path=path, field="root")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise DriveSimInputError(f"expected schema {SCHEMA}", path=path, field="schema",
                                 value=meta.get("schema") if isinstance(meta, dict) else meta)
    scale = meta.get("scale_factor")
    if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
        raise DriveSimInputError("missing or invalid autoencoder scale factor", path=path, field="scale_factor",
                                 value=scale)
    return meta


def read_latent_manifest(root: str | os.PathLike) -> list[LatentEntry]:
    """Entries of a complete cache; an interrupted ``encode`` run has no manifest yet."""
    root = Path(root)
    meta = read_latent_meta(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DriveSimInputError("incomplete latent cache (no manifest.jsonl): re-run `drivesim data encode` "
                                 "with the same arguments, it resumes", path=path, field=MANIFEST)
    entries = []
    for line_no, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            entry = LatentEntry(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as err:
            raise DriveSimInputError(f"bad manifest line: {err}", path=path, field=f"line {line_no}",
                                     value=text[:80]) from err
        if entry.ae_hash != meta["ae_hash"]:
            raise DriveSimInputError(f"clip encoded by another autoencoder than latents.json's {meta['ae_hash']}",
                                     path=path, field=f"line {line_no}.ae_hash", value=entry.ae_hash)
        entries.append(entry)
    return entries


def load_clip_latents(root: str | os.PathLike, entry: LatentEntry) -> dict[str, torch.Tensor]:
    """All arrays of one clip (see module docstring) from its shard; a clip stored without ego
    motion gets unknown ego arrays."""
    from safetensors import SafetensorError, safe_open

    path = Path(root) / entry.shard
    try:
        with safe_open(str(path), framework="pt") as fh:
            out = {name: fh.get_tensor(f"{entry.key}.{name}") for name in ARRAYS}
            stored = set(fh.keys())
            if all(f"{entry.key}.{name}" in stored for name in EGO_ARRAYS):
                out.update({name: fh.get_tensor(f"{entry.key}.{name}") for name in EGO_ARRAYS})
            else:
                out.update(ego_speed=torch.zeros(entry.num_frames), ego_yaw_rate=torch.zeros(entry.num_frames),
                           ego_known=torch.zeros(entry.num_frames, dtype=torch.bool))
            return out
    except (SafetensorError, OSError) as err:
        raise DriveSimInputError(f"cannot read clip '{entry.clip_id}': {err}", path=path, field=entry.key) from err


class LatentClipDataset(Dataset):
    """Windows of ``frames`` latent frames at ``fps`` from a latent cache (mirrors ``ClipDataset``).

    Windows start at source frames 0, s, 2s, ... (``stride`` output frames, default ``frames``)
    and pick frames with ``resample_indices``, exactly as ``ClipDataset`` does. Each sample is
    the batch contract with ``latents [T, C, h, w] = (mean + std * eps) * scale_factor`` instead
    of ``video``; eps comes from a generator seeded by ``(seed, index, n)`` where n counts how
    often this dataset copy served ``index`` (fresh noise each epoch, same run -> same latents).
    ``sample=False`` returns ``mean * scale_factor``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", frames: int = 8, fps: float | None = None,
                 max_boxes: int = 16, seed: int = 0, stride: int | None = None, sample: bool = True,
                 cache_clips: int = 16) -> None:
        if frames < 1 or max_boxes < 1 or (fps is not None and not fps > 0):
            raise ValueError(f"LatentClipDataset: bad options frames={frames} fps={fps} max_boxes={max_boxes}")
        self.root, self.split, self.frames, self.fps = Path(root), split, frames, fps
        self.max_boxes, self.seed, self.stride, self.sample = max_boxes, seed, stride or frames, sample
        self.meta = read_latent_meta(self.root)
        self.scale_factor = float(self.meta["scale_factor"])
        self.entries = [e for e in read_latent_manifest(self.root) if e.split == split]
        if not self.entries:
            raise DriveSimInputError("no clips in this split", path=self.root / MANIFEST, field="split", value=split)
        self.windows: list[tuple[int, int]] = []
        for k, e in enumerate(self.entries):
            self.windows += [(k, s) for s in window_starts(e.num_frames, frames, e.fps, self._out_fps(e),
                                                           self.stride)]
        if not self.windows:
            raise DriveSimInputError(f"every clip is shorter than a window of {frames} frames",
                                     path=self.root / MANIFEST, field="split", value=split)
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = cache_clips
        self.epoch = 0

    def _out_fps(self, entry: LatentEntry) -> float:
        return entry.fps if self.fps is None else float(self.fps)

    def __len__(self) -> int:
        return len(self.windows)

    def _clip(self, k: int) -> dict[str, torch.Tensor]:
        if k not in self._cache:
            self._cache[k] = load_clip_latents(self.root, self.entries[k])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(k)
        return self._cache[k]

    def set_epoch(self, epoch: int) -> None:
        """Called by the sampler each epoch: fresh noise per epoch, reproducible after a resume."""
        self.epoch = int(epoch)

    def _noise(self, index: int, shape: torch.Size) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed, index, self.epoch]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randn(shape, generator=gen)

    def __getitem__(self, index: int) -> dict:
        k, start = self.windows[index]
        entry, arrays = self.entries[k], self._clip(k)
        idx = resample_indices(self.frames, entry.fps, self._out_fps(entry), start)
        mean = arrays["mean"][idx].float()                           # [T, C, h, w]
        z = mean
        if self.sample:
            z = mean + torch.exp(0.5 * arrays["logvar"][idx].float()) * self._noise(index, mean.shape)
        offsets = np.concatenate([[0], np.cumsum(arrays["counts"].numpy())])
        padded = [pad_boxes(arrays["boxes"][offsets[i]:offsets[i + 1]].numpy(),
                            arrays["classes"][offsets[i]:offsets[i + 1]].numpy(),
                            arrays["ids"][offsets[i]:offsets[i + 1]].numpy(), self.max_boxes) for i in idx.tolist()]
        ego = EgoSeries.of(arrays["ego_speed"][idx].numpy(), arrays["ego_yaw_rate"][idx].numpy(),
                           arrays["ego_known"][idx].numpy())
        return {
            "latents": z * self.scale_factor,
            "boxes": torch.from_numpy(np.stack([p.boxes for p in padded])),
            "box_classes": torch.from_numpy(np.stack([p.classes for p in padded])),
            "box_ids": torch.from_numpy(np.stack([p.ids for p in padded])),
            **ego_tensors(ego),
            "daynight": torch.tensor(entry.daynight, dtype=torch.int64),
            "crowd": torch.tensor(entry.crowd, dtype=torch.int64),
            "fps": torch.tensor(self._out_fps(entry), dtype=torch.float32),
            "clip_id": entry.clip_id,
        }
