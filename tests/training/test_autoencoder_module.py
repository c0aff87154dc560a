"""AutoencoderModule: short fits of both stages, the network from the config or the init file, model
files, checkpoints, the loss values on a fixed batch, errors."""

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from drivesim.models.autoencoder import AutoencoderKL, load_autoencoder
from drivesim.models.discriminators import hinge_d_loss
from drivesim.models.lpips import LPIPS
from drivesim.models.model_files import save_model_file
from drivesim.training import autoencoder_module, checkpoints
from drivesim.training.autoencoder_module import AutoencoderModule
from drivesim.utils.io import DriveSimInputError

DIMS = dict(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=4)
TRAIN = dict(disc_channels=8, disc_layers=2, learning_rate=2e-3, scale_batches=2)


def small_ae(**kw) -> AutoencoderKL:
    return AutoencoderKL(**{**DIMS, **kw})


def image_module(**kw) -> AutoencoderModule:
    return AutoencoderModule(autoencoder=small_ae(), stage="image", **{**TRAIN, **kw})


def temporal_module(init_from, **kw) -> AutoencoderModule:
    return AutoencoderModule(stage="temporal", init_from=str(init_from), **{**TRAIN, **kw})


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
    module = image_module(disc_start=10, model_file=str(tmp_path / "image.safetensors"))
    _trainer(tmp_path, steps).fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return module, loader


def test_image_stage_fit_lowers_loss_and_writes_model_file(tmp_path):
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    before = _l1(image_module().autoencoder.eval(), loader)
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
    temporal = temporal_module(tmp_path / "image.safetensors", disc_start=2,
                               model_file=str(tmp_path / "temporal.safetensors"))
    # the architecture is the init file's, plus the temporal decoder
    assert temporal.autoencoder.hparams == {**image.autoencoder.hparams, "temporal_decoder": True}
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


def _save(tmp_path, name: str, ae: AutoencoderKL):
    return save_model_file(tmp_path / name, "autoencoder", ae.hparams, ae.state_dict())


def test_a_later_stage_takes_the_architecture_from_its_init_file(tmp_path):
    wide = small_ae(base_channels=16, patch_size=2)
    with torch.no_grad():
        wide.decoder.conv_out.weight.add_(0.5)  # weights that are not an init
    path = _save(tmp_path, "wide.pt", wide)
    temporal = temporal_module(path, temporal_kernel=5, temporal_spatial_kernel=1)
    assert temporal.autoencoder.hparams == {**wide.hparams, "temporal_decoder": True, "temporal_kernel": 5,
                                            "temporal_spatial_kernel": 1}
    assert torch.equal(temporal.autoencoder.decoder.conv_out.weight, wide.decoder.conv_out.weight)
    # an image stage continued from its own file: the file's network and weights, no config block
    continued = AutoencoderModule(stage="image", init_from=str(path), **TRAIN)
    assert continued.autoencoder.hparams == wide.hparams
    assert torch.equal(continued.autoencoder.decoder.conv_out.weight, wide.decoder.conv_out.weight)
    # a temporal stage continued from a temporal file keeps its kernels; stating others is an error
    tfile = _save(tmp_path, "temporal.pt", temporal.autoencoder)
    assert temporal_module(tfile).autoencoder.hparams["temporal_kernel"] == 5
    with pytest.raises(DriveSimInputError, match="field 'temporal_kernel'.*already has a temporal decoder"):
        temporal_module(tfile, temporal_kernel=3)
    with pytest.raises(DriveSimInputError, match="field 'init_from'.*temporal decoder"):
        AutoencoderModule(stage="image", init_from=str(tfile), **TRAIN)


