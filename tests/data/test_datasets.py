import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from drivesim.data.clip_format import (
    ClipWriter,
    assign_split,
    manifest_entry,
    read_clip,
    write_manifest,
)
from drivesim.data.datasets import (
    ClipDataset,
    SyntheticDataset,
    collate_batch,
    resample_indices,
    shard_indices,
    window_starts,
)
from drivesim.utils.io import DriveSimInputError

H, W = 24, 40


def indexed_clip(path, n, fps=30.0, fmt="png", daynight="day", ego=False):
    """Frame i: blue = 5 * (i % 50); one car whose x1 = i / 100 (the index is readable back);
    with ``ego``, ego speed i / 10 m/s and yaw rate -i / 1000 rad/s (else unknown)."""
    with ClipWriter(path, fps=fps, height=H, width=W, labels={"daynight": daynight}, frames_format=fmt) as w:
        for i in range(n):
            f = np.full((H, W, 3), 60, np.uint8)
            f[..., 2] = 5 * (i % 50)
            motion = dict(ego_speed=i / 10, ego_yaw_rate=-i / 1000) if ego else {}
            w.add_frame(f, boxes=[[i / 100, 0.25, i / 100 + 0.1, 0.75]], classes=[1], track_ids=[3], **motion)
    return read_clip(path)


def make_dataset(root, lengths=(40, 40), fps=30.0, val_fraction=0.0, fmt="png"):
    """Clips c0, c1, ... (see ``indexed_clip``); the even ones carry ego motion."""
    entries = [manifest_entry(indexed_clip(root / f"c{i}", n, fps, fmt, ego=i % 2 == 0), root,
                              assign_split(i, len(lengths), val_fraction)) for i, n in enumerate(lengths)]
    write_manifest(root, entries, overwrite=True)
    return root


