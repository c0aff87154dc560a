"""`drivesim data encode` + LatentClipDataset: round trip against direct encoding, resume, errors."""

import numpy as np
import pytest
import torch

from drivesim.cli import main
from drivesim.data import latent_cache
from drivesim.data.clip_format import ClipWriter, manifest_entry, read_clip, write_manifest
from drivesim.data.datasets import ClipDataset, to_video_tensor
from drivesim.data.latents import LatentClipDataset
from drivesim.models.autoencoder import AutoencoderKL
from drivesim.models.model_files import save_model_file
from drivesim.tools.encode import encode_with_autoencoder as encode_dataset
from drivesim.utils.io import DriveSimInputError

H, W = 16, 32


def _write_dataset(root, generator: np.random.Generator) -> None:
    entries = []
    for i, (split, n) in enumerate([("train", 7), ("train", 6), ("val", 5)]):
        clip_dir = root / f"clip{i}"
        with ClipWriter(clip_dir, fps=10.0, height=H, width=W, labels={"daynight": "night" if i else "day"},
                        frames_format="png") as writer:
            for t in range(n):
                x0 = 0.1 + 0.05 * t
                ego = dict(ego_speed=2.0 * t, ego_yaw_rate=0.01 * t) if i == 0 else {}  # clip0 knows its motion
                writer.add_frame(generator.integers(0, 256, (H, W, 3), dtype=np.uint8),
                                 boxes=np.array([[x0, 0.2, x0 + 0.3, 0.6], [0.5, 0.5, 0.9, 0.9]][: 1 + t % 2]),
                                 classes=np.array([1, 3][: 1 + t % 2]), track_ids=np.array([1, 2][: 1 + t % 2]),
                                 **ego)
        entries.append(manifest_entry(read_clip(clip_dir), root, split))
    write_manifest(root, entries)


def _model_file(path, seed: int = 0, scale: float = 0.5):
    torch.manual_seed(seed)
    ae = AutoencoderKL(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=4, scale_factor=scale)
    return save_model_file(path, "autoencoder", ae.hparams, ae.state_dict()), ae.eval()


@pytest.fixture
def dataset(tmp_path):
    _write_dataset(tmp_path / "clips", np.random.default_rng(0))
    return tmp_path / "clips"


def test_round_trip_matches_direct_encoding_and_clip_windows(tmp_path, dataset):
    ckpt, ae = _model_file(tmp_path / "ae.safetensors")
    stats = encode_dataset(ckpt, dataset, tmp_path / "lat", clips_per_shard=2, batch_frames=4, progress=False)
    assert stats == {"clips": 3, "shards_written": 2, "shards_skipped": 0, "complete": True}
    lat = LatentClipDataset(tmp_path / "lat", split="train", frames=3, fps=5.0, max_boxes=4, sample=False)
    ref = ClipDataset(dataset, split="train", frames=3, fps=5.0, height=H, width=W, max_boxes=4)
    assert len(lat) == len(ref) > 0
    for i in range(len(lat)):
        got, want = lat[i], ref[i]
        assert got["clip_id"] == want["clip_id"]
        with torch.no_grad():
            direct = ae.encode_latents(want["video"][None])[0]  # [T, C, h, w], posterior mean * scale
        assert got["latents"].shape == (3, 4, H // 2, W // 2)
        torch.testing.assert_close(got["latents"], direct, atol=1e-5, rtol=1e-5)
        for key in ("boxes", "box_classes", "box_ids", "daynight", "crowd", "fps", "ego_speed", "ego_yaw_rate",
                    "ego_known"):
            torch.testing.assert_close(got[key], want[key], msg=key)
    assert any(lat[i]["ego_known"].all() for i in range(len(lat)))  # clip0's motion came through
    assert any(not lat[i]["ego_known"].any() for i in range(len(lat)))  # clip1's is unknown


def test_caches_written_without_ego_motion_read_as_unknown(tmp_path, dataset):
    from safetensors.torch import load_file, save_file

    ckpt, _ = _model_file(tmp_path / "ae.pt")
    encode_dataset(ckpt, dataset, tmp_path / "lat", progress=False)
    shard = tmp_path / "lat" / "shard-00000.safetensors"
    tensors = {k: v for k, v in load_file(str(shard)).items() if ".ego_" not in k}  # as before ego labels
    save_file(tensors, str(shard))
    sample = LatentClipDataset(tmp_path / "lat", split="train", frames=3, sample=False)[0]
    assert sample["ego_known"].dtype == torch.bool and not sample["ego_known"].any()
    assert sample["ego_speed"].shape == (3,) and sample["ego_speed"].eq(0).all()


def test_sampled_latents_are_seeded_and_fresh_per_epoch(tmp_path, dataset):
    ckpt, ae = _model_file(tmp_path / "ae.pt")
    encode_dataset(ckpt, dataset, tmp_path / "lat", progress=False)
    a, b = (LatentClipDataset(tmp_path / "lat", split="val", frames=2, seed=7) for _ in range(2))
    first, again = a[0]["latents"], a[0]["latents"]
    assert torch.equal(first, b[0]["latents"])           # same seed, same latents
    assert torch.equal(first, again)                      # same epoch: a pure function of (seed, index, epoch)
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["latents"])        # a new epoch draws new noise
    b.set_epoch(1)
    assert torch.equal(a[0]["latents"], b[0]["latents"])  # ...the same one after a resume
    clip = read_clip(dataset / "clip2")
    with torch.no_grad():
        post = ae.encode(to_video_tensor(clip.frames([0, 1]))[None])
    eps = (first / 0.5 - post.mean[0]) / post.std[0]      # recover the noise: z = mean + std * eps
    assert abs(float(eps.mean())) < 0.2 and 0.8 < float(eps.std()) < 1.2