def test_temporal_from_takes_another_runs_temporal_decoder_layers(tmp_path):
    """``drivesim train --init RUN``: this run's (fine-tuned) autoencoder with the other run's trained
    temporal blocks and alphas; the kernels must agree."""
    theirs_image, mine_image = small_ae(), small_ae()
    _fill(theirs_image.named_parameters(), seed=1)
    _fill(mine_image.named_parameters(), seed=2)
    mine_image.set_scale_factor(0.25)
    theirs = temporal_module(_save(tmp_path, "theirs_image.pt", theirs_image)).autoencoder
    _fill(theirs.named_parameters(), seed=3)  # "trained": every layer away from its init
    theirs.set_scale_factor(0.5)
    their_file = _save(tmp_path, "theirs_temporal.pt", theirs)
    mine_file = _save(tmp_path, "mine_image.pt", mine_image)
    mine = temporal_module(mine_file, temporal_from=str(their_file)).autoencoder
    image_keys = set(mine_image.state_dict())
    added = [k for k in mine.state_dict() if k not in image_keys]
    assert added and any("temporal" in k for k in added)
    for key, value in mine.state_dict().items():
        expected = (theirs if key in added else mine_image).state_dict()[key]
        assert torch.equal(value, expected), key
    with pytest.raises(DriveSimInputError, match="field 'temporal_from'.*shapes differ"):
        temporal_module(mine_file, temporal_from=str(their_file), temporal_kernel=5)
    with pytest.raises(DriveSimInputError, match="field 'temporal_from'.*temporal stage"):
        AutoencoderModule(stage="image", init_from=str(mine_file), temporal_from=str(their_file), **TRAIN)


def test_constructor_errors_name_the_field(tmp_path):
    image_file = _save(tmp_path, "image.pt", small_ae())
    with pytest.raises(DriveSimInputError, match="field 'stage'"):
        AutoencoderModule(autoencoder=small_ae(), stage="video")
    with pytest.raises(DriveSimInputError, match="field 'init_from'.*image-stage model file"):
        AutoencoderModule(stage="temporal")
    with pytest.raises(DriveSimInputError, match="field 'autoencoder'.*needs its network"):
        AutoencoderModule(stage="image")
    with pytest.raises(DriveSimInputError, match="field 'autoencoder'.*twice"):  # stated twice
        AutoencoderModule(autoencoder=small_ae(), stage="temporal", init_from=str(image_file))
    with pytest.raises(DriveSimInputError, match="field 'autoencoder'.*twice"):
        AutoencoderModule(autoencoder=small_ae(), stage="image", init_from=str(image_file))
    with pytest.raises(DriveSimInputError, match="field 'autoencoder'.*from init_from"):
        AutoencoderModule(autoencoder=small_ae(), stage="temporal")
    with pytest.raises(DriveSimInputError, match="field 'temporal_kernel'"):
        image_module(temporal_kernel=3)
    with pytest.raises(DriveSimInputError, match="field 'autoencoder.temporal_decoder'"):
        AutoencoderModule(autoencoder=small_ae(temporal_decoder=True), stage="image")
    with pytest.raises(DriveSimInputError, match="LPIPS weights file not found"):
        image_module(lpips_path=str(tmp_path / "vgg.pt"))
    save_model_file(tmp_path / "unet.pt", "unet", {}, {"w": torch.zeros(1)})
    with pytest.raises(DriveSimInputError, match="expected 'autoencoder'"):
        temporal_module(tmp_path / "unet.pt")
    save_model_file(tmp_path / "odd.pt", "autoencoder", {**small_ae().hparams, "width": 3}, {})
    with pytest.raises(DriveSimInputError, match="unknown autoencoder hyper-parameters"):
        temporal_module(tmp_path / "odd.pt")
    with pytest.raises(DriveSimInputError, match="field 'compile_mode'"):
        image_module(compile_mode="fastest")
    for name in ("flicker_weight", "latent_noise", "l2_weight", "spatial_lr_scale"):
        with pytest.raises(DriveSimInputError, match=f"field '{name}'"):
            image_module(**{name: -1.0})
    with pytest.raises(DriveSimInputError, match="field 'latent_noise_mode'"):
        image_module(latent_noise=0.5, latent_noise_mode="gaussian")


