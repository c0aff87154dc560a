"""LatentDiffusionModule: fit lowers the loss, checkpoint round trip, guidance through the
module's sampler, video/interpolation stages (frozen spatial layers, context reproduced)."""

from dataclasses import asdict

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Dataset

from drivesim.models.autoencoder import MODEL_KIND, AutoencoderKL
from drivesim.models.conditioning import Conditioning
from drivesim.models.model_files import save_model_file
from drivesim.models.unet import UNet, parameter_group
from drivesim.training.diffusion_module import UNET_KIND, LatentDiffusionModule
from drivesim.training.sample_grid import sample_grid
from drivesim.training.stage_networks import TemporalLayers
from drivesim.utils.io import DriveSimInputError

B, C, H, W = 4, 4, 8, 16
TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=8, norm_groups=8, token_dim=16, max_boxes=4, box_fourier_freqs=2)


def tiny_unet(**overrides):
    return UNet(**{**TINY, **overrides})


def make_batch(frames=1, seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, frames, 3, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.3], dim=-1)  # [B, T, 3, 4] x1 y1 x2 y2
    daynight = torch.arange(batch) % 2
    # latents with structure: a smooth pattern, darker for "night"
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    pattern = torch.stack([xx, yy, xx * yy, xx**2 - 0.3])  # [C, H, W]
    latents = pattern[None, None] - daynight.float()[:, None, None, None, None]
    latents = latents.expand(batch, frames, C, H, W) + 0.05 * torch.randn(batch, frames, C, H, W, generator=g)
    return {"latents": latents.contiguous(), "boxes": boxes,
            "box_classes": torch.ones(batch, frames, 3, dtype=torch.long),
            "box_ids": torch.arange(1, 4).expand(batch, frames, 3).contiguous(),
            "daynight": daynight, "crowd": torch.ones(batch, dtype=torch.long),
            "fps": torch.full((batch,), 7.5), "clip_id": [f"c{i}" for i in range(batch)]}


class RepeatBatch(Dataset):
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: (v[i % len(v)]) for k, v in self.batch.items()}


def loader(batch, n=64):
    return DataLoader(RepeatBatch(batch, n), batch_size=B, shuffle=False)


