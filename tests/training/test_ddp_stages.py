"""Every training stage under DDP with 2 CPU processes (gloo), chained as in the demo:
autoencoder -> temporal decoder -> latent cache -> image LDM -> video LDM -> interpolation.

Per stage: the fit finishes, losses are finite (and fall, for the autoencoder), the two ranks never see the same
sample within an epoch (and together see all but < world_size of them), both ranks end with
bit-identical parameters and buffers after their steps (the autoencoder's latent statistics,
estimated by each rank on its own shard, only agree closely), and the model file written by
rank 0 loads in this single process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fit_harness import REPO, export_clips, read_records, write_config

pytestmark = pytest.mark.timeout(900)

HERE = Path(__file__).resolve().parent
UNET = {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [2], "num_head_channels": 16, "norm_groups": 8,
        "token_dim": 32, "max_boxes": 8}
AE = {"base_channels": 8, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1}   # the image stage's network
AE_TRAIN = {"disc_channels": 8, "disc_layers": 1, "scale_batches": 1}


def _fit(tmp: Path, name: str, config: str, model: dict, data: dict, max_steps: int,
         unet: dict | None = None, autoencoder: dict | None = None) -> Path:
    out = tmp / name
    if unet is not None:
        model = {**model, "unet": {"init_args": unet}}
    if autoencoder is not None:
        model = {**model, "autoencoder": {"init_args": autoencoder}}
    cfg = write_config(tmp / f"{name}.yaml", {
        "seed_everything": 0,
        "trainer": {"max_steps": max_steps, "max_epochs": 50, "max_time": None, "logger": False,
                    "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(out),
                    "callbacks": [
                        {"class_path": "drivesim.training.callbacks.FiniteLossGuard"},
                        {"class_path": "drivesim.training.callbacks.LossRecorder",
                         "init_args": {"path": str(out / "losses")}},
                        {"class_path": "ddp_probe.BatchProbe", "init_args": {"path": str(out / "probe")}},
                        {"class_path": "ddp_probe.WeightsProbe", "init_args": {"path": str(out / "weights")}},
                    ]},
        "model": {"init_args": {**model, "model_file": str(out / "model.safetensors")}},
        "data": {"init_args": {"height": 32, "width": 64, "num_workers": 0, "max_boxes": 8, **data}},
    })
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "drivesim.cli", "fit", "--config", str(REPO / config),
           "--config", str(REPO / "configs/trainer/ddp_cpu.yaml"), "--config", str(cfg)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return out


def _check_weights_identical(out: Path) -> None:
    """The replicas must not drift apart: same step, and the same digest for every parameter and
    every buffer on both ranks (the latent variance and scale factor are reduced across ranks)."""
    ranks = [json.loads((out / f"weights.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] > 0
    tensors = [r["tensors"] for r in ranks]
    assert tensors[0].keys() == tensors[1].keys() and ranks[0]["parameters"]
    differ = [k for k, v in tensors[0].items() if tensors[1][k] != v]
    params = set(ranks[0]["parameters"])
    assert not [k for k in differ if k in params], \
        f"{out.name}: parameters differ across ranks after {ranks[0]['step']} steps: {differ[:8]}"
    assert not differ, f"{out.name}: buffers differ across ranks: {differ[:8]}"


def _check_run(out: Path, dataset_size: int | None = None, batch_size: int = 1,
               falls: bool = False) -> None:
    _check_weights_identical(out)
    records = read_records(out / "losses")
    assert {r["rank"] for r in records} == {0, 1}
    losses = [r["loss"] for r in sorted(records, key=lambda r: r["step"]) if r["rank"] == 0]
    assert all(math.isfinite(v) for v in losses)
    if falls:  # the autoencoder's L1 falls reliably within a few steps; diffusion losses are noisy
        head, tail = losses[: max(1, len(losses) // 3)], losses[-max(1, len(losses) // 3):]
        assert sum(tail) / len(tail) < sum(head) / len(head), losses
    probes = [json.loads(line) for f in sorted(out.glob("probe.rank*.jsonl"))
              for line in f.read_text().splitlines()]
    for epoch in {p["epoch"] for p in probes}:
        by_rank = [[p["sample"] for p in probes if p["epoch"] == epoch and p["rank"] == r] for r in (0, 1)]
        assert not set(by_rank[0]) & set(by_rank[1]), f"epoch {epoch}: a sample on both ranks"
        assert len(by_rank[0]) == len(by_rank[1])  # ranks step together
        if dataset_size is not None and epoch == 0 and any(p["epoch"] == 1 for p in probes):
            # a full epoch: each rank gets n // 2 samples in whole batches, nothing else is lost
            per_rank = (dataset_size // 2) // batch_size * batch_size
            assert len(set(by_rank[0]) | set(by_rank[1])) == 2 * per_rank


def test_every_stage_under_ddp_gloo(tmp_path):
    from drivesim.data.datasets import ClipDataset
    from drivesim.models.autoencoder import load_autoencoder
    from drivesim.models.model_files import load_model_file

    data = export_clips(tmp_path / "clips", clips=4, seconds=2.0, fps=5.0)
    frames = len(ClipDataset(data, split="train", frames=1, height=32, width=64))
    clips = {"source": "clips", "root": str(data)}

    ae = _fit(tmp_path, "ae", "configs/autoencoder/tiny.yaml",
              {**AE_TRAIN, "disc_start": 20}, {**clips, "frames": 1, "batch_size": 2}, max_steps=20,
              autoencoder=AE)
    _check_run(ae, dataset_size=frames, batch_size=2, falls=True)
    assert load_autoencoder(ae / "model.safetensors").has_scale_factor()

    ae_t = _fit(tmp_path, "ae_t", "configs/autoencoder/temporal_tiny.yaml",
                {**AE_TRAIN, "disc_start": 100, "init_from": str(ae / "model.safetensors")},
                {**clips, "frames": 4, "batch_size": 1}, max_steps=6)
    _check_run(ae_t)
    assert load_autoencoder(ae_t / "model.safetensors").hparams["temporal_decoder"]

    latents = tmp_path / "latents"
    subprocess.run([sys.executable, "-m", "drivesim.cli", "data", "encode", "--ckpt",
                    str(ae_t / "model.safetensors"), "--data", str(data), "--out", str(latents),
                    "--no-progress"], check=True, cwd=REPO, capture_output=True)
    lat = {"source": "latents", "root": str(latents)}
    ldm_common = {"autoencoder_path": str(ae_t / "model.safetensors"), "latent_size": [4, 8],
                  "warmup_steps": 2, "lr": 1e-3, "num_val_samples": 0}

    img = _fit(tmp_path, "img", "configs/image_ldm/tiny.yaml", ldm_common,
               {**lat, "frames": 1, "batch_size": 4}, max_steps=12, unet=UNET)
    _check_run(img)
    hp, _ = load_model_file(img / "model.safetensors", "ldm")
    assert hp["stage"] == "image"

    # the video stages take the spatial UNet from the image model file and state only the temporal layers
    layers = {"max_frames": 4, "use_context": True, "context_channels": 8}
    vid = _fit(tmp_path, "vid", "configs/video_ldm/tiny.yaml",
               {**ldm_common, "init_from": str(img / "model.safetensors"), "temporal_layers": layers},
               {**lat, "frames": 4, "fps": 5.0, "batch_size": 2}, max_steps=8)
    _check_run(vid)
    assert load_model_file(vid / "model.safetensors", "ldm")[0]["stage"] == "video"

    interp = _fit(tmp_path, "interp", "configs/video_ldm/interp_tiny.yaml",
                  {**ldm_common, "init_from": str(img / "model.safetensors"),
                   "temporal_layers": {**layers, "max_frames": 5, "num_regimes": 2}},
                  {**lat, "frames": 5, "fps": 5.0, "batch_size": 2}, max_steps=6)
    _check_run(interp)
    assert load_model_file(interp / "model.safetensors", "ldm")[0]["stage"] == "interpolation"