def test_compile_compiles_encoder_and_decoder_in_place(monkeypatch):
    calls = []
    monkeypatch.setattr(autoencoder_module, "compile_network", lambda m, mode: calls.append((m, mode)))
    module = image_module(compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert calls == [(module.autoencoder.encoder, "max-autotune-no-cudagraphs"),
                     (module.autoencoder.decoder, "max-autotune-no-cudagraphs")]
    calls.clear()
    image_module()
    assert calls == []


def test_freeze_spatial_decoder_trains_only_temporal_layers(tmp_path):
    module = temporal_module(_save(tmp_path, "image.pt", small_ae()), freeze_spatial_decoder=True)
    trainable = {n for n, p in module.autoencoder.named_parameters() if p.requires_grad}
    assert trainable and all("temporal" in n for n in trainable)
    assert module._adaptive_layer() is module.autoencoder.decoder.temporal_mixes()[-1].block.conv2.weight


def test_spatial_lr_scale_puts_the_spatial_decoder_in_its_own_lr_group(tmp_path):
    image_file = _save(tmp_path, "image.pt", small_ae())
    module = temporal_module(image_file, spatial_lr_scale=0.1)
    opt_ae, _ = module.configure_optimizers()
    temporal_ids = {id(p) for p in module.autoencoder.temporal_parameters()}
    fast, slow = opt_ae.param_groups
    assert fast["lr"] == pytest.approx(TRAIN["learning_rate"])
    assert slow["lr"] == pytest.approx(TRAIN["learning_rate"] * 0.1)
    assert {id(p) for p in fast["params"]} == temporal_ids
    decoder_ids = {id(p) for p in module.autoencoder.decoder.parameters()} | {
        id(p) for p in module.autoencoder.post_quant_conv.parameters()}
    assert {id(p) for p in slow["params"]} == decoder_ids - temporal_ids  # the frozen encoder is in neither
    # the budget schedule scales each group from its own base lr
    module._apply_lr_schedule(opt_ae)
    assert slow["lr"] / fast["lr"] == pytest.approx(0.1)
    # frozen spatial decoder: the scale has nothing to act on, one group of temporal parameters
    frozen = temporal_module(image_file, spatial_lr_scale=0.1, freeze_spatial_decoder=True)
    (only,) = frozen.configure_optimizers()[0].param_groups
    assert {id(p) for p in only["params"]} == {id(p) for p in frozen.autoencoder.temporal_parameters()}


def test_lightning_checkpoint_is_a_model_file(tmp_path):
    loader = DataLoader(_Clips(4, 1), batch_size=2)
    module = image_module()  # no model_file: <log_dir>/model.safetensors, like every stage
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module, train_dataloaders=loader)
    assert load_autoencoder(tmp_path / "model.safetensors").has_scale_factor()
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert "autoencoder" not in torch.load(tmp_path / "last.ckpt", weights_only=True)["hyper_parameters"]
    loaded = load_autoencoder(tmp_path / "last.ckpt")  # hparams + scale factor travel in the .ckpt
    assert loaded.hparams == module.autoencoder.hparams and loaded.has_scale_factor()
    for k, v in module.autoencoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert checkpoints.main([str(tmp_path / "last.ckpt"), str(tmp_path / "e.safetensors"), "--kind", "autoencoder"]) == 0
    exported = load_autoencoder(tmp_path / "e.safetensors")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in loaded.state_dict().items())
    with pytest.raises(DriveSimInputError, match="expected 'unet'"):
        checkpoints.export_model_file(tmp_path / "last.ckpt", tmp_path / "u.pt", "unet")


# Loss values of AutoencoderModule._generator_losses (+ the gradient it sends to the autoencoder and
# the discriminator's hinge loss) on fixed batches, weights and steps. Computed with the module of
# commit 6e98c29, before its loss math moved to drivesim/models/autoencoder_losses.py (CPU, float32,
# one thread); the new module reproduced them bit for bit. Moving code must not change the numbers.
REFERENCE = {
    "image_gan_l2_noise": {"loss": 2675.79297, "grad_abs_sum": 437291.823, "d_loss": 1.00019372,
                           "rec_loss": 2144.96655, "kl": 76.7678833, "l1": 0.849405468, "g_loss": 0.10616529,
                           "d_weight": 5000.0},
    "image_gan": {"loss": 812.05188, "grad_abs_sum": 291256.644, "d_loss": 1.00779247, "rec_loss": 651.743774,
                  "kl": 76.7678833, "l1": 0.848624706, "g_loss": 0.167405754, "d_weight": 957.601746},
    "image_lpips_uniform": {"loss": 748.152527, "grad_abs_sum": 54936.0855, "d_loss": 0.997984409,
                            "rec_loss": 748.075745, "kl": 76.7678833, "l1": 0.864094734},
    "temporal_frozen_flicker_gan": {"loss": 2817.5415, "grad_abs_sum": 83297.9303, "d_loss": 0.989820063,
                                    "rec_loss": 1424.91699, "kl": 78.6454239, "l1": 0.846107185,
                                    "flicker_loss": 441.619629, "g_loss": 0.0361167118, "d_weight": 1876.29236},
    "temporal_gan_k5": {"loss": 854.614319, "grad_abs_sum": 127234.042, "d_loss": 0.986086011,
                        "rec_loss": 656.729858, "kl": 65.2096405, "l1": 0.855117023, "g_loss": 0.0435847268,
                        "d_weight": 4540.22314},
}