def perturb(module, scale=0.05, seed=1):
    """Random weights everywhere (zero-initialised outputs/adapters would hide the conditions)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def eval_loss(module, batch):
    """Loss averaged over 8 fixed (t, noise) draws, so the comparison is not luck."""
    module.eval()
    with torch.no_grad():
        losses = [float(module.compute_loss(batch, False, torch.Generator().manual_seed(s)))
                  for s in range(8)]
    module.train()
    return sum(losses) / len(losses)


def trainer(tmp_path, steps):
    return Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    module = LatentDiffusionModule(tiny_unet(), lr=2e-3, warmup_steps=0, num_val_samples=0)
    batch = make_batch()
    before = eval_loss(module, batch)
    tr = trainer(tmp, 40)
    tr.fit(module, loader(batch))
    ckpt = tmp / "image.ckpt"
    tr.save_checkpoint(ckpt)
    return module, before, eval_loss(module, batch), ckpt


def test_short_fit_lowers_the_loss(fitted):
    _, before, after, _ = fitted
    assert after < 0.6 * before, (before, after)


def test_model_file_is_what_the_rollout_loads(fitted):
    """on_fit_end writes an ``ldm`` model file; the one loader reads it and the .ckpt."""
    from drivesim.inference import load_model

    module, _, _, ckpt = fitted
    batch = make_batch(seed=2)
    cond, t = Conditioning.from_batch(batch), torch.tensor([1, 50, 400, 900])
    with torch.no_grad():
        expect = module.eval().unet(batch["latents"], t, cond)
        for path in (ckpt.parent / "model.safetensors", ckpt):
            model = load_model(path, "image")
            assert model.role == "image" and load_model(path).role == "image"
            assert model.prediction == "v" and model.schedule.num_steps == 1000
            assert model.hparams["num_frames"] == 1 and model.hparams["fps"] == 7.5
            torch.testing.assert_close(model.network(batch["latents"], t, cond), expect, rtol=0, atol=0)
    with pytest.raises(DriveSimInputError, match="not a prediction"):
        load_model(ckpt, "prediction")


def test_ema_callback_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from drivesim.inference import load_model

    torch.manual_seed(0)
    module = LatentDiffusionModule(tiny_unet(), lr=1e-3, warmup_steps=0, num_val_samples=0,
                                   model_file=str(tmp_path / "m.safetensors"))
    tr = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                 enable_model_summary=False, default_root_dir=tmp_path,
                 callbacks=[EMAWeightAveraging(decay=0.5)], enable_checkpointing=False)
    tr.fit(module, loader(make_batch(), 12))
    tr.save_checkpoint(tmp_path / "ema.ckpt")  # after fit the averaged weights are current
    loaded = load_model(tmp_path / "ema.ckpt", "image")
    for (name, a), b in zip(module.unet.state_dict().items(), loaded.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert (tmp_path / "m.safetensors").is_file()


def test_checkpoint_round_trip(fitted):
    """The .ckpt loaded by the one loader samples exactly what the training module samples."""
    from drivesim.inference import load_model, sample

    module, _, _, ckpt = fitted
    loaded = load_model(ckpt)
    batch = make_batch(seed=5)
    cond = Conditioning.from_batch(batch)
    t = torch.tensor([10, 200, 600, 999])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(batch["latents"], t, cond),
                                   module.unet(batch["latents"], t, cond), rtol=0, atol=0)
    gen = [module.generate(cond, 1, (H, W), steps=4, scales={"boxes": 2.0},
                           generator=torch.Generator().manual_seed(9)),
           sample(loaded, cond, 1, (H, W), steps=4, scales={"boxes": 2.0},
                  generator=torch.Generator().manual_seed(9))]
    torch.testing.assert_close(gen[0], gen[1], rtol=0, atol=0)
    assert loaded.hparams["stage"] == "image" and loaded.role == "image"
    with pytest.raises(DriveSimInputError, match="not found"):
        load_model(ckpt.parent / "missing.ckpt")


def test_guidance_through_module_sampling():
    module = LatentDiffusionModule(tiny_unet(), num_val_samples=0).eval()
    perturb(module)
    cond = Conditioning.from_batch(make_batch())
    run = lambda c, scales: module.generate(c, 1, (H, W), steps=3, scales=scales,  # noqa: E731
                                            generator=torch.Generator().manual_seed(4))
    conditional = run(cond, None)
    unconditional = run(cond.with_dropped(boxes=True, labels=True), None)
    assert (conditional - unconditional).abs().max() > 1e-3
    torch.testing.assert_close(run(cond, {"labels": 1.0, "boxes": 1.0}), conditional,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run(cond, {"labels": 0.0, "boxes": 0.0}), unconditional,
                               rtol=1e-4, atol=1e-5)
    stochastic = [module.generate(cond, 1, (H, W), steps=3, eta=1.0,
                                  generator=torch.Generator().manual_seed(s)) for s in (4, 4, 5)]
    torch.testing.assert_close(stochastic[0], stochastic[1], rtol=0, atol=0)
    assert (stochastic[0] - stochastic[2]).abs().max() > 1e-3
    assert (stochastic[0] - conditional).abs().max() > 1e-3  # eta reaches the sampler
    with pytest.raises(ValueError, match="deterministic"):
        module.generate(cond, 1, (H, W), steps=2, sampler="dpmpp_2m", eta=0.5)


def save_image_unet(tmp_path, unet):
    return save_model_file(tmp_path / "image_unet.pt", UNET_KIND, {"unet": unet.config}, unet.state_dict())


VIDEO_LAYERS = dict(use_context=True, context_channels=8, max_frames=8)


def video_module(tmp_path, init_from, **kw):
    """A video-stage module as a config builds it: the spatial UNet from ``init_from``, the
    temporal settings stated (``unet`` holds extra ones)."""
    layers = TemporalLayers(**{**VIDEO_LAYERS, **kw.pop("unet", {})})
    return LatentDiffusionModule(stage=kw.pop("stage", "video"), init_from=str(init_from), temporal_layers=layers,
                                 num_val_samples=0, **kw)


def test_video_stage_freezes_spatial_layers_and_equals_image_model_at_init(tmp_path):
    image = LatentDiffusionModule(tiny_unet(), num_val_samples=0)
    perturb(image)
    image_file = save_image_unet(tmp_path, image.unet)
    video = video_module(tmp_path, image_file)
    trainable = {n for n, p in video.unet.named_parameters() if p.requires_grad}
    assert trainable and all(parameter_group(n) in ("temporal", "context") for n in trainable)
    assert not any(p.requires_grad for p in video.autoencoder.parameters()) if video.autoencoder else True
    opt = video.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for n, p in video.unet.named_parameters() if n in trainable}
    # a fresh video UNet (zero-initialised temporal outputs) equals the image UNet per frame
    batch = make_batch(frames=5)
    cond = Conditioning.from_batch(batch)
    t = torch.tensor([5, 100, 500, 900])
    with torch.no_grad():
        torch.testing.assert_close(video.unet.eval()(batch["latents"], t, cond),
                                   image.unet.eval()(batch["latents"], t, cond), rtol=1e-4, atol=1e-5)
    # one training step moves only temporal / context parameters
    spatial_before = {n: p.detach().clone() for n, p in video.unet.named_parameters() if n not in trainable}
    video.train()
    loss = video.compute_loss(batch, True)
    loss.backward()
    opt.step()
    assert all(torch.equal(p, spatial_before[n]) for n, p in video.unet.named_parameters()
               if n not in trainable)
    grads = [p.grad for n, p in video.unet.named_parameters() if n in trainable]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # a reduced spatial learning rate puts the spatial layers back in the optimizer
    scaled = video_module(tmp_path, image_file, train_spatial_lr_scale=0.1)
    lrs = sorted(g["initial_lr"] for g in scaled.configure_optimizers()["optimizer"].param_groups)
    assert lrs == pytest.approx([1e-5, 1e-4])
    # the alpha-blend logits can have their own learning rate (and no weight decay)
    blended = video_module(tmp_path, image_file, blend_lr_scale=10.0)
    groups = blended.configure_optimizers()["optimizer"].param_groups
    assert sorted(g["initial_lr"] for g in groups) == pytest.approx([1e-4, 1e-3])
    fast = next(g for g in groups if g["initial_lr"] == pytest.approx(1e-3))
    mix = {id(p) for n, p in blended.unet.named_parameters() if n.endswith(".blend.mix")}
    assert mix and {id(p) for p in fast["params"]} == mix and fast["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    with pytest.raises(ValueError, match="blend_lr_scale"):
        video_module(tmp_path, image_file, blend_lr_scale=0.0)


def test_wrong_checkpoint_kind_is_a_clear_error(tmp_path):
    image = LatentDiffusionModule(tiny_unet(), num_val_samples=0)
    video = video_module(tmp_path, save_image_unet(tmp_path, image.unet))
    video_file = save_model_file(tmp_path / "video_unet.pt", UNET_KIND, {"unet": video.unet.config},
                                 video.unet.state_dict())
    with pytest.raises(DriveSimInputError, match="video checkpoint cannot initialise the image"):
        LatentDiffusionModule(tiny_unet(), init_from=str(video_file))
    with pytest.raises(DriveSimInputError, match="field 'unet.temporal'.*not an image model"):
        video_module(tmp_path, video_file)
    with pytest.raises(DriveSimInputError, match="field 'unet.temporal'.*temporal=True"):
        LatentDiffusionModule(tiny_unet(), stage="video")
    with pytest.raises(DriveSimInputError, match="not found"):
        LatentDiffusionModule(tiny_unet(), init_from=str(tmp_path / "nope.ckpt"))



def test_video_stage_takes_its_spatial_unet_from_init_from(tmp_path):
    image = LatentDiffusionModule(tiny_unet(model_channels=8, norm_groups=4), num_val_samples=0)
    perturb(image)
    image_file = save_image_unet(tmp_path, image.unet)
    video = video_module(tmp_path, image_file, stage="interpolation", unet={"num_regimes": 2})
    # the file's spatial config (not the TINY defaults), the stated temporal settings, the file's weights
    assert video.unet.config == {**image.unet.config, "temporal": True, **VIDEO_LAYERS, "num_regimes": 2}
    spatial = {k: v for k, v in image.unet.state_dict().items()}
    assert all(torch.equal(video.unet.state_dict()[k], v) for k, v in spatial.items())
    # the hyper-parameters hold plain values, so a checkpoint loads weights-only
    assert video.hparams.temporal_layers == {**asdict(TemporalLayers()), **VIDEO_LAYERS, "num_regimes": 2}
    torch.save({"hyper_parameters": dict(video.hparams)}, tmp_path / "hp.ckpt")
    assert torch.load(tmp_path / "hp.ckpt", weights_only=True)["hyper_parameters"]["stage"] == "interpolation"
    # the model file carries the full UNet config: the network is rebuilt from the file alone
    from drivesim.inference import load_model

    video_file = save_model_file(tmp_path / "video.pt", UNET_KIND, video.model_hparams(), video.unet.state_dict())
    assert load_model(video_file, "interpolation").network.config == video.unet.config
    # a full video UNet (e.g. rebuilt from a checkpoint) without init_from; stated settings must agree
    again = LatentDiffusionModule(UNet(**video.unet.config), stage="interpolation", num_val_samples=0,
                                  temporal_layers=asdict(TemporalLayers(**VIDEO_LAYERS, num_regimes=2)))
    assert again.unet.config == video.unet.config
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers.max_frames'"):
        LatentDiffusionModule(UNet(**video.unet.config), stage="interpolation",
                              temporal_layers=TemporalLayers(**{**VIDEO_LAYERS, "max_frames": 4}, num_regimes=2))


def test_temporal_from_continues_another_runs_temporal_layers_on_this_runs_image_model(tmp_path, stage="video"):
    """``drivesim train --init RUN``: the video stage keeps this run's (fine-tuned) spatial layers
    and takes the trained temporal, context and ego layers of the other run's video file."""
    image = LatentDiffusionModule(tiny_unet(), num_val_samples=0)
    perturb(image, seed=1)
    (tmp_path / "theirs").mkdir()
    their_image = save_image_unet(tmp_path / "theirs", image.unet)
    theirs = video_module(tmp_path, their_image, unet={"use_ego": True})
    perturb(theirs, seed=2)  # "trained" temporal layers: away from their identity init
    their_video = save_model_file(tmp_path / "their_video.pt", UNET_KIND, theirs.model_hparams(),
                                  theirs.unet.state_dict())
    perturb(image, seed=3)  # this run's image model: fine-tuned away from theirs
    mine_image = save_image_unet(tmp_path, image.unet)
    mine = video_module(tmp_path, mine_image, unet={"use_ego": True}, temporal_from=str(their_video))
    spatial = set(image.unet.state_dict())
    added = [k for k in mine.unet.state_dict() if k not in spatial]
    assert any(parameter_group(k) == "ego" for k in added) and any(k.endswith(".blend.mix") for k in added)
    for key, value in mine.unet.state_dict().items():
        expected = (theirs.unet if key in added else image.unet).state_dict()[key]
        assert torch.equal(value, expected), key
    fresh = video_module(tmp_path, mine_image, unet={"use_ego": True})  # without it: identity init
    assert not all(torch.equal(fresh.unet.state_dict()[k], mine.unet.state_dict()[k]) for k in added)
    # another temporal architecture, a wrong role and a missing init_from are refused by name
    with pytest.raises(DriveSimInputError, match="field 'temporal_from'.*shapes differ.*blend.mix"):
        video_module(tmp_path, mine_image, unet={"use_ego": True, "max_frames": 4}, temporal_from=str(their_video))
    with pytest.raises(DriveSimInputError, match="field 'temporal_from'.*has layers the stage does not add.*ego"):
        video_module(tmp_path, mine_image, unet={"use_ego": False}, temporal_from=str(their_video))
    no_ego = video_module(tmp_path, mine_image, unet={"use_ego": False})
    plain = save_model_file(tmp_path / "plain.pt", UNET_KIND, no_ego.model_hparams(), no_ego.unet.state_dict())
    with pytest.raises(DriveSimInputError, match="field 'temporal_from'.*lacks layers the stage adds.*ego"):
        video_module(tmp_path, mine_image, unet={"use_ego": True}, temporal_from=str(plain))
    with pytest.raises(DriveSimInputError, match="not an interpolation"):
        video_module(tmp_path, mine_image, stage="interpolation", unet={"use_ego": True, "num_regimes": 2},
                     temporal_from=str(their_video))
    with pytest.raises(DriveSimInputError, match="field 'temporal_from'"):
        LatentDiffusionModule(tiny_unet(), temporal_from=str(their_video))


