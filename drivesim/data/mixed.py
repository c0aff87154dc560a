"""``MixedDataModule``: the synthetic world mixed with real footage at a stated ratio.

A team without box labels pretrains on the world (boxes, day/night, crowdedness) and trains on
its own footage in the same run: an epoch of ``samples_per_epoch`` samples holds exactly
``round(samples_per_epoch * world_fraction)`` world samples, spread evenly over the index space
(the sampler shuffles them), the others are footage windows.

- The footage is the module's ``source`` / ``root`` (a clip folder or a latent cache, as
  ``DriveDataModule``); its samples carry ``boxes_known = footage_boxes``: False (unlabelled
  footage) turns their boxes into the learned null box token in the LDM stages
  (``Conditioning.from_batch``), True keeps them.
- The world is rendered on the fly (``source: clips``: windows of the same frames, fps and size,
  ``SyntheticDataset``), or read from ``world_root``, a folder of exported world clips or their
  latent cache in the same ``source`` form (``source: latents`` needs it: a batch cannot mix
  pixels and latents). World samples carry ``boxes_known = True``.

Sample ``i`` of epoch ``e`` is a pure function of (seed, e, i), so a resumed run sees the data an
uninterrupted one does (the sampler passes the epoch on, ``set_epoch``).
"""

from __future__ import annotations

import importlib
import math

import torch
from torch.utils.data import Dataset

from drivesim.data.datamodule import DriveDataModule
from drivesim.data.datasets import ClipDataset, SyntheticDataset
from drivesim.utils.io import DriveSimInputError

VAL_SEED_OFFSET = 1_000_003  # validation draws a disjoint world / order stream


def world_count(i: int, fraction: float) -> int:
    """World samples among indices 0..i (``floor((i + 1) * fraction)``: exact ratio, spread evenly)."""
    return math.floor((i + 1) * fraction + 1e-9)


class MixedDataset(Dataset):
    """``samples`` samples per epoch: index ``i`` is a world sample when ``world_count`` steps at
    ``i``, else the next footage window of a per-epoch permutation. ``world`` is a
    ``SyntheticDataset`` (rendered: ``sample(k, epoch)``) or a map-style dataset."""

    def __init__(self, world: Dataset, footage: Dataset, world_fraction: float, samples: int, seed: int = 0,
                 footage_boxes: bool = False, resample_each_epoch: bool = True) -> None:
        if not 0.0 <= world_fraction <= 1.0:
            raise DriveSimInputError("expected a fraction in [0, 1]", field="world_fraction", value=world_fraction)
        if samples < 1:
            raise DriveSimInputError("expected >= 1 sample per epoch", field="samples_per_epoch", value=samples)
        self.world, self.footage, self.fraction = world, footage, float(world_fraction)
        self.samples, self.seed, self.footage_boxes = int(samples), int(seed), bool(footage_boxes)
        self.resample, self.epoch = resample_each_epoch, 0

    def __len__(self) -> int:
        return self.samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch) if self.resample else 0
        for part in (self.world, self.footage):
            if callable(getattr(part, "set_epoch", None)):
                part.set_epoch(self.epoch)

    def _order(self, n: int, salt: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_033 + self.epoch * 7919 + salt)
        return torch.randperm(n, generator=g)

    def is_world(self, i: int) -> bool:
        return world_count(i, self.fraction) > world_count(i - 1, self.fraction)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.samples:
            raise IndexError(i)
        if self.is_world(i):
            k = world_count(i, self.fraction) - 1
            if isinstance(self.world, SyntheticDataset):
                sample = self.world.sample(k, self.epoch)
            else:
                sample = self.world[int(self._order(len(self.world), 1)[k % len(self.world)])]
            known = True
        else:
            k = i - world_count(i, self.fraction)
            sample = self.footage[int(self._order(len(self.footage), 2)[k % len(self.footage)])]
            known = self.footage_boxes
        return {**sample, "boxes_known": torch.tensor(known)}


class MixedDataModule(DriveDataModule):
    """``DriveDataModule`` over the footage (``source`` clips | latents, ``root``) mixed with the
    synthetic world; ``world_fraction`` of every epoch is world samples (see the module doc).

    Args (beyond ``DriveDataModule``'s, which keep their meaning; ``samples_per_epoch`` and
    ``val_samples`` size the mixed epochs):
        world_fraction: share of world samples per epoch, in [0, 1].
        footage_boxes: whether the footage's boxes are labels (False: unlabelled footage).
        world_root: exported world clips (``source: clips``) or their latent cache (``source:
            latents``); None renders the world (clips only).
    """

    def __init__(self, source: str = "clips", root: str | None = None, world_fraction: float = 0.5,
                 footage_boxes: bool = False, world_root: str | None = None, frames: int = 8,
                 fps: float | None = 10.0, height: int = 128, width: int = 256, max_boxes: int = 16,
                 batch_size: int = 4, num_workers: int = 0, samples_per_epoch: int = 1000, val_samples: int = 64,
                 seed: int = 0, train_split: str = "train", val_split: str = "val", stride: int | None = None,
                 frame_cache_mb: float = 0.0, night_fraction: float = 0.5, min_vehicles: int = 0,
                 max_vehicles: int = 12, traffic_range: float = 60.0) -> None:
        if source not in ("clips", "latents"):
            raise DriveSimInputError("the footage is a clip folder or a latent cache", field="source", value=source)
        if source == "latents" and not world_root:
            raise DriveSimInputError("latent footage mixes with the world's latent cache: set world_root",
                                     field="world_root")
        if not world_root and fps is None:
            raise DriveSimInputError("rendering the world needs a frame rate", field="fps")
        super().__init__(source=source, root=root, frames=frames, fps=fps, height=height, width=width,
                         max_boxes=max_boxes, batch_size=batch_size, num_workers=num_workers,
                         samples_per_epoch=samples_per_epoch, val_samples=val_samples, seed=seed,
                         night_fraction=night_fraction, min_vehicles=min_vehicles, max_vehicles=max_vehicles,
                         train_split=train_split, val_split=val_split, stride=stride,
                         frame_cache_mb=frame_cache_mb, traffic_range=traffic_range)
        self.mix = {"world_fraction": float(world_fraction), "footage_boxes": bool(footage_boxes),
                    "world_root": world_root}

    def _world(self, split: str, seed: int) -> Dataset:
        h = self.hparams
        root = self.mix["world_root"]
        if root is None:
            return self._synthetic(1, seed, resample=False)  # used through sample(k, epoch) only
        if h.source == "clips":
            return ClipDataset(root, split=split, frames=h.frames, fps=h.fps, height=h.height, width=h.width,
                               max_boxes=h.max_boxes, stride=h.stride, cache_mb=h.frame_cache_mb)
        latents = importlib.import_module("drivesim.data.latents")
        return latents.LatentClipDataset(root, split=split, frames=h.frames, fps=h.fps, max_boxes=h.max_boxes,
                                         seed=h.seed, stride=h.stride)

    def _mixed(self, split: str, samples: int, seed: int, resample: bool) -> MixedDataset:
        return MixedDataset(self._world(split, seed), self._from_folder(split), self.mix["world_fraction"], samples,
                            seed=seed, footage_boxes=self.mix["footage_boxes"], resample_each_epoch=resample)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._mixed(h.train_split, h.samples_per_epoch, h.seed, resample=True)
        if stage == "validate" and self.val_set is None:
            self.val_set = self._mixed(h.val_split, h.val_samples, h.seed + VAL_SEED_OFFSET, resample=False)