def _fill(named, seed: int) -> None:
    """Deterministic weights, independent of construction order and of the global RNG."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(named, key=lambda kv: kv[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _blobs(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    out = []
    for _ in range(2):
        c, v = torch.rand(2, generator=g), (torch.rand(2, generator=g) - 0.5) * 0.2
        col = torch.rand(3, 1, 1, generator=g)
        clip = [col * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) + (1 - col) * xx * 0.5
                for cy, cx in ((c + v * t).tolist() for t in range(frames))]
        out.append(torch.stack(clip) * 2 - 1)
    return torch.stack(out)  # [2, T, 3, 16, 16]


def _measure(module: AutoencoderModule, x: torch.Tensor, step: int, disc_gain: float = 1.0) -> dict:
    _fill(module.autoencoder.named_parameters(), 1)
    _fill(module.discriminator.named_parameters(), 2)
    with torch.no_grad():
        for p in module.discriminator.parameters():
            p.mul_(disc_gain if p.dim() >= 2 else 1.0)
    module.train_steps.fill_(step)
    loss, recon, logs = module._generator_losses(x)
    loss.backward()
    grad = sum(float(p.grad.abs().sum()) for p in module.autoencoder.parameters() if p.grad is not None)
    d_loss = hinge_d_loss(module.discriminator(x), module.discriminator(recon.detach()))
    return {"loss": float(loss.detach()), "grad_abs_sum": grad, "d_loss": float(d_loss.detach()),
            **{k: float(v) for k, v in logs.items()}}


def test_losses_on_a_fixed_batch_equal_the_reference(tmp_path):
    image = small_ae()
    _fill(image.named_parameters(), 3)
    image.set_scale_factor(0.7)
    image_file = _save(tmp_path, "image.safetensors", image)
    lpips = LPIPS()
    _fill(lpips.named_parameters(), 4)
    torch.save({k: (v.abs() if k.startswith("lin") else v) for k, v in lpips.state_dict().items()
                if k not in ("shift", "scale")}, tmp_path / "lpips.pt")
    x1, x4 = _blobs(1, 10), _blobs(4, 11)
    got = {
        "image_gan_l2_noise": _measure(image_module(l2_weight=2.0, latent_noise=0.4, disc_start=0), x1, 3),
        "image_gan": _measure(image_module(latent_noise=0.1, disc_start=0, disc_weight=0.8), x1, 4, disc_gain=4.0),
        "image_lpips_uniform": _measure(image_module(
            latent_noise=0.4, latent_noise_mode="uniform", lpips_path=str(tmp_path / "lpips.pt"), lpips_weight=0.7,
            kl_weight=1e-3, disc_start=100), x1, 5),
        "temporal_frozen_flicker_gan": _measure(temporal_module(
            image_file, flicker_weight=3.0, latent_noise=0.2, l2_weight=1.0, disc_start=0,
            freeze_spatial_decoder=True), x4, 7),
        "temporal_gan_k5": _measure(temporal_module(image_file, disc_start=2, temporal_kernel=5), x4, 2),
    }
    for case, expected in REFERENCE.items():
        assert set(got[case]) == set(expected), case
        for name, value in expected.items():
            assert got[case][name] == pytest.approx(value, rel=1e-4), (case, name)


def test_fit_on_the_synthetic_world_lowers_the_loss(tmp_path):
    from drivesim.data.datamodule import DriveDataModule

    dm = DriveDataModule(source="synthetic", frames=1, fps=10.0, height=16, width=32, batch_size=4,
                         samples_per_epoch=32, val_samples=8, seed=0)
    dm.setup("fit")
    held_out = list(dm.val_dataloader())
    torch.manual_seed(0)  # the initial weights: the test's outcome must not depend on the tests before it
    module = image_module(disc_start=1000, model_file=str(tmp_path / "ae.safetensors"))
    before = _l1(module.autoencoder.eval(), held_out)
    module.autoencoder.train()
    _trainer(tmp_path, 48).fit(module, datamodule=dm)
    after = _l1(module.autoencoder.eval(), held_out)
    assert after < 0.85 * before, (before, after)  # 48 steps: passes for init seeds 0-5 (24 steps failed ~1 in 10)
    assert load_autoencoder(tmp_path / "ae.safetensors").has_scale_factor()


def test_train_crop_is_one_seeded_window_per_batch_and_is_checked():
    module = image_module(train_crop=[8, 8])
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
    assert torch.equal(image_module()._random_crop(x), x)  # no crop configured
    with pytest.raises(DriveSimInputError, match="train_crop"):
        image_module(train_crop=[7, 8])  # not a multiple of f = 2
    with pytest.raises(DriveSimInputError, match="larger than the frames"):
        image_module(train_crop=[32, 32])._random_crop(x)


def test_budget_schedule_decays_both_optimizers_to_the_floor(tmp_path):
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    module = image_module(disc_start=100, warmup_steps=2, lr_decay_fraction=0.5, train_crop=[8, 8],
                          model_file=str(tmp_path / "a.safetensors"))
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append([g["lr"] for opt in pl_module.optimizers() for g in opt.optimizer.param_groups])

    _trainer(tmp_path, 20, callbacks=[Probe()]).fit(module, train_dataloaders=loader)
    lr = TRAIN["learning_rate"]
    assert seen[0] == pytest.approx([0.5 * lr, 0.5 * lr])          # warm-up: (0 + 1) / 2
    assert seen[3] == pytest.approx([lr, lr])                      # full rate before the decay
    # decay over the last half of max_steps = 20: at the last batch (global step 19) 1 / 20 / 0.5
    assert seen[-1] == pytest.approx([0.1 * lr, 0.1 * lr])
    assert len(seen) == 20


def test_flicker_weight_adds_the_frame_difference_penalty(tmp_path):
    image_file = _save(tmp_path, "image.pt", small_ae())
    x = next(iter(DataLoader(_Clips(2, 4, seed=2), batch_size=2)))["video"]
    losses = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)  # the same new temporal blocks in both modules
        loss, recon, logs = temporal_module(image_file, flicker_weight=w)._generator_losses(x)
        losses[w] = (float(loss.detach()), logs)
    diff = ((recon[:, 1:] - recon[:, :-1]) - (x[:, 1:] - x[:, :-1])).abs().sum().detach() / (2 * 3)
    assert "flicker_loss" not in losses[0.0][1]
    assert float(losses[2.0][1]["flicker_loss"]) == pytest.approx(float(diff), rel=1e-3)
    # same posterior sample (step generator), so the totals differ by exactly the penalty
    assert losses[2.0][0] - losses[0.0][0] == pytest.approx(2.0 * float(diff), rel=1e-3)


def test_latent_noise_reaches_training_but_not_validation():
    x = next(iter(DataLoader(_Clips(4, 1), batch_size=4)))["video"]
    torch.manual_seed(0)
    plain = image_module()
    torch.manual_seed(0)
    noisy = image_module(latent_noise=0.5)
    # same weights and step: only the decoder input differs in training
    assert not torch.equal(plain._generator_losses(x)[1], noisy._generator_losses(x)[1])
    # validation reconstructs from the posterior mean, without the augmentation
    noisy.autoencoder.eval()
    with torch.no_grad():  # as Lightning runs validation (and the CPU inference layout with it)
        x_val, recon = noisy._common_step({"video": x}, "val")
        ref = noisy.autoencoder.decode(noisy.autoencoder.encode(x).mode()).clamp(-1, 1)
    assert torch.equal(recon, ref)


def test_bf16_mixed_fit_learns_and_keeps_losses_and_metrics_in_float32(tmp_path):
    loader = DataLoader(_Clips(8, 1), batch_size=4, shuffle=False)
    module = image_module(disc_start=10, latent_noise=0.1, model_file=str(tmp_path / "bf16.safetensors"))
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