def test_a_setting_stated_twice_or_missing_names_its_field(tmp_path):
    image_file = save_image_unet(tmp_path, tiny_unet())
    with pytest.raises(DriveSimInputError, match="field 'unet'.*from init_from"):  # spatial keys for a video stage
        LatentDiffusionModule(tiny_unet(temporal=True, use_context=True), stage="video", init_from=str(image_file))
    with pytest.raises(DriveSimInputError, match="field 'init_from'"):
        LatentDiffusionModule(stage="video", temporal_layers=TemporalLayers())
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers'.*only the video stages"):
        LatentDiffusionModule(tiny_unet(), temporal_layers=TemporalLayers())
    with pytest.raises(DriveSimInputError, match="field 'unet'.*image stage needs"):
        LatentDiffusionModule()
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers.model_channels'"):
        LatentDiffusionModule(stage="video", init_from=str(image_file), temporal_layers={"model_channels": 64})
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers'.*not accepted"):
        video_module(tmp_path, image_file, unet={"alpha_mode": "sometimes"})
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers.use_context'"):
        video_module(tmp_path, image_file, unet={"use_context": False})
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers.num_regimes'"):
        video_module(tmp_path, image_file, stage="interpolation")  # a regime label needs its embedding
    with pytest.raises(DriveSimInputError, match="field 'temporal_layers.num_regimes'"):
        video_module(tmp_path, image_file, unet={"num_regimes": 2})
    with pytest.raises(DriveSimInputError, match="field 'stage'"):
        LatentDiffusionModule(tiny_unet(), stage="audio")
    with pytest.raises(DriveSimInputError, match="field 'drop_boxes'"):
        LatentDiffusionModule(tiny_unet(), drop_boxes=1.5)