def test_resume_skips_finished_shards_and_interruptions_leave_no_manifest(tmp_path, dataset, monkeypatch):
    ckpt, _ = _model_file(tmp_path / "ae.pt")
    out = tmp_path / "lat"
    real = latent_cache._encode_clip
    calls = []

    def failing(ae, clip_dir, *args):
        calls.append(clip_dir.name)
        if clip_dir.name == "clip2":
            raise KeyboardInterrupt  # killed while encoding the second shard
        return real(ae, clip_dir, *args)

    monkeypatch.setattr(latent_cache, "_encode_clip", failing)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(ckpt, dataset, out, clips_per_shard=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["latents.json", "shard-00000.safetensors"]  # nothing partial
    with pytest.raises(DriveSimInputError, match="incomplete latent cache"):
        LatentClipDataset(out)
    first_shard = (out / "shard-00000.safetensors").read_bytes()
    monkeypatch.setattr(latent_cache, "_encode_clip", real)
    stats = encode_dataset(ckpt, dataset, out, clips_per_shard=2, progress=False)
    assert (stats["shards_written"], stats["shards_skipped"]) == (1, 1)
    assert (out / "shard-00000.safetensors").read_bytes() == first_shard
    assert len(LatentClipDataset(out, frames=2)) > 0
    assert encode_dataset(ckpt, dataset, out, clips_per_shard=2, progress=False)["shards_written"] == 0


def test_other_autoencoder_needs_overwrite_and_cli(tmp_path, dataset):
    ckpt, _ = _model_file(tmp_path / "ae.pt")
    out = tmp_path / "lat"
    assert main(["data", "encode", "--ckpt", str(ckpt), "--data", str(dataset), "--out", str(out),
                 "--no-progress"]) == 0
    other, _ = _model_file(tmp_path / "other.pt", seed=1)
    with pytest.raises(DriveSimInputError, match="ae_hash"):
        encode_dataset(other, dataset, out, progress=False)
    assert encode_dataset(other, dataset, out, overwrite=True, progress=False)["shards_written"] == 1
    no_scale, _ = _model_file(tmp_path / "noscale.pt", scale=None)
    with pytest.raises(DriveSimInputError, match="scale factor was never estimated"):
        encode_dataset(no_scale, dataset, tmp_path / "lat2", progress=False)
    with pytest.raises(DriveSimInputError, match="not divisible"):
        encode_dataset(ckpt, dataset, tmp_path / "lat3", size=(15, 32), progress=False)


def test_datamodule_latents_source(tmp_path, dataset):
    from drivesim.data.datamodule import DriveDataModule

    ckpt, _ = _model_file(tmp_path / "ae.pt")
    encode_dataset(ckpt, dataset, tmp_path / "lat", progress=False)
    dm = DriveDataModule(source="latents", root=str(tmp_path / "lat"), frames=2, fps=None, batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (2, 2, 4, H // 2, W // 2) and "video" not in batch
    assert batch["boxes"].shape == (2, 2, 16, 4) and len(batch["clip_id"]) == 2
