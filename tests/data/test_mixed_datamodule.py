"""MixedDataModule: the synthetic world and real footage at an exact ratio, footage without boxes
flagged so the LDM stages give it the learned null box token, deterministic per (seed, epoch)."""

import pytest
import torch

from drivesim.cli import main
from drivesim.data.mixed import MixedDataModule, MixedDataset, world_count
from drivesim.models.conditioning import Conditioning
from drivesim.utils.io import DriveSimInputError


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    assert main(["data", "synth", "--out", str(root), "--clips", "3", "--seconds", "1", "--fps", "10",
                 "--size", "32x64", "--val-fraction", "0.34", "--no-progress"]) == 0
    return root


def _module(root, **kw):
    args = dict(source="clips", root=str(root), world_fraction=0.25, frames=2, fps=10.0, height=32, width=64,
                batch_size=4, samples_per_epoch=8, val_samples=4, max_boxes=4)
    return MixedDataModule(**{**args, **kw})


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1 / 3, 0.5, 1.0])
def test_world_count_gives_the_exact_ratio(fraction):
    n = 120
    assert world_count(n - 1, fraction) == round(n * fraction)
    flags = [world_count(i, fraction) > world_count(i - 1, fraction) for i in range(n)]
    assert sum(flags) == round(n * fraction)


def test_batches_mix_world_and_footage_at_the_ratio(footage):
    dm = _module(footage)
    dm.setup("fit")
    samples = [dm.train_set[i] for i in range(len(dm.train_set))]
    world = [s for s in samples if s["clip_id"].startswith("synth-s0-e")]
    assert len(world) == 2 and all(bool(s["boxes_known"]) for s in world)  # 8 * 0.25, rendered drives
    real = [s for s in samples if not s["clip_id"].startswith("synth-s0-e")]
    assert len(real) == 6 and not any(bool(s["boxes_known"]) for s in real)
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 2, 3, 32, 64) and batch["boxes_known"].dtype == torch.bool
    cond = Conditioning.from_batch(batch)  # the LDM stages' conditioning: unlabelled footage -> null box token
    assert torch.equal(cond.drop_boxes, ~batch["boxes_known"])
    dropped = cond.with_dropped(boxes=torch.tensor([True, False, False, False]))  # guidance dropout adds to it
    assert torch.equal(dropped.drop_boxes, ~batch["boxes_known"] | torch.tensor([True, False, False, False]))


def test_same_seed_and_epoch_same_samples_and_epochs_differ(footage):
    a, b = _module(footage), _module(footage)
    a.setup("fit")
    b.setup("fit")
    ids = lambda ds: [ds[i]["clip_id"] for i in range(len(ds))]  # noqa: E731
    assert ids(a.train_set) == ids(b.train_set)
    assert torch.equal(a.train_set[2]["video"], b.train_set[2]["video"])
    first = ids(a.train_set)
    a.train_set.set_epoch(1)  # what the sampler does each epoch: new drives, new footage order
    second = ids(a.train_set)
    assert second != first and all("-e1-" in c for c in second if c.startswith("synth-s0-e"))
    again = MixedDataset(a.train_set.world, a.train_set.footage, 0.25, 8, seed=0)
    again.set_epoch(1)
    assert ids(again) == second  # epoch e is a function of (seed, e): a resumed run sees the same data


def test_labelled_footage_keeps_its_boxes_and_validation_uses_the_val_split(footage):
    dm = _module(footage, footage_boxes=True, world_fraction=0.5)
    dm.setup("validate")
    assert len(dm.val_set) == 4 and all(bool(dm.val_set[i]["boxes_known"]) for i in range(4))


def test_bad_settings_name_the_field(footage):
    with pytest.raises(DriveSimInputError, match="world_root"):
        _module(footage, source="latents")
    with pytest.raises(DriveSimInputError, match="source"):
        _module(footage, source="synthetic")
    dm = _module(footage, world_fraction=1.5)
    with pytest.raises(DriveSimInputError, match="world_fraction"):
        dm.setup("fit")
