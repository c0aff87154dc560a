"""AutoencoderModule: short fits of both stages, model files, checkpoints, loss pieces, errors."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from drivesim.models.autoencoder import AutoencoderKL, load_autoencoder
from drivesim.models.model_files import save_model_file
from drivesim.training import checkpoints
from drivesim.training.autoencoder_module import (
    AutoencoderModule,
    adaptive_weight,
    flicker,
    flicker_split,
)
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


def test_spatial_lr_scale_puts_the_spatial_decoder_in_its_own_lr_group(tmp_path):
    _fit_image(tmp_path, steps=2)
    module = AutoencoderModule(stage="temporal", init_from=str(tmp_path / "image.safetensors"),
                               spatial_lr_scale=0.1, **SMALL)
    opt_ae, _ = module.configure_optimizers()
    temporal_ids = {id(p) for p in module.autoencoder.temporal_parameters()}
    fast, slow = opt_ae.param_groups
    assert fast["lr"] == pytest.approx(SMALL["learning_rate"])
    assert slow["lr"] == pytest.approx(SMALL["learning_rate"] * 0.1)
    assert {id(p) for p in fast["params"]} == temporal_ids
    decoder_ids = {id(p) for p in module.autoencoder.decoder.parameters()} | {
        id(p) for p in module.autoencoder.post_quant_conv.parameters()}
    assert {id(p) for p in slow["params"]} == decoder_ids - temporal_ids  # the frozen encoder is in neither
    # the budget schedule scales each group from its own base lr
    module._apply_lr_schedule(opt_ae)
    assert slow["lr"] / fast["lr"] == pytest.approx(0.1)
    # frozen spatial decoder: the scale has nothing to act on, one group of temporal parameters
    frozen = AutoencoderModule(stage="temporal", init_from=str(tmp_path / "image.safetensors"),
                               spatial_lr_scale=0.1, freeze_spatial_decoder=True, **SMALL)
    (only,) = frozen.configure_optimizers()[0].param_groups
    assert {id(p) for p in only["params"]} == {id(p) for p in frozen.autoencoder.temporal_parameters()}
    with pytest.raises(DriveSimInputError, match="spatial_lr_scale"):
        AutoencoderModule(stage="temporal", init_from=str(tmp_path / "image.safetensors"), spatial_lr_scale=-1.0)


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


def test_flicker_split_separates_static_from_moving_pixels():
    x = torch.full((1, 3, 3, 4, 4), 0.5)
    x[:, 1:, :, :, 2:] = 0.9           # right half changes by 0.4 between frames 0 and 1, then stays
    recon = x.clone()
    recon[:, 1, :, :, :2] += 0.1        # frame 1 off by 0.1 on the static left half: the decoder's flicker
    static, moving, frac = flicker_split(recon, x, threshold=0.03)
    # pairs (0,1) and (1,2): moving = the right half of pair (0,1) only, 1/4 of the pixels
    assert float(frac) == pytest.approx(0.25)
    assert float(moving) == pytest.approx(0.0, abs=1e-6)
    assert float(static) == pytest.approx(0.1 * 2 / 3, rel=1e-4)   # 16 of 24 static pixel-pairs are off by 0.1
    assert torch.isnan(flicker_split(x, x, threshold=1.0)[1])     # nothing moves: NaN, not 0
    with pytest.raises(ValueError, match="flicker_split"):
        flicker_split(x[:, :1], x[:, :1])


def test_fit_on_the_synthetic_world_lowers_the_loss(tmp_path):
    from drivesim.data.datamodule import DriveDataModule

    dm = DriveDataModule(source="synthetic", frames=1, fps=10.0, height=16, width=32, batch_size=4,
                         samples_per_epoch=32, val_samples=8, seed=0)
    dm.setup("fit")
    held_out = list(dm.val_dataloader())
    torch.manual_seed(0)  # the initial weights: the test's outcome must not depend on the tests before it
    module = AutoencoderModule(stage="image", disc_start=1000, model_file=str(tmp_path / "ae.safetensors"), **SMALL)
    before = _l1(module.autoencoder.eval(), held_out)
    module.autoencoder.train()
    _trainer(tmp_path, 48).fit(module, datamodule=dm)
    after = _l1(module.autoencoder.eval(), held_out)
    assert after < 0.85 * before, (before, after)  # 48 steps: passes for init seeds 0-5 (24 steps failed ~1 in 10)
    assert load_autoencoder(tmp_path / "ae.safetensors").has_scale_factor()


def test_train_crop_is_one_seeded_window_per_batch_and_is_checked():
    module = AutoencoderModule(stage="image", train_crop=[8, 8], **SMALL)
    x = torch.arange(2 * 1 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 1, 3, 16, 16)
    a, b = module._random_crop(x), module._random_crop(x)
    assert a.shape == (2, 1, 3, 8, 8) and a.is_contiguous() and torch.equal(a, b)  # same step, same window
    top, left = divmod(int(a[0, 0, 0, 0, 0]), 16)
    assert torch.equal(a, x[..., top:top + 8, left:left + 8])  # every clip gets the same window
    module.train_steps += 1
    windows = set()
    for _ in range(20):
        windows.add(int(module._random_crop(x)[0, 0, 0, 0, 0]))
        module.train_steps += 1
    assert len(windows) > 5  # the window moves from step to step
    assert torch.equal(AutoencoderModule(stage="image", **SMALL)._random_crop(x), x)  # no crop configured
    with pytest.raises(DriveSimInputError, match="train_crop"):
        AutoencoderModule(stage="image", train_crop=[7, 8], **SMALL)  # not a multiple of f = 2
    with pytest.raises(DriveSimInputError, match="larger than the frames"):
        AutoencoderModule(stage="image", train_crop=[32, 32], **SMALL)._random_crop(x)


def test_budget_schedule_decays_both_optimizers_to_the_floor(tmp_path):
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    module = AutoencoderModule(stage="image", disc_start=100, warmup_steps=2, lr_decay_fraction=0.5,
                               train_crop=[8, 8], model_file=str(tmp_path / "a.safetensors"), **SMALL)
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append([g["lr"] for opt in pl_module.optimizers() for g in opt.optimizer.param_groups])

    _trainer(tmp_path, 20, callbacks=[Probe()]).fit(module, train_dataloaders=loader)
    lr = SMALL["learning_rate"]
    assert seen[0] == pytest.approx([0.5 * lr, 0.5 * lr])          # warm-up: (0 + 1) / 2
    assert seen[3] == pytest.approx([lr, lr])                      # full rate before the decay
    # decay over the last half of max_steps = 20: at the last batch (global step 19) 1 / 20 / 0.5
    assert seen[-1] == pytest.approx([0.1 * lr, 0.1 * lr])
    assert len(seen) == 20


def test_flicker_weight_adds_the_frame_difference_penalty(tmp_path):
    image, _ = _fit_image(tmp_path, steps=2)
    x = next(iter(DataLoader(_Clips(2, 4, seed=2), batch_size=2)))["video"]
    losses = {}
    for w in (0.0, 2.0):
        module = AutoencoderModule(stage="temporal", init_from=str(tmp_path / "image.safetensors"),
                                   flicker_weight=w, **SMALL)
        loss, recon, logs = module._generator_losses(x)
        losses[w] = (float(loss), logs)
    diff = ((recon[:, 1:] - recon[:, :-1]) - (x[:, 1:] - x[:, :-1])).abs().sum() / (2 * 3)
    assert "flicker_loss" not in losses[0.0][1]
    assert float(losses[2.0][1]["flicker_loss"]) == pytest.approx(float(diff), rel=1e-3)
    # same posterior sample (step generator), so the totals differ by exactly the penalty
    assert losses[2.0][0] - losses[0.0][0] == pytest.approx(2.0 * float(diff), rel=1e-3)
    with pytest.raises(DriveSimInputError, match="flicker_weight"):
        AutoencoderModule(stage="image", flicker_weight=-1.0, **SMALL)


def test_uniform_latent_noise_draws_one_level_per_sample():
    module = AutoencoderModule(stage="image", latent_noise=0.4, latent_noise_mode="uniform", **SMALL)
    z = torch.randn(64, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5.0
    noise = module._noisy_latents(z, torch.Generator().manual_seed(1)) - z
    level = noise.std(dim=(1, 2, 3, 4)) / z.std()  # per sample: its level s in units of the latent std
    assert float(level.min()) < 0.05 and 0.35 < float(level.max()) < 0.42  # spans U(0, 0.4)
    assert float(level.mean()) == pytest.approx(0.2, abs=0.04)
    # one level per sample: both frames and all channels of a sample share it
    per_frame = noise.std(dim=(2, 3, 4)) / z.std()
    torch.testing.assert_close(per_frame[:, 0], per_frame[:, 1], rtol=0.15, atol=0.01)


def test_latent_noise_perturbs_only_the_decoder_input_in_training(tmp_path):
    x = next(iter(DataLoader(_Clips(4, 1), batch_size=4)))["video"]
    z = torch.randn(4, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3.0
    plain = AutoencoderModule(stage="image", **SMALL)
    assert plain._noisy_latents(z, torch.Generator().manual_seed(1)) is z
    noisy = AutoencoderModule(stage="image", latent_noise=0.5, **SMALL)
    out = noisy._noisy_latents(z, torch.Generator().manual_seed(1))
    assert float((out - z).std() / z.std()) == pytest.approx(0.5, rel=0.1)  # relative to the latents' scale
    # relative to each channel's own scale: a small channel is not drowned by a large one's std
    scales = torch.tensor([0.1, 1.0, 10.0, 40.0]).view(1, 1, 4, 1, 1)
    zc = torch.randn(8, 1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * scales
    noise = noisy._noisy_latents(zc, torch.Generator().manual_seed(3)) - zc
    ratio = noise.std(dim=(0, 1, 3, 4)) / zc.std(dim=(0, 1, 3, 4))
    torch.testing.assert_close(ratio, torch.full((4,), 0.5), rtol=0.1, atol=0.0)
    assert torch.equal(out, noisy._noisy_latents(z, torch.Generator().manual_seed(1)))  # seeded
    with pytest.raises(DriveSimInputError, match="latent_noise"):
        AutoencoderModule(stage="image", latent_noise=-0.1, **SMALL)
    with pytest.raises(DriveSimInputError, match="latent_noise_mode"):
        AutoencoderModule(stage="image", latent_noise=0.5, latent_noise_mode="gaussian", **SMALL)
    # validation reconstructs from the posterior mean, without the augmentation
    noisy.autoencoder.eval()
    with torch.no_grad():  # as Lightning runs validation (and the CPU inference layout with it)
        x_val, recon = noisy._common_step({"video": x}, "val")
        ref = noisy.autoencoder.decode(noisy.autoencoder.encode(x).mode()).clamp(-1, 1)
    assert torch.equal(recon, ref)


def test_l2_weight_adds_the_squared_error():
    x = next(iter(DataLoader(_Clips(2, 1), batch_size=2)))["video"]
    recon = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    plain = AutoencoderModule(stage="image", **SMALL)._rec_loss(x, recon)
    both = AutoencoderModule(stage="image", l2_weight=2.0, **SMALL)._rec_loss(x, recon)
    frames = x.shape[0] * x.shape[1]
    assert float(plain) == pytest.approx(float((x - recon).abs().sum() / frames), rel=1e-5)
    assert float(both - plain) == pytest.approx(float(2.0 * (x - recon).pow(2).sum() / frames), rel=1e-4)
    with pytest.raises(DriveSimInputError, match="l2_weight"):
        AutoencoderModule(stage="image", l2_weight=-1.0, **SMALL)


def test_bf16_mixed_fit_learns_and_keeps_losses_and_metrics_in_float32(tmp_path):
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    module = AutoencoderModule(stage="image", disc_start=10, latent_noise=0.1,
                               model_file=str(tmp_path / "bf16.safetensors"), **SMALL)
    before = _l1(module.autoencoder, loader)
    _trainer(tmp_path, 40, precision="bf16-mixed").fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert _l1(module.autoencoder, loader) < 0.8 * before  # it trains (GAN on from step 10)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    x = loader.dataset[0]["video"][None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posterior = module.autoencoder.encode(x)
        loss, recon, _ = module._generator_losses(x)
    assert posterior.mean.dtype == torch.bfloat16  # autocast is really on
    assert posterior.kl().dtype == loss.dtype == recon.dtype == torch.float32
    # validation under bf16 scores what float32 scores (the metrics see float32 frames)
    psnr = {prec: _trainer(tmp_path, 1, precision=prec).validate(module, loader, verbose=False)[0]["val/psnr"]
            for prec in ("bf16-mixed", "32-true")}
    assert psnr["bf16-mixed"] == pytest.approx(psnr["32-true"], abs=0.3)
    assert load_autoencoder(tmp_path / "bf16.safetensors").scale_factor.dtype == torch.float32