@pytest.mark.parametrize("stage", ["video", "interpolation"])
def test_video_stages_reproduce_context_at_sampling(tmp_path, stage):
    image = LatentDiffusionModule(tiny_unet(), num_val_samples=0)
    unet_kw = {"num_regimes": 2} if stage == "interpolation" else {}
    video = video_module(tmp_path, save_image_unet(tmp_path, image.unet), stage=stage, unet=unet_kw)
    perturb(video)
    batch = make_batch(frames=5)
    z = batch["latents"]
    cond = video.batch_conditioning(batch, z, train=False, generator=torch.Generator().manual_seed(0))
    if stage == "interpolation":
        assert cond.context_mask.tolist() == [[1, 0, 0, 0, 1]] * B
        assert cond.regime.tolist() == [0] * B  # 7.5 fps windows: the 1.875 -> 7.5 fps regime
    else:
        assert set(cond.context_mask.sum(1).tolist()) <= {0.0, 1.0, 2.0}
    out = video.generate(cond, 5, (H, W), steps=3, scales={"context": 1.5, "boxes": 2.0},
                         generator=torch.Generator().manual_seed(1))
    keep = cond.context_mask.bool()
    torch.testing.assert_close(out[keep], z[keep], rtol=0, atol=1e-5)
    video.train()
    assert torch.isfinite(video.compute_loss(batch, True))


