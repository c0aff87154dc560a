"""AutoencoderModule: short fits of both stages, model files, checkpoints, loss pieces, errors."""

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Dataset

from drivesim.models.autoencoder import AutoencoderKL, load_autoencoder
from drivesim.models.model_files import save_model_file
from drivesim.training import checkpoints
from drivesim.training.autoencoder_module import AutoencoderModule, adaptive_weight, flicker
from drivesim.utils.io import DriveSimInputError

SMALL = dict(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=4, disc_channels=8,
             disc_layers=2, learning_rate=2e-3, scale_batches=2)


class _Clips(Dataset):
    """Smooth moving blobs: ``video [T, 3, 16, 16]`` in [-1, 1] (batch-contract keys used by the module)."""

    def __init__(self, n: int, frames: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
        self.items = []
        for _ in range(n):
            c, v, col = torch.rand(2, generator=g), (torch.rand(2, generator=g) - 0.5) * 0.1, torch.rand(3, 1, 1,
                                                                                                        generator=g)
            frames_ = []
            for t in range(frames):
                cy, cx = (c + v * t).tolist()
                blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
                frames_.append(col * blob + (1 - col) * xx * 0.5)
            self.items.append(torch.stack(frames_) * 2 - 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.items[i]}


def _trainer(tmp_path, steps: int, **kw) -> Trainer:
    return Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                   limit_val_batches=1, num_sanity_val_steps=0, **kw)


def _l1(ae: AutoencoderKL, loader: DataLoader) -> float:
    with torch.no_grad():
        return float(sum((ae.decode(ae.encode(b["video"]).mode()) - b["video"]).abs().mean() for b in loader))


def _fit_image(tmp_path, steps: int = 40) -> tuple[AutoencoderModule, DataLoader]:
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    module = AutoencoderModule(stage="image", disc_start=10, model_file=str(tmp_path / "image.safetensors"), **SMALL)
    _trainer(tmp_path, steps).fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return module, loader


def test_image_stage_fit_lowers_loss_and_writes_model_file(tmp_path):
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    before = _l1(AutoencoderModule(stage="image", **SMALL).autoencoder.eval(), loader)
    module, loader = _fit_image(tmp_path)
    assert int(module.train_steps) > 10  # the GAN branch (disc_start=10) ran too
    after = _l1(module.autoencoder.eval(), loader)
    assert after < 0.6 * before, (before, after)
    loaded = load_autoencoder(tmp_path / "image.safetensors")
    assert loaded.has_scale_factor() and torch.equal(loaded.scale_factor, module.autoencoder.scale_factor)
    x = next(iter(loader))["video"]
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x).mode()), module.autoencoder.decode(module.autoencoder.encode(x).mode()))
    with pytest.raises(FileExistsError):  # a second fit refuses to overwrite the model file
        _fit_image(tmp_path, steps=1)


def test_temporal_stage_starts_as_the_image_decoder_and_freezes_the_encoder(tmp_path):
    image, _ = _fit_image(tmp_path, steps=6)
    temporal = AutoencoderModule(stage="temporal", init_from=str(tmp_path / "image.safetensors"), disc_start=2,
                                 model_file=str(tmp_path / "temporal.safetensors"), **SMALL)
    clips = DataLoader(_Clips(4, 5, seed=1), batch_size=2)
    x = next(iter(clips))["video"]
    with torch.no_grad():
        ref = image.autoencoder.eval().decode(image.autoencoder.encode(x).mode())
        out = temporal.autoencoder.eval().decode(temporal.autoencoder.encode(x).mode())
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    encoder_before = {k: v.clone() for k, v in temporal.autoencoder.encoder.state_dict().items()}
    mix_before = temporal.autoencoder.decoder.temporal_mixes()[0].block.conv2.weight.clone()
    temporal.autoencoder.train()
    _trainer(tmp_path, 8).fit(temporal, train_dataloaders=clips, val_dataloaders=clips)
    for k, v in temporal.autoencoder.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k
    assert not torch.equal(temporal.autoencoder.decoder.temporal_mixes()[0].block.conv2.weight, mix_before)
    loaded = load_autoencoder(tmp_path / "temporal.safetensors")
    assert loaded.hparams["temporal_decoder"]
    # the frozen encoder keeps the image stage's scale factor, so cached latents stay valid
    assert float(loaded.scale_factor) == float(image.autoencoder.scale_factor)


