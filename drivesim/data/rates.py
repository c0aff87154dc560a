"""Several frame rates in one training stream: the interpolation model's two regimes.

One interpolation model serves both steps of the cascade (Video LDM §3.2): regime 0 windows
hold key frames x4 (e.g. 8 fps windows of 2 fps key frames), regime 1 windows x16 (32 fps).
``DriveDataModule(fps=[8, 32])`` builds one dataset per rate and takes their samples in
turn, so every batch mixes both regimes in equal shares; the regime of a sample follows
from its ``fps`` (``LatentDiffusionModule.regime_fps_split``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Dataset, IterableDataset


class InterleavedDataset(Dataset):
    """Map-style datasets in turn: index ``i`` is item ``i // k`` of part ``i % k``; as long as
    ``k`` times the shortest part (every part contributes equally)."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        if len(parts) < 2:
            raise ValueError(f"InterleavedDataset needs at least 2 parts, got {len(parts)}")
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts) * min(len(p) for p in self.parts)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside [0, {len(self)})")
        k = len(self.parts)
        return self.parts[index % k][index // k]

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            if callable(getattr(part, "set_epoch", None)):
                part.set_epoch(epoch)


class InterleavedStream(IterableDataset):
    """Iterable datasets (the rendered world) in turn, one sample of each per round; the epoch
    counter reaches every part (a resumed run starts at the checkpoint's epoch)."""

    def __init__(self, parts: Sequence[IterableDataset]) -> None:
        if len(parts) < 2:
            raise ValueError(f"InterleavedStream needs at least 2 parts, got {len(parts)}")
        self.parts = list(parts)

    @property
    def epoch(self) -> int:
        return self.parts[0].epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        for part in self.parts:
            part.epoch = value

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self) -> Iterator[dict]:
        iters = [iter(p) for p in self.parts]
        while iters:
            for it in list(iters):
                try:
                    yield next(it)
                except StopIteration:
                    iters.remove(it)
