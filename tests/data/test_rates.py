"""Several frame rates in one stream (the interpolation model's two regimes)."""

import pytest
import torch

from drivesim.data.datamodule import DriveDataModule
from drivesim.data.rates import InterleavedDataset, InterleavedStream


def test_synthetic_stream_alternates_rates_and_keeps_epochs():
    dm = DriveDataModule(source="synthetic", frames=5, fps=[8.0, 32.0], height=16, width=32, max_boxes=4,
                         batch_size=4, samples_per_epoch=8, val_samples=4, min_vehicles=1, max_vehicles=3)
    dm.setup("fit")
    assert isinstance(dm.train_set, InterleavedStream) and len(dm.train_set) == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["fps"].tolist() == [8.0, 32.0, 8.0, 32.0]
    assert batch["video"].shape == (4, 5, 3, 16, 32)
    dm.train_set.epoch = 3
    assert [p.epoch for p in dm.train_set.parts] == [3, 3]


def test_interleaved_map_dataset():
    a, b = [{"i": i, "part": "a"} for i in range(5)], [{"i": i, "part": "b"} for i in range(3)]
    mixed = InterleavedDataset([a, b])
    assert len(mixed) == 6 and [mixed[k]["part"] for k in range(6)] == ["a", "b"] * 3
    assert mixed[5] == {"i": 2, "part": "b"}
    with pytest.raises(IndexError):
        mixed[6]
    with pytest.raises(ValueError):
        InterleavedDataset([a])


def test_single_rate_is_unchanged():
    dm = DriveDataModule(source="synthetic", frames=2, fps=10.0, height=16, width=32, samples_per_epoch=4,
                         val_samples=2, batch_size=2)
    dm.setup("fit")
    assert not isinstance(dm.train_set, InterleavedStream)
    assert torch.equal(next(iter(dm.train_dataloader()))["fps"], torch.tensor([10.0, 10.0]))
