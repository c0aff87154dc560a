"""Test stand-ins for the training chain: the packaged tiny configs shrunk to seconds per stage
(narrow networks, 32x64 frames, two steps) as a config root (``--configs``), and a folder of
fixture dashcam videos (the suite never reads footage outside the repository)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HW = (32, 64)       # training frames: latents 8x16 with the tiny autoencoder's f = 4
HR_HW = (64, 128)   # upsampler frames (x4 of 16x32)

_DATA = {"height": HW[0], "width": HW[1], "batch_size": 2, "num_workers": 0, "samples_per_epoch": 8,
         "val_samples": 2}
_TRAINER = {"max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "limit_val_batches": 1, "val_check_interval": None,
            "check_val_every_n_epoch": 1, "accelerator": "cpu", "devices": 1, "precision": "32-true"}

_CHANGES: dict[str, dict] = {
    "autoencoder/tiny.yaml": {
        "model": {"autoencoder": {"init_args": {"base_channels": 16, "ch_mult": [1, 2], "latent_channels": 4}},
                  "train_crop": [16, 32], "scale_batches": 1, "disc_start": 1},
        "data": {"frames": 1}},
    "autoencoder/temporal_tiny.yaml": {"model": {"train_crop": [16, 32], "disc_start": 1}, "data": {"frames": 3}},
    "image_ldm/tiny.yaml": {
        "model": {"unet": {"init_args": {"in_channels": 4, "out_channels": 4, "channel_mult": [1, 2],
                                         "attention_resolutions": [2], "max_boxes": 4}},
                  "latent_size": [8, 16], "val_sample_steps": 2, "num_val_samples": 1},
        "data": {"max_boxes": 4}},
    "video_ldm/tiny.yaml": {
        "model": {"temporal_layers": {"max_frames": 4}, "latent_size": [8, 16], "val_sample_steps": 2,
                  "num_val_samples": 1},
        "data": {"frames": 4, "max_boxes": 4}},
    "video_ldm/interp_tiny.yaml": {
        "model": {"latent_size": [8, 16], "val_sample_steps": 2, "num_val_samples": 1},
        "data": {"max_boxes": 4}},
    "upsampler/tiny.yaml": {
        "model": {"patch_size": [32, 32], "val_sample_steps": 2, "num_val_samples": 1,
                  "upsampler": {"init_args": {"model_channels": 8, "channel_mult": [1, 2], "norm_groups": 4,
                                              "num_head_channels": 8, "context_channels": 8}}},
        "data": {"height": HR_HW[0], "width": HR_HW[1], "max_boxes": 4}},
}


def _merge(base: dict, change: dict) -> dict:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def write_micro_configs(root: Path, *, upsampler: bool = True) -> Path:
    """``root/{autoencoder,image_ldm,video_ldm,upsampler,trainer}/*.yaml``: the tiny stage configs
    shrunk (``_CHANGES``) with a two-step CPU trainer, and the packaged trainer configs."""
    shutil.copytree(REPO / "configs" / "trainer", root / "trainer", dirs_exist_ok=True)
    for rel, change in _CHANGES.items():
        if rel.startswith("upsampler") and not upsampler:
            continue
        doc = yaml.safe_load((REPO / "configs" / rel).read_text())
        _merge(doc["trainer"], _TRAINER)
        doc["trainer"]["callbacks"] = [c for c in doc["trainer"].get("callbacks", [])
                                       if not c["class_path"].endswith("WarmupEMA")]
        for cb in doc["trainer"]["callbacks"]:
            if cb["class_path"].endswith("ModelCheckpoint"):
                cb["init_args"]["every_n_train_steps"] = 1
        doc["trainer"].pop("max_time", None)
        _merge(doc["model"]["init_args"], {"warmup_steps": 1, **change.get("model", {})})
        _merge(doc["data"]["init_args"], {**_DATA, **change.get("data", {})})
        doc["data"]["init_args"].pop("frame_cache_mb", None)
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def write_videos(folder: Path, count: int = 2, *, frames: int = 60, fps: float = 10.0, hw: tuple[int, int] = (72, 128),
                 corrupt: int = 0) -> list[Path]:
    """``count`` short mp4 drives of the synthetic world (no labels) plus ``corrupt`` unreadable
    ``.mp4`` files: what a user's dashcam folder looks like to the chain."""
    from drivesim.data.video_io import VideoWriter
    from drivesim.data.world import DrivingWorld, WorldConfig

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"drive{seed}.mp4"
        world = DrivingWorld(WorldConfig(seed=seed, height=hw[0], width=hw[1], fps=fps))
        with VideoWriter(path, fps, preset="ultrafast") as writer:
            for _ in range(frames):
                writer.write(world.step().rgb)
        paths.append(path)
    for k in range(corrupt):
        bad = folder / f"broken{k}.mp4"
        bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
        paths.append(bad)
    return paths