def test_freeze_spatial_decoder_trains_only_temporal_layers(tmp_path):
    _fit_image(tmp_path, steps=2)
    module = AutoencoderModule(stage="temporal", init_from=str(tmp_path / "image.safetensors"),
                               freeze_spatial_decoder=True, **SMALL)
    trainable = {n for n, p in module.autoencoder.named_parameters() if p.requires_grad}
    assert trainable and all("temporal" in n for n in trainable)
    assert module._adaptive_layer() is module.autoencoder.decoder.temporal_mixes()[-1].block.conv2.weight


def test_lightning_checkpoint_is_a_model_file(tmp_path):
    loader = DataLoader(_Clips(4, 1), batch_size=2)
    module = AutoencoderModule(stage="image", model_file=str(tmp_path / "a.safetensors"), **SMALL)
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module, train_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = load_autoencoder(tmp_path / "last.ckpt")  # hparams + scale factor travel in the .ckpt
    assert loaded.hparams == module.autoencoder.hparams and loaded.has_scale_factor()
    for k, v in module.autoencoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert checkpoints.main([str(tmp_path / "last.ckpt"), str(tmp_path / "e.safetensors"), "--kind", "autoencoder"]) == 0
    exported = load_autoencoder(tmp_path / "e.safetensors")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in loaded.state_dict().items())
    with pytest.raises(DriveSimInputError, match="expected 'unet'"):
        checkpoints.export_model_file(tmp_path / "last.ckpt", tmp_path / "u.pt", "unet")


def test_constructor_errors(tmp_path):
    with pytest.raises(DriveSimInputError, match="stage"):
        AutoencoderModule(stage="video")
    with pytest.raises(DriveSimInputError, match="init_from"):
        AutoencoderModule(stage="temporal")
    with pytest.raises(DriveSimInputError, match="LPIPS weights file not found"):
        AutoencoderModule(lpips_path=str(tmp_path / "vgg.pt"), **SMALL)
    save_model_file(tmp_path / "unet.pt", "unet", {}, {"w": torch.zeros(1)})
    with pytest.raises(DriveSimInputError, match="expected 'autoencoder'"):
        AutoencoderModule(stage="temporal", init_from=str(tmp_path / "unet.pt"), **SMALL)
    ae = AutoencoderKL(base_channels=16, ch_mult=(1, 2), num_res_blocks=1)
    save_model_file(tmp_path / "wide.pt", "autoencoder", ae.hparams, ae.state_dict())
    with pytest.raises(DriveSimInputError, match="base_channels=16"):
        AutoencoderModule(stage="temporal", init_from=str(tmp_path / "wide.pt"), **SMALL)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.ones(3, requires_grad=True)
    rec, gan = (2.0 * w).sum(), (0.5 * w).sum()  # gradients 2 and 0.5 everywhere -> ratio 4
    assert float(adaptive_weight(rec, gan, w)) == pytest.approx(4.0, rel=1e-3)


def test_flicker_metric(generator):
    x = torch.rand(2, 4, 3, 8, 8, generator=generator)
    assert float(flicker(x + 0.3, x)) == pytest.approx(0.0, abs=1e-6)  # a constant error does not flicker
    noisy = x.clone()
    noisy[:, 1] += 0.1  # one frame off by 0.1: differences 1->0 and 1->2 both off by 0.1
    assert float(flicker(noisy, x)) == pytest.approx(0.1 * 2 / 3, rel=1e-4)


def test_fit_on_the_synthetic_world_lowers_the_loss(tmp_path):
    from drivesim.data.datamodule import DriveDataModule

    dm = DriveDataModule(source="synthetic", frames=1, fps=10.0, height=16, width=32, batch_size=4,
                         samples_per_epoch=32, val_samples=8, seed=0)
    dm.setup("fit")
    held_out = list(dm.val_dataloader())
    module = AutoencoderModule(stage="image", disc_start=1000, model_file=str(tmp_path / "ae.safetensors"), **SMALL)
    before = _l1(module.autoencoder.eval(), held_out)
    module.autoencoder.train()
    _trainer(tmp_path, 24).fit(module, datamodule=dm)
    after = _l1(module.autoencoder.eval(), held_out)
    assert after < 0.85 * before, (before, after)  # measured 0.90 -> 0.64 after 24 steps
    assert load_autoencoder(tmp_path / "ae.safetensors").has_scale_factor()
