"""`drivesim sample`: PNGs from a checkpoint for JSON or synthetic boxes; bad input; overwrite."""

import json

import cv2
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from drivesim.cli import main
from drivesim.models.autoencoder import MODEL_KIND, AutoencoderKL
from drivesim.models.model_files import save_model_file
from drivesim.models.unet import UNet
from drivesim.training.diffusion_module import LatentDiffusionModule
from drivesim.utils.io import DriveSimInputError

TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=8, norm_groups=8, token_dim=16, max_boxes=4, box_fourier_freqs=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    ae = AutoencoderKL(base_channels=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
    ae.set_scale_factor(0.5)
    ae_path = save_model_file(tmp / "ae.pt", MODEL_KIND, ae.hparams, ae.state_dict())
    module = LatentDiffusionModule(UNet(**TINY), autoencoder_path=str(ae_path), num_val_samples=0)
    batch = [{"latents": torch.randn(1, 4, 8, 16), "daynight": torch.tensor(0),
              "crowd": torch.tensor(1), "boxes": torch.tensor([[[0.1, 0.2, 0.4, 0.6]]]),
              "box_classes": torch.tensor([[1]]), "box_ids": torch.tensor([[1]])}] * 2
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
    trainer.fit(module, DataLoader(batch, batch_size=2))
    trainer.save_checkpoint(tmp / "image.ckpt")
    return tmp / "image.ckpt"


def test_sample_from_json_boxes(ckpt, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"frames": [{"boxes": [[0.1, 0.5, 0.3, 0.8], [0.6, 0.5, 0.9, 0.9]],
                                              "classes": ["car", "truck"]}]}))
    out = tmp_path / "out"
    argv = ["sample", "--ckpt", str(ckpt), "--boxes", str(boxes), "--n", "3", "--steps", "2",
            "--batch-size", "2", "--daynight", "night", "--draw-boxes", "--out", str(out)]
    assert main(argv) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["sample_000.png", "sample_000_boxes.png", "sample_001.png",
                     "sample_001_boxes.png", "sample_002.png", "sample_002_boxes.png"]
    img = cv2.imread(str(out / "sample_000.png"))
    assert img.shape == (64, 128, 3)
    meta = json.loads((out / "samples.json").read_text())
    assert meta["daynight"] == "night" and len(meta["files"]) == 3
    first = cv2.imread(str(out / "sample_000.png"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(argv + ["--debug"])
    assert main(argv + ["--overwrite"]) == 0  # same seed, same images
    assert (cv2.imread(str(out / "sample_000.png")) == first).all()


def test_sample_from_synthetic_world(ckpt, tmp_path):
    out = tmp_path / "syn"
    assert main(["sample", "--ckpt", str(ckpt), "--synthetic", "3", "--n", "2", "--steps", "2",
                 "--frames", "2", "--sampler", "dpmpp_2m", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "sample_000_f00.png", "sample_000_f01.png", "sample_001_f00.png", "sample_001_f01.png"]


@pytest.mark.parametrize("frames,match", [
    ([{"boxes": [[0.1, 0.2, float("nan"), 0.5]]}], "NaN"),
    ([{"boxes": [[0.1, 0.2, 1.7, 0.5]]}], "normalised"),
    ([{"boxes": [[0.1, 0.2, 0.3, 0.5]], "classes": ["spaceship"]}], "classes"),
    ([], "at least one frame")])
def test_bad_boxes_json(ckpt, tmp_path, frames, match):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"frames": frames}))
    with pytest.raises(DriveSimInputError, match=match) as err:
        main(["sample", "--ckpt", str(ckpt), "--boxes", str(boxes), "--out", str(tmp_path / "o"), "--debug"])
    assert "boxes.json" in str(err.value)


def test_exported_model_file_samples_the_same_images_as_the_checkpoint(ckpt, tmp_path):
    from drivesim.training.checkpoints import export_model_file

    model_file = export_model_file(ckpt, tmp_path / "image.safetensors", "ldm")
    ae = str(ckpt.parent / "ae.pt")
    base = ["sample", "--synthetic", "3", "--n", "2", "--steps", "2", "--autoencoder", ae]
    assert main([*base, "--ckpt", str(ckpt), "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--ckpt", str(model_file), "--out", str(tmp_path / "b")]) == 0
    for name in ("sample_000.png", "sample_001.png"):
        assert (cv2.imread(str(tmp_path / "a" / name)) == cv2.imread(str(tmp_path / "b" / name))).all()