def check_contract(batch, b, t, h, w, n):
    assert set(batch) == {"video", "boxes", "box_classes", "box_ids", "ego_speed", "ego_yaw_rate", "ego_known",
                          "daynight", "crowd", "fps", "clip_id"}
    assert batch["video"].dtype == torch.float32 and batch["video"].shape == (b, t, 3, h, w)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["boxes"].dtype == torch.float32 and batch["boxes"].shape == (b, t, n, 4)
    assert batch["boxes"].min() >= 0 and batch["boxes"].max() <= 1
    for key in ("box_classes", "box_ids"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (b, t, n)
    assert ((batch["box_classes"] == 0) == (batch["boxes"].abs().sum(-1) == 0)).all()  # padding is zero
    for key in ("daynight", "crowd"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (b,)
    assert batch["fps"].dtype == torch.float32 and batch["fps"].shape == (b,)
    for key in ("ego_speed", "ego_yaw_rate"):
        assert batch[key].dtype == torch.float32 and batch[key].shape == (b, t)
        assert batch[key][~batch["ego_known"]].eq(0).all()  # unknown carries no value
    assert batch["ego_known"].dtype == torch.bool and batch["ego_known"].shape == (b, t)
    assert batch["ego_speed"].ge(0).all()
    assert isinstance(batch["clip_id"], list) and all(isinstance(c, str) for c in batch["clip_id"])


def test_resample_indices_rule():
    assert resample_indices(4, 30, 10).tolist() == [0, 3, 6, 9]
    assert resample_indices(5, 10, 4, start=2).tolist() == [2, 5, 7, 10, 12]  # 2.5 and 7.5 round up
    assert resample_indices(3, 10, 20).tolist() == [0, 1, 1]  # upsampling repeats the nearest frame
    assert window_starts(40, 4, 30, 10, stride=4) == [0, 12, 24]  # span 10 source frames, step 12
    assert window_starts(9, 4, 30, 10, stride=4) == []


def test_clip_batch_contract_and_fps_resampling(tmp_path):
    ds = ClipDataset(make_dataset(tmp_path), "train", frames=4, fps=10.0, height=H, width=W, max_boxes=3)
    assert len(ds) == 6  # 2 clips x windows at 0, 12, 24
    batch = collate_batch([ds[i] for i in range(len(ds))])
    check_contract(batch, 6, 4, H, W, 3)
    assert batch["clip_id"] == ["c0"] * 3 + ["c1"] * 3 and batch["fps"].tolist() == [10.0] * 6
    # 30 fps -> 10 fps: every 3rd source frame, read back from the pixels and from the boxes
    blue = ((batch["video"][:, :, 2].mean(dim=(-1, -2)) + 1) * 127.5 / 5).round()
    expect = torch.tensor([[s + 3 * k for k in range(4)] for s in (0, 12, 24)] * 2, dtype=torch.float32)
    assert torch.equal(blue, expect)
    assert torch.allclose(batch["boxes"][:, :, 0, 0] * 100, expect, atol=1e-3)
    assert batch["box_classes"][:, :, 0].eq(1).all() and batch["box_ids"][:, :, 0].eq(3).all()
    # the ego motion follows the same frames: c0 has it, c1 (written without) is unknown
    assert batch["ego_known"][:3].all() and not batch["ego_known"][3:].any()
    torch.testing.assert_close(batch["ego_speed"][:3] * 10, expect[:3])
    torch.testing.assert_close(batch["ego_yaw_rate"][:3] * -1000, expect[:3])


def test_native_fps_and_single_frame_mode(tmp_path):
    root = make_dataset(tmp_path, lengths=(7,))
    ds = ClipDataset(root, "train", frames=1, fps=None, height=H, width=W, max_boxes=2)
    assert len(ds) == 7
    batch = collate_batch([ds[5], ds[6]])
    check_contract(batch, 2, 1, H, W, 2)
    assert batch["fps"].tolist() == [30.0, 30.0]
    assert torch.allclose(batch["boxes"][:, 0, 0, 0], torch.tensor([0.05, 0.06]))


def test_resize_crop_moves_boxes_with_pixels(tmp_path):
    # 24x40 -> 16x16: resize to 16x27 (cover), crop 5 columns on the left
    with ClipWriter(tmp_path / "c0", fps=10, height=H, width=W, frames_format="png") as w:
        f = np.zeros((H, W, 3), np.uint8)
        f[6:18, 12:32] = 255
        w.add_frame(f, boxes=[[12 / W, 6 / H, 32 / W, 18 / H], [0.0, 0.0, 0.1, 0.2]], classes=[2, 1])
    write_manifest(tmp_path, [manifest_entry(read_clip(tmp_path / "c0"), tmp_path, "train")])
    s = ClipDataset(tmp_path, "train", frames=1, height=16, width=16, max_boxes=4)[0]
    img = s["video"][0, 0] > 0
    ys, xs = torch.nonzero(img, as_tuple=True)
    px = s["boxes"][0, 0] * 16
    assert torch.allclose(px, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float(), atol=1.0)
    assert s["box_classes"][0].tolist() == [2, 0, 0, 0]  # the box left of the crop is dropped


def test_strict_errors_short_clip_and_empty(tmp_path):
    root = make_dataset(tmp_path / "d", lengths=(40, 5))
    with pytest.raises(DriveSimInputError) as err:
        ClipDataset(root, "train", frames=4, fps=10.0)
    assert "c1" in str(err.value) and "'num_frames'" in str(err.value) and "too short" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriveSimInputError, match="empty"):
        ClipDataset(tmp_path / "empty")
    with pytest.raises(DriveSimInputError, match="no clips in this split"):
        ClipDataset(root, "val", frames=1)


def test_lenient_skips_and_reports(tmp_path, caplog):
    root = make_dataset(tmp_path, lengths=(40, 5, 40, 40))
    (root / "c2" / "clip.json").write_text("{broken")
    (root / "c3" / "frames" / "000010.png").unlink()
    with pytest.raises(DriveSimInputError):
        ClipDataset(root, "train", frames=4, fps=10.0)
    ds = ClipDataset(root, "train", frames=4, fps=10.0, height=H, width=W, lenient=True)
    assert len(ds) == 3 and [c.clip_id for c in ds.clips] == ["c0"]
    assert [c for c, _ in ds.skipped] == ["c1", "c2", "c3"]
    reasons = " ".join(r for _, r in ds.skipped)
    assert "too short" in reasons and "malformed JSON" in reasons and "000010.png" in reasons
    assert "skipped 3 of 4 clips" in caplog.text


def test_lenient_replaces_windows_that_fail_to_decode(tmp_path):
    root = make_dataset(tmp_path, lengths=(40, 40))
    ds = ClipDataset(root, "train", frames=4, fps=10.0, height=H, width=W, lenient=True)
    (root / "c0" / "frames" / "000003.png").write_bytes(b"junk")  # broken after validation
    s = ds[0]
    assert s["clip_id"] == "c0" and ds.decode_failures == {"c0": 1}  # replaced by window 1 of c0
    strict = ClipDataset(root, "train", frames=4, fps=10.0, height=H, width=W)
    with pytest.raises(DriveSimInputError, match="000003.png"):
        strict[0]


def test_mp4_clips_through_dataloader_workers(tmp_path):
    root = make_dataset(tmp_path, lengths=(30, 30), fps=10.0, fmt="mp4")
    ds = ClipDataset(root, "train", frames=5, fps=5.0, height=16, width=16, max_boxes=2)
    direct = [ds[i]["video"] for i in (5, 0, 3)]  # decoders open in the parent before the fork
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_batch))
    assert sum(len(b["clip_id"]) for b in batches) == len(ds) == 6
    check_contract(batches[0], 2, 5, 16, 16, 2)
    videos = torch.cat([b["video"] for b in batches])
    for i, v in zip((5, 0, 3), direct):
        assert torch.equal(videos[i], v)
    blue = ((videos[:, :, 2].mean(dim=(-1, -2)) + 1) * 127.5 / 5)
    assert torch.allclose(blue[1], torch.tensor([10.0, 12, 14, 16, 18]), atol=0.5)  # 10 -> 5 fps


