"""``DriveDataModule``: the one LightningDataModule every training stage uses.

Sources:

- ``synthetic``: :class:`SyntheticDataset` streaming from the world. The per-epoch index
  space (``samples_per_epoch`` train, ``val_samples`` val with a different seed) is split
  over rank x worker, so no drive is repeated within an epoch; each rank yields
  ``samples // world_size`` samples (remainder dropped so all ranks step together).
- ``clips``: :class:`ClipDataset` over ``root`` (manifest splits ``train_split`` /
  ``val_split``), sharded by :class:`ShardedSampler`.
- ``latents``: ``drivesim.data.latents.LatentClipDataset`` (imported only for this source).

Every source yields the ego motion keys (``ego_speed``, ``ego_yaw_rate``, ``ego_known``
``[B, T]``): exact in the synthetic world, from the clips' labels where they have them,
unknown (``ego_known`` False, values 0) elsewhere.

DDP: ``ShardedSampler`` subclasses ``DistributedSampler`` so Lightning keeps it (and calls
``set_epoch``). Training shuffles per epoch and drops the last ``len % world_size`` samples
of the permutation (a different few each epoch) so all ranks run the same number of steps;
validation is split without padding (no sample seen twice, none lost; ranks may differ by
one sample). Lightning's default ``DistributedSampler`` would instead pad by repeating samples.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from drivesim.data.datasets import (
    EGO_PROGRAM_FRACTION,
    ClipDataset,
    SyntheticDataset,
    collate_batch,
)
from drivesim.data.rates import InterleavedDataset, InterleavedStream
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE


class ShardedSampler(DistributedSampler):
    """Rank ``rank`` of ``num_replicas`` takes every ``num_replicas``-th index.

    ``drop_last=True``: each rank gets ``len // num_replicas`` indices (the tail of the
    permutation is dropped). ``drop_last=False``: no padding and no duplicates; the first
    ``len % num_replicas`` ranks get one more index.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        n = len(dataset)
        self.num_samples = n // num_replicas if drop_last else len(range(rank, n, num_replicas))
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:  # same permutation on every rank: seeded by (seed, epoch)
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: (n // self.num_replicas) * self.num_replicas]
        return iter(order[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Also tells the dataset (per-epoch noise of the latents source), so the data of
        epoch e is a pure function of (seed, e): a resumed run sees what an uninterrupted one does."""
        super().set_epoch(epoch)
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)


class DriveDataModule(LightningDataModule):
    """Batches of the batch contract (docs/architecture.md) from the synthetic world, a clip
    folder or latents.

    Args:
        source: ``synthetic`` | ``clips`` | ``latents``.
        root: dataset folder (``clips``/``latents``).
        frames: window length T (1 = single-frame image mode).
        fps: frame rate of the windows (clips are resampled to it; ``None`` keeps theirs); a
            list of rates takes windows at each rate in turn (``data/rates.py``: the
            interpolation model's two regimes in one stage).
        height, width: training size (``synthetic`` renders at it; clips are resized/cropped).
        max_boxes: boxes per frame N (padded / truncated by area).
        batch_size, num_workers: DataLoader settings (per rank).
        samples_per_epoch, val_samples: ``synthetic`` epoch sizes (global, all ranks).
        seed: base seed (synthetic drives, clip shuffling).
        night_fraction, min_vehicles, max_vehicles, weathers: ``synthetic`` scenario draws;
            traffic_range: metres of simulated traffic ahead (``WorldConfig.traffic_range``);
            ego_program_fraction: share of drives whose ego follows a random program of stops,
            speed changes and curves (``SyntheticDataset``).
        lenient: skip bad clips (reported) instead of raising.
        train_split, val_split: manifest splits.
        stride: window stride in output frames for clip sources (default: ``frames``).
        val_stride: window stride of the ``val_split`` only (default: ``stride``). Frame-level
            validation of an autoencoder on every frame of every val clip costs more than training
            between two validations; a stride of 10 scores one frame per second of video.
        frame_cache_mb: ``clips``: keep up to this many MiB of decoded clips in memory per
            dataset copy (0 = decode on every access); the CPU demo caches its whole dataset.
    """

    def __init__(self, source: Literal["synthetic", "clips", "latents"] = "synthetic", root: str | None = None,
                 frames: int = 8, fps: float | list[float] | None = 10.0, height: int = 128, width: int = 256,
                 max_boxes: int = 16, batch_size: int = 4, num_workers: int = 0, samples_per_epoch: int = 1000,
                 val_samples: int = 64, seed: int = 0, night_fraction: float = 0.5, min_vehicles: int = 0,
                 max_vehicles: int = 12, weathers: tuple[str, ...] = ("clear",), lenient: bool = False,
                 train_split: str = "train", val_split: str = "val", stride: int | None = None,
                 val_stride: int | None = None, pin_memory: bool = False, frame_cache_mb: float = 0.0,
                 traffic_range: float = DEFAULT_TRAFFIC_RANGE,
                 ego_program_fraction: float = EGO_PROGRAM_FRACTION) -> None:
        super().__init__()
        if source not in ("synthetic", "clips", "latents"):
            raise ValueError(f"source must be synthetic|clips|latents, got {source!r}")
        if source != "synthetic" and not root:
            raise ValueError(f"source={source!r} needs root=<dataset folder>")
        if source == "synthetic" and fps is None:
            raise ValueError("source='synthetic' needs a frame rate (fps)")
        for name, value in (("stride", stride), ("val_stride", val_stride)):
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive number of frames, got {value!r}")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _rates(self) -> list[float | None]:
        fps = self.hparams.fps
        return list(fps) if isinstance(fps, (list, tuple)) else [fps]

    def _synthetic(self, samples: int, seed: int, resample: bool) -> SyntheticDataset | InterleavedStream:
        rates = self._rates()
        if len(rates) > 1:  # one stream per rate, each with its share of the samples and its own drives
            return InterleavedStream([self._synthetic_at(fps, samples // len(rates), seed + 7919 * k, resample)
                                      for k, fps in enumerate(rates)])
        return self._synthetic_at(rates[0], samples, seed, resample)

    def _synthetic_at(self, fps: float, samples: int, seed: int, resample: bool) -> SyntheticDataset:
        h = self.hparams
        rank, world = self._rank_world()
        return SyntheticDataset(frames=h.frames, fps=fps, height=h.height, width=h.width,
                                max_boxes=h.max_boxes, samples=samples, seed=seed,
                                night_fraction=h.night_fraction, min_vehicles=h.min_vehicles,
                                max_vehicles=h.max_vehicles, weathers=tuple(h.weathers), rank=rank,
                                world_size=world, resample_each_epoch=resample, traffic_range=h.traffic_range,
                                ego_program_fraction=h.ego_program_fraction)

    def _from_folder(self, split: str) -> Dataset:
        rates = self._rates()
        if len(rates) > 1:
            return InterleavedDataset([self._from_folder_at(split, fps) for fps in rates])
        return self._from_folder_at(split, rates[0])

    def _from_folder_at(self, split: str, fps: float | None) -> Dataset:
        h = self.hparams
        stride = h.val_stride if split == h.val_split and h.val_stride is not None else h.stride
        if h.source == "clips":
            return ClipDataset(h.root, split=split, frames=h.frames, fps=fps, height=h.height, width=h.width,
                               max_boxes=h.max_boxes, stride=stride, lenient=h.lenient,
                               cache_mb=h.frame_cache_mb)
        latents = importlib.import_module("drivesim.data.latents")  # optional: latents source only
        return latents.LatentClipDataset(h.root, split=split, frames=h.frames, fps=fps, max_boxes=h.max_boxes,
                                         seed=h.seed, stride=stride)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.source == "synthetic":
            # Validation uses a disjoint seed stream and the same drives every epoch.
            self.train_set = self._synthetic(h.samples_per_epoch, h.seed, resample=True)
            self.val_set = self._synthetic(h.val_samples, h.seed + 1_000_003, resample=False)
            return
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._from_folder(h.train_split)
        # The val split is opened by val_dataloader(), only when a validation loop asks for it.
        if stage == "validate" and self.val_set is None:
            self.val_set = self._from_folder(h.val_split)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        h = self.hparams
        sampler = None
        if not isinstance(dataset, torch.utils.data.IterableDataset):
            rank, world = self._rank_world()
            sampler = ShardedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=h.seed,
                                     drop_last=train)
        # Persistent workers keep the synthetic epoch counter (fresh drives every epoch); map-style
        # datasets get fresh workers each epoch so the epoch set by the sampler reaches them.
        iterable = sampler is None
        return DataLoader(dataset, batch_size=h.batch_size, sampler=sampler, num_workers=h.num_workers,
                          collate_fn=collate_batch, pin_memory=h.pin_memory, drop_last=train,
                          persistent_workers=iterable and h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        trainer = self.trainer
        if isinstance(self.train_set, (SyntheticDataset, InterleavedStream)) and trainer is not None:
            # a resumed run starts at the checkpoint's epoch, not at 0
            self.train_set.epoch = trainer.current_epoch
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, train=False)

    def steps_per_epoch(self) -> int:
        """Training batches per rank per epoch (drop_last)."""
        if self.train_set is None:
            self.setup("fit")
        if isinstance(self.train_set, torch.utils.data.IterableDataset):
            n = len(self.train_set)
        else:
            rank, world = self._rank_world()
            n = len(ShardedSampler(self.train_set, num_replicas=world, rank=rank))
        return math.floor(n / self.hparams.batch_size)