def test_predict_step_decodes_frames_and_grid(tmp_path):
    ae = AutoencoderKL(base_channels=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
    ae.set_scale_factor(0.5)
    ae_path = save_model_file(tmp_path / "ae.pt", MODEL_KIND, ae.hparams, ae.state_dict())
    module = LatentDiffusionModule(tiny_unet(), autoencoder_path=str(ae_path), num_val_samples=0).eval()
    assert not any(p.requires_grad for p in module.autoencoder.parameters())
    batch = make_batch()
    batch.pop("latents")
    frames = module.predict_step({**batch, "steps": 2, "seed": 3})
    assert frames.shape == (B, 1, 3, 64, 128) and frames.abs().max() <= 1
    again = module.predict_step({**batch, "steps": 2, "seed": 3})
    torch.testing.assert_close(frames, again, rtol=0, atol=0)
    grid = sample_grid(frames, batch)
    assert grid.shape == (B * 64, 128, 3) and grid.dtype.name == "uint8"
    # video batches are encoded on the fly by the frozen autoencoder
    video = {**batch, "video": frames}
    z = module.batch_latents(video)
    assert z.shape == (B, 1, C, H, W)
    assert z.is_contiguous()  # channels-last AE latents crash the video UNet's backward (CPU)
    strided = torch.randn(B, 1, H, W, C).permute(0, 1, 4, 2, 3)
    assert module.batch_latents({"latents": strided}).is_contiguous()
    with pytest.raises(DriveSimInputError, match="'latents' or 'video'"):
        module.batch_latents({"boxes": batch["boxes"]})


def test_validation_logs_sample_grid(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    ae = AutoencoderKL(base_channels=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
    ae.set_scale_factor(0.5)
    ae_path = save_model_file(tmp_path / "ae.pt", MODEL_KIND, ae.hparams, ae.state_dict())
    module = LatentDiffusionModule(tiny_unet(), autoencoder_path=str(ae_path), num_val_samples=2,
                                   val_sample_steps=2)
    logger = TensorBoardLogger(tmp_path, name="tb")
    tr = Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False,
                 enable_model_summary=False, default_root_dir=tmp_path)
    metrics = tr.validate(module, loader(make_batch(), 8), verbose=False)[0]
    assert metrics["val/loss"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    assert "val/samples" in events.Tags()["images"]


def test_bf16_autocast_loss_and_sampling():
    """bf16-mixed: the loss is reduced in float32 and sampling keeps float32 latents."""
    module = LatentDiffusionModule(tiny_unet(), num_val_samples=0)
    perturb(module)
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.compute_loss(batch, True, torch.Generator().manual_seed(0))
        out = module.generate(Conditioning.from_batch(batch), 1, (H, W), steps=2,
                              scales={"boxes": 2.0}, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    reference = module.compute_loss(batch, True, torch.Generator().manual_seed(0))
    assert abs(float(loss) - float(reference)) < 0.05 * float(reference)


def test_box_weight_marks_vehicle_cells_even_when_boxes_are_dropped():
    module = LatentDiffusionModule(tiny_unet(), box_loss_weight=3.0, num_val_samples=0)
    batch = make_batch(frames=2)
    batch["boxes"] = torch.zeros_like(batch["boxes"])
    batch["boxes"][:, :, 0] = torch.tensor([0.0, 0.0, 0.25, 0.5])   # covers latent cells [0:4, 0:4]
    batch["box_classes"][:, :, 1:] = 0                                 # the other boxes are padding
    batch["boxes"][:, :, 1:] = 0.0
    z = batch["latents"]
    w = module._box_weight(batch, z)
    assert w.shape == (B, 2, 1, H, W)
    assert torch.equal(w[..., :4, :4], torch.full_like(w[..., :4, :4], 4.0))
    assert w[..., 4:, :].eq(1.0).all() and w[..., :, 4:].eq(1.0).all()
    batch["box_classes"][:, :, 0] = 4                                  # a pedestrian is not a vehicle
    assert module._box_weight(batch, z).eq(1.0).all()
    assert LatentDiffusionModule(tiny_unet(), num_val_samples=0)._box_weight(batch, z) is None
    with pytest.raises(ValueError, match="box_loss_weight"):
        LatentDiffusionModule(tiny_unet(), box_loss_weight=-1.0)
    # the weighted loss is a different (still finite, differentiable) objective
    g = torch.Generator().manual_seed(0)
    loss = module.compute_loss(make_batch(), True, g)
    assert torch.isfinite(loss) and loss.requires_grad


def test_logit_normal_timesteps_change_the_loss_draws_and_are_validated():
    batch = make_batch()
    uniform = LatentDiffusionModule(tiny_unet(), num_val_samples=0)
    logit = LatentDiffusionModule(tiny_unet(), num_val_samples=0, timesteps="logit_normal")
    logit.unet.load_state_dict(uniform.unet.state_dict())
    a = uniform.compute_loss(batch, True, torch.Generator().manual_seed(0))
    b = logit.compute_loss(batch, True, torch.Generator().manual_seed(0))
    assert torch.isfinite(b) and float(a) != float(b)  # same weights and seed, other noise levels
    with pytest.raises(ValueError, match="timesteps"):
        LatentDiffusionModule(tiny_unet(), timesteps="lognormal")
    with pytest.raises(ValueError, match="timestep_std"):
        LatentDiffusionModule(tiny_unet(), timesteps="logit_normal", timestep_std=0.0)


def test_lr_decays_over_the_budget(tmp_path):
    module = LatentDiffusionModule(tiny_unet(), lr=1e-3, warmup_steps=2, lr_decay_fraction=0.5,
                                   num_val_samples=0)
    trainer(tmp_path, 10).fit(module, loader(make_batch(), n=40))
    # after the last step (global step 10 of max_steps 10) the schedule sits at its floor
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.02)
    assert module.trainer.optimizers[0].defaults.get("fused") is True