def test_shard_indices_cover_epoch_once():
    total, world, workers = 103, 2, 3
    shards = [list(shard_indices(total, r, world, w, workers)) for r in range(world) for w in range(workers)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == (total // world) * world  # 1 sample dropped, none repeated
    per_rank = [sum(len(shards[r * workers + w]) for w in range(workers)) for r in range(world)]
    assert per_rank == [51, 51]


def _synthetic(**kw):
    opts = dict(frames=3, fps=10.0, height=32, width=64, max_boxes=6, samples=4, seed=5,
                min_vehicles=1, max_vehicles=4, max_warmup_steps=3)
    opts.update(kw)
    return SyntheticDataset(**opts)


def test_synthetic_contract_and_determinism():
    ds = _synthetic()
    items = list(ds)
    assert len(items) == len(ds) == 4
    batch = collate_batch(items)
    check_contract(batch, 4, 3, 32, 64, 6)
    assert len(set(batch["clip_id"])) == 4
    again = _synthetic().sample(2, epoch=0)
    assert torch.equal(again["video"], items[2]["video"]) and torch.equal(again["boxes"], items[2]["boxes"])
    assert not torch.equal(items[0]["video"], items[1]["video"])
    assert batch["box_classes"].gt(0).any()  # vehicles are labelled
    assert batch["ego_known"].all() and batch["ego_speed"].gt(0).any()  # exact ego motion in every frame
    assert torch.equal(again["ego_speed"], items[2]["ego_speed"])
    nxt = list(ds)  # next epoch: fresh drives
    assert not torch.equal(nxt[0]["video"], items[0]["video"])


def test_synthetic_night_fraction_and_rank_split():
    ds = _synthetic(night_fraction=1.0, samples=6, rank=1, world_size=2, resample_each_epoch=False)
    items = list(ds)
    assert len(items) == 3 and all(int(s["daynight"]) == 1 for s in items)
    assert [s["clip_id"] for s in items] == [f"synth-s5-e0-i{i}" for i in (1, 3, 5)]
    day = [_synthetic(night_fraction=0.0).scenario(i)["night"] for i in range(20)]
    assert not any(day)


def test_frame_cache_returns_the_same_windows_and_stays_within_its_budget(tmp_path):
    root = make_dataset(tmp_path, lengths=(40, 40, 40), fmt="mp4")
    plain = ClipDataset(root, "train", frames=2, fps=10.0, height=H, width=W)
    one_clip_mb = 40 * H * W * 3 / 2**20
    cached = ClipDataset(root, "train", frames=2, fps=10.0, height=H, width=W, cache_mb=2.5 * one_clip_mb)
    order = [0, 7, 3, 12, 5, 0, 13, 8, 1]
    for i in order:
        a, b = plain[i], cached[i]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["boxes"], b["boxes"])
    assert len(cached._cache) == 2 and cached._cache_bytes <= 2.5 * one_clip_mb * 2**20  # LRU evicted one
    assert not cached._open  # cached clips closed their decoders


def test_frame_cache_falls_back_to_windows_when_a_frame_is_broken(tmp_path):
    root = make_dataset(tmp_path, lengths=(40, 40))
    ds = ClipDataset(root, "train", frames=4, fps=10.0, height=H, width=W, lenient=True, cache_mb=10)
    (root / "c0" / "frames" / "000030.png").write_bytes(b"junk")  # in window 2 of c0 only
    assert ds[0]["clip_id"] == "c0" and not ds.decode_failures  # window 0 still reads
    assert ds[2]["clip_id"] == "c1" and ds.decode_failures == {"c0": 1}


def test_ego_programs_are_drawn_apart_from_the_other_scenario_draws():
    """A share of drives follows a random ego program; the rest of each draw does not depend on it,
    so clips without a program are the drives they were without the option."""
    none, half, every = (_synthetic(ego_program_fraction=f, samples=40) for f in (0.0, 0.5, 1.0))
    drawn = [half.scenario(i) for i in range(40)]
    for i, sc in enumerate(drawn):
        base = none.scenario(i)
        assert base["ego_program"] is None and every.scenario(i)["ego_program"] is not None
        assert {k: v for k, v in sc.items() if k != "ego_program"} == {k: v for k, v in base.items()
                                                                       if k != "ego_program"}
    assert 10 < sum(sc["ego_program"] is not None for sc in drawn) < 30
    with pytest.raises(ValueError, match="ego_program_fraction"):
        _synthetic(ego_program_fraction=1.5)


def test_programmed_drives_vary_their_speed():
    ds = _synthetic(ego_program_fraction=1.0, frames=40, height=16, width=32, fps=5.0)
    speeds = torch.stack([ds.sample(i)["ego_speed"] for i in range(2)])     # [2, 40]: 8 s each
    assert (speeds.amax(dim=1) - speeds.amin(dim=1)).gt(2.0).all()
