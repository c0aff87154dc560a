import json
import sys
import types

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import Dataset

from drivesim.data.clip_format import (
    ClipWriter,
    assign_split,
    manifest_entry,
    read_clip,
    write_manifest,
)
from drivesim.data.datamodule import DriveDataModule, ShardedSampler

H, W = 24, 40


def make_dataset(root, n_clips=5, frames=20):
    entries = []
    for i in range(n_clips):
        with ClipWriter(root / f"c{i}", fps=10.0, height=H, width=W, frames_format="png",
                        labels={"daynight": "day" if i % 2 else "night"}) as w:
            for k in range(frames):
                w.add_frame(np.full((H, W, 3), 3 * k, np.uint8), boxes=[[0.1, 0.1, 0.5, 0.5]], classes=[2],
                            track_ids=[1])
        entries.append(manifest_entry(read_clip(root / f"c{i}"), root, assign_split(i, n_clips, 0.4)))
    write_manifest(root, entries)
    return root


class _Range(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


@pytest.mark.parametrize("n", [10, 11, 13])
def test_sharded_sampler_two_ranks(n):
    ds = _Range(n)
    # validation: pad-free, every index exactly once
    val = [list(ShardedSampler(ds, num_replicas=2, rank=r, shuffle=False, drop_last=False)) for r in range(2)]
    assert sorted(val[0] + val[1]) == list(range(n))
    assert [len(ShardedSampler(ds, 2, r, shuffle=False, drop_last=False)) for r in range(2)] == [len(v) for v in val]
    # training: shuffled, equal lengths, no duplicates, fewer than world_size dropped
    for epoch in (0, 1):
        samplers = [ShardedSampler(ds, num_replicas=2, rank=r, seed=3) for r in range(2)]
        for s in samplers:
            s.set_epoch(epoch)
        train = [list(s) for s in samplers]
        assert len(train[0]) == len(train[1]) == len(samplers[0]) == n // 2
        assert len(set(train[0]) | set(train[1])) == 2 * (n // 2) and not set(train[0]) & set(train[1])
    first = [list(ShardedSampler(ds, 2, 0, seed=3)) for _ in range(2)]
    assert first[0] == first[1]  # same seed and epoch: same order
    s = ShardedSampler(ds, 2, 0, seed=3)
    s.set_epoch(1)
    assert list(s) != first[0] or n < 4


def test_clips_datamodule_batches_and_splits(tmp_path):
    root = make_dataset(tmp_path)
    dm = DriveDataModule(source="clips", root=str(root), frames=4, fps=5.0, height=16, width=16, max_boxes=3,
                         batch_size=2)
    dm.setup("fit")
    assert {c.clip_id for c in dm.train_set.clips} == {"c0", "c1", "c2"}
    assert dm.val_set is None  # opened lazily by val_dataloader()
    assert len(dm.val_dataloader().dataset) == len(dm.val_set) and dm.val_set.split == "val"
    assert {c.clip_id for c in dm.val_set.clips} == {"c3", "c4"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 4, 3, 16, 16) and batch["video"].dtype == torch.float32
    assert batch["boxes"].shape == (2, 4, 3, 4) and batch["box_classes"].dtype == torch.int64
    assert batch["daynight"].shape == (2,) and batch["fps"].tolist() == [5.0, 5.0]
    assert len(batch["clip_id"]) == 2 and dm.steps_per_epoch() == len(dm.train_set) // 2
    assert batch["ego_speed"].shape == batch["ego_known"].shape == (2, 4) and batch["ego_known"].dtype == torch.bool


def test_val_stride_thins_only_the_val_split(tmp_path):
    root = make_dataset(tmp_path)  # 20 frames at 10 fps per clip; 1-frame windows at 10 fps
    kw = dict(source="clips", root=str(root), frames=1, fps=10.0, height=16, width=16, batch_size=2)
    dense, thin = DriveDataModule(**kw), DriveDataModule(**kw, val_stride=5)
    for dm in (dense, thin):
        dm.setup("fit")
        dm.val_dataloader()
    assert len(dense.train_set) == len(thin.train_set) == 3 * 20
    assert len(dense.val_set) == 2 * 20 and len(thin.val_set) == 2 * 4
    # the thinned windows are every 5th frame of the dense ones
    assert torch.equal(thin.val_set[1]["video"], dense.val_set[5]["video"])
    with pytest.raises(ValueError, match="val_stride must be"):
        DriveDataModule(**kw, val_stride=0)


def test_clips_datamodule_ddp_coverage(tmp_path, monkeypatch):
    root = make_dataset(tmp_path, n_clips=5, frames=30)
    seen_val, seen_train = [], []
    for rank in range(2):
        dm = DriveDataModule(source="clips", root=str(root), frames=3, fps=5.0, height=16, width=16,
                             batch_size=2)
        monkeypatch.setattr(dm, "_rank_world", lambda r=rank: (r, 2))
        dm.setup("fit")
        for batch in dm.val_dataloader():
            seen_val += [(c, int(v)) for c, v in zip(batch["clip_id"], (batch["video"][:, 0].mean((1, 2, 3)) * 1e4))]
        for batch in dm.train_dataloader():
            seen_train += [(c, int(v)) for c, v in zip(batch["clip_id"], (batch["video"][:, 0].mean((1, 2, 3)) * 1e4))]
    n_val, n_train = len(dm.val_set), len(dm.train_set)
    assert len(seen_val) == len(set(seen_val)) == n_val  # every val window once
    assert len(seen_train) == len(set(seen_train))  # no duplicates across ranks
    assert n_train - len(seen_train) < 2 * 2 * 2  # only drop_last losses (sampler tail + partial batches)


def test_latents_source_is_lazy_and_gets_the_agreed_kwargs(tmp_path, monkeypatch):
    calls = {}

    class FakeLatents(_Range):
        def __init__(self, root, split, frames, fps, max_boxes, seed, stride):
            calls[split] = (root, frames, fps, max_boxes, seed, stride)
            super().__init__(4)

    dm = DriveDataModule(source="latents", root=str(tmp_path), frames=6, fps=2.0, max_boxes=5, batch_size=2,
                         seed=7)
    module = types.ModuleType("drivesim.data.latents")
    module.LatentClipDataset = FakeLatents
    monkeypatch.setitem(sys.modules, "drivesim.data.latents", module)
    dm.setup("fit")
    dm.val_dataloader()
    assert calls == {"train": (str(tmp_path), 6, 2.0, 5, 7, None), "val": (str(tmp_path), 6, 2.0, 5, 7, None)}
    assert isinstance(dm.train_dataloader().sampler, ShardedSampler)


def test_bad_options():
    with pytest.raises(ValueError, match="needs root"):
        DriveDataModule(source="clips")
    with pytest.raises(ValueError, match="source must be"):
        DriveDataModule(source="videos")


def test_synthetic_datamodule_contract_and_rank_split():
    kw = dict(source="synthetic", frames=2, fps=10.0, height=32, width=64, max_boxes=4, batch_size=2,
              samples_per_epoch=8, val_samples=4, min_vehicles=1, max_vehicles=3)
    ids = []
    for rank in range(2):
        dm = DriveDataModule(**kw)
        dm._rank_world = lambda r=rank: (r, 2)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert len(batches) == dm.steps_per_epoch() == 2  # 8 samples / 2 ranks / batch 2
        ids += [c for b in batches for c in b["clip_id"]]
        val = next(iter(dm.val_dataloader()))
        assert val["video"].shape == (2, 2, 3, 32, 64) and val["boxes"].shape == (2, 2, 4, 4)
        assert val["ego_known"].all() and val["ego_yaw_rate"].shape == (2, 2)  # the world's exact motion
        assert val["video"].min() >= -1 and val["video"].max() <= 1
    assert sorted(ids) == sorted(f"synth-s0-e0-i{i}" for i in range(8))
    dm = DriveDataModule(**kw, ego_program_fraction=1.0)
    dm.setup("fit")
    assert dm.train_set.ego_program_fraction == 1.0 and dm.train_set.scenario(0)["ego_program"] is not None


def test_synthetic_workers_distinct_and_reproducible():
    kw = dict(source="synthetic", frames=1, fps=10.0, height=32, width=64, batch_size=1, samples_per_epoch=6,
              max_vehicles=2, num_workers=2)
    runs = []
    for _ in range(2):
        dm = DriveDataModule(**kw)
        dm.setup("fit")
        runs.append({b["clip_id"][0]: b["video"] for b in dm.train_dataloader()})
    assert sorted(runs[0]) == [f"synth-s0-e0-i{i}" for i in range(6)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


class _Probe(LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.shapes = []

    def training_step(self, batch, batch_idx):
        self.shapes.append(tuple(batch["video"].shape))
        return (self.w * batch["video"].mean()).sum() + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_keeps_sampler_and_runs(tmp_path):
    root = make_dataset(tmp_path)
    dm = DriveDataModule(source="clips", root=str(root), frames=2, fps=5.0, height=16, width=16, batch_size=2)
    model = _Probe()
    trainer = Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                      default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert model.shapes == [(2, 2, 3, 16, 16)] * 2
    assert isinstance(trainer.train_dataloader.sampler, ShardedSampler)


class _Recorder(LightningModule):
    """Writes the window ids each rank trained / validated on to ``out_dir``."""

    def __init__(self, out_dir):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.out_dir, self.seen = out_dir, {"train": [], "val": []}

    def _record(self, stage, batch):
        first = batch["video"][:, 0].mean((1, 2, 3))  # identifies the window start in its clip
        self.seen[stage] += [f"{c}@{v:.4f}" for c, v in zip(batch["clip_id"], first.tolist())]

    def training_step(self, batch, batch_idx):
        self._record("train", batch)
        return (self.w * batch["video"].mean()).sum() + self.w.square().sum()

    def validation_step(self, batch, batch_idx):
        self._record("val", batch)

    def on_fit_end(self):
        (self.out_dir / f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_real_ddp_two_cpu_ranks_cover_the_epoch(tmp_path):
    root = make_dataset(tmp_path / "ds", n_clips=5, frames=30)
    dm = DriveDataModule(source="clips", root=str(root), frames=3, fps=5.0, height=16, width=16, batch_size=1)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(_Recorder(tmp_path), datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for stage, split in (("train", "train"), ("val", "val")):
        seen = ranks[0][stage] + ranks[1][stage]
        total = len(DriveDataModule(source="clips", root=str(root), frames=3, fps=5.0, height=16, width=16,
                                    train_split=split, batch_size=1).train_dataloader().dataset)
        assert len(seen) == len(set(seen))  # nothing seen twice across ranks
        assert total - len(seen) == (total % 2 if stage == "train" else 0)
