"""Lightning glue for the autoencoder stages 1 and 1b (docs/architecture.md, "Pipeline stages").

- ``stage="image"``: trains the configured :class:`AutoencoderKL` (``autoencoder``, a ``class_path``
  block) per frame, judged by a 2D PatchGAN (LDM recipe).
- ``stage="temporal"``: the autoencoder of an image-stage model file (``init_from``) gains a
  temporal decoder (``temporal_kernel``, ``temporal_spatial_kernel``); the encoder is frozen and
  only the 3D video discriminator judges T-frame clips (Video LDM Sec. 3.1.1).

The losses are the pure functions of :mod:`drivesim.models.autoencoder_losses`; this module draws
their randomness from the step's generator, switches the GAN on at ``disc_start`` training
steps and steps the two optimizers by hand (so ``trainer.max_steps`` counts optimizer steps:
1 per batch before ``disc_start``, 2 after).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from drivesim.models.autoencoder import (
    MODEL_KIND,
    AutoencoderKL,
    DiagonalGaussian,
    estimate_scale_factor,
)
from drivesim.models.autoencoder_losses import (
    NOISE_MODES,
    LossWeights,
    add_latent_noise,
    flicker,
    generator_loss,
    hinge_d_loss,
)
from drivesim.models.compile import check_compile_mode, compile_network
from drivesim.models.discriminators import PatchDiscriminator2d, VideoDiscriminator3d
from drivesim.models.lpips import LPIPS, load_lpips
from drivesim.training.budget import budget_progress, check_schedule, lr_factor, make_adam
from drivesim.training.checkpoints import attach_model_to_checkpoint, save_model_file
from drivesim.training.rng import step_generator
from drivesim.training.stage_networks import load_added_layers, stage_autoencoder, state_keys
from drivesim.utils.io import DriveSimInputError

STAGES = ("image", "temporal")


class AutoencoderModule(LightningModule):
    """Trains an :class:`AutoencoderKL`; the constructor arguments are the YAML config.

    The network: ``autoencoder`` (image stage) or the model file ``init_from`` (temporal stage,
    or an image stage continued), never both (``training/stage_networks.py``); a temporal stage's
    ``temporal_from`` (another run's temporal model file) gives its temporal blocks and alphas
    that file's trained weights instead of their identity init. The rest are
    training settings:

    - losses (``models/autoencoder_losses.py``): ``kl_weight``, ``l2_weight`` (adds ``w_2 * sum
      (x - x_hat)^2`` per frame to the L1 sum: PSNR is a squared error, and the squared term weighs
      the large errors, lamps, tail lights, lane edges, that L1 leaves blurred), ``lpips_path`` +
      ``lpips_weight``, ``flicker_weight`` (temporal stage, beyond the paper: ``w * sum |(x_hat[t+1]
      - x_hat[t]) - (x[t+1] - x[t])|`` per frame pair, the flicker metric as a loss), ``disc_weight``,
      ``disc_start``, ``disc_channels``, ``disc_layers``;
    - ``latent_noise`` / ``latent_noise_mode`` (beyond the paper): the decoder sees ``z + s * std_c(z)
      * eps`` in training, s = ``latent_noise`` (``fixed``) or per sample U(0, ``latent_noise``)
      (``uniform``); the tiny configs keep 0.4, whose latents the demo's LDMs learn (docs/autoencoder.md);
    - ``train_crop: [h, w]``: one random window per batch (multiples of the downsampling factor;
      validation uses full frames);
    - optimisers: ``learning_rate``, ``disc_learning_rate``, ``warmup_steps`` / ``lr_decay_fraction``
      (the budget schedule of both, ``training/budget.py``), ``spatial_lr_scale`` (temporal stage with a
      trainable spatial decoder: its spatial layers train at ``learning_rate * spatial_lr_scale``),
      ``freeze_spatial_decoder`` (temporal stage: only the temporal blocks and alpha train);
    - ``compile`` / ``compile_mode``: ``torch.compile`` the encoder and decoder in place
      (``models/compile.py``); ``scale_batches``, ``model_file``, ``overwrite``, ``seed``.
    """

    def __init__(self, autoencoder: AutoencoderKL | None = None, stage: str = "image", init_from: str | None = None,
                 temporal_from: str | None = None, temporal_kernel: int | None = None,
                 temporal_spatial_kernel: int | None = None,
                 freeze_spatial_decoder: bool = False, learning_rate: float = 4.5e-6,
                 disc_learning_rate: float | None = None, kl_weight: float = 1e-6, l2_weight: float = 0.0,
                 lpips_path: str | None = None, lpips_weight: float = 1.0, flicker_weight: float = 0.0,
                 disc_weight: float = 0.5, disc_start: int = 50001, disc_channels: int = 64, disc_layers: int = 3,
                 latent_noise: float = 0.0, latent_noise_mode: str = "fixed", train_crop: Sequence[int] | None = None,
                 warmup_steps: int = 0, lr_decay_fraction: float = 0.0, spatial_lr_scale: float = 1.0,
                 scale_batches: int = 4, model_file: str | None = None, overwrite: bool = False, seed: int = 0,
                 compile: bool = False, compile_mode: str = "default") -> None:
        super().__init__()
        _check_settings(stage, warmup_steps, lr_decay_fraction, latent_noise_mode, compile_mode,
                        flicker_weight=flicker_weight, latent_noise=latent_noise, l2_weight=l2_weight,
                        spatial_lr_scale=spatial_lr_scale)
        self.save_hyperparameters(ignore=["autoencoder"])
        self.automatic_optimization = False
        self.autoencoder = stage_autoencoder(stage, autoencoder, init_from, temporal_kernel, temporal_spatial_kernel)
        if temporal_from:
            if stage != "temporal":
                raise DriveSimInputError("temporal_from gives a temporal stage the trained temporal decoder layers of "
                                         "another run's file", field="temporal_from", value=temporal_from)
            load_added_layers(self.autoencoder, state_keys(init_from), temporal_from, "autoencoder")
        if train_crop is not None:
            self.hparams.train_crop = _check_crop(train_crop, self.autoencoder.downsample_factor)
        disc_cls = VideoDiscriminator3d if stage == "temporal" else PatchDiscriminator2d
        self.discriminator = disc_cls(3, disc_channels, disc_layers)
        self._lpips: list[LPIPS] = [load_lpips(lpips_path)] if lpips_path else []  # a list: kept out of the state dict
        self._weights = LossWeights(kl=kl_weight, l2=l2_weight, lpips=lpips_weight, flicker=flicker_weight,
                                    disc=disc_weight)
        self._frozen = self._freeze()
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_var_ema", torch.tensor(math.nan))
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_flicker = MeanMetric()
        if compile:
            compile_network(self.autoencoder.encoder, compile_mode)
            compile_network(self.autoencoder.decoder, compile_mode)

    # ----------------------------------------------------------------- setup
    def _freeze(self) -> list[torch.nn.Module]:
        """Temporal stage: freeze encoder (+ spatial decoder layers when asked); returns frozen modules."""
        if self.hparams.stage != "temporal":
            return []
        ae = self.autoencoder
        frozen: list[torch.nn.Module] = [ae.encoder, ae.quant_conv]
        for module in frozen:
            module.requires_grad_(False)
        if self.hparams.freeze_spatial_decoder:
            ae.post_quant_conv.requires_grad_(False)
            ae.decoder.requires_grad_(False)
            for mix in ae.decoder.temporal_mixes():
                mix.requires_grad_(True)
        return frozen

    def _adaptive_layer(self) -> torch.Tensor:
        """The last trainable decoder layer, where the adaptive GAN weight compares gradients."""
        last = self.autoencoder.decoder_last_layer()
        if last.requires_grad:
            return last
        return self.autoencoder.decoder.temporal_mixes()[-1].block.conv2.weight

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.autoencoder.parameters() if p.requires_grad]
        if hp.stage == "temporal" and hp.spatial_lr_scale != 1.0:
            # temporal blocks + alpha at the full lr, the rest of the decoder at lr * spatial_lr_scale
            # (one group at the default scale, so earlier checkpoints' optimizer states still load)
            temporal_ids = {id(p) for p in self.autoencoder.temporal_parameters()}
            params = [{"params": [p for p in params if id(p) in temporal_ids], "lr": hp.learning_rate},
                      {"params": [p for p in params if id(p) not in temporal_ids],
                       "lr": hp.learning_rate * hp.spatial_lr_scale}]
            params = [g for g in params if g["params"]]
        opt_ae = make_adam(params, hp.learning_rate, (0.5, 0.9))
        opt_d = make_adam(self.discriminator.parameters(), hp.disc_learning_rate or hp.learning_rate, (0.5, 0.9))
        return [opt_ae, opt_d]

    def _apply_lr_schedule(self, *optimizers: torch.optim.Optimizer) -> float:
        """Manual optimisation: set each optimizer's lr to its base lr times the budget schedule
        (warm-up, then linear decay over the last ``lr_decay_fraction`` of the budget)."""
        hp = self.hparams
        factor = lr_factor(int(self.train_steps), budget_progress(self._trainer), hp.warmup_steps,
                           hp.lr_decay_fraction)
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * factor
        return factor

    def on_fit_start(self) -> None:
        path = self._model_file_path()
        if path.exists() and not self.hparams.overwrite:
            raise FileExistsError(f"{path} exists; set model.init_args.overwrite=true to replace it")

    def on_train_epoch_start(self) -> None:
        for module in self._frozen:
            module.eval()

    def _rng(self, seed_offset: int = 0) -> torch.Generator:
        """The training step's generator: a pure function of (seed, step, rank), so a resumed run
        draws what an uninterrupted one would (training/rng.py)."""
        return step_generator(self.hparams.seed + seed_offset, int(self.train_steps), self.global_rank)

    # ----------------------------------------------------------------- losses
    def _posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        if self.hparams.stage == "temporal":
            with torch.no_grad():
                return self.autoencoder.encode(x)
        return self.autoencoder.encode(x)

    def _gan_on(self) -> bool:
        return int(self.train_steps) >= self.hparams.disc_start

    def _generator_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(loss, reconstruction, logs)`` of a training batch ``x [B, T, 3, H, W]``: the posterior
        sample and the latent noise are drawn from the step's generator, in that order."""
        hp = self.hparams
        posterior = self._posterior(x)
        gen = self._rng()
        z = posterior.sample(gen)
        z_in = add_latent_noise(z, hp.latent_noise, gen, hp.latent_noise_mode)
        recon = self.autoencoder.decode(z_in).float()  # float32 losses under bf16-mixed
        gan = self._gan_on()
        lpips = self._lpips[0].to(x.device) if self._lpips else None
        loss, logs = generator_loss(x, recon, posterior, self._weights, lpips=lpips,
                                    discriminator=self.discriminator if gan else None,
                                    last_layer=self._adaptive_layer() if gan else None)
        self._track_latent_variance(z.detach())
        return loss, recon, logs

    def _track_latent_variance(self, z: torch.Tensor) -> None:
        """Running (EMA) latent variance so that every Lightning checkpoint carries a usable scale
        factor; fit end replaces it by a fresh estimate. The temporal stage keeps the inherited one."""
        if self.hparams.stage == "temporal" and self.autoencoder.has_scale_factor():
            return
        var = z.double().var().float()
        if self._trainer is not None and self.trainer.world_size > 1:  # one value on every rank (DDP replicas agree)
            var = self.trainer.strategy.reduce(var, reduce_op="mean")
        ema = self.latent_var_ema
        self.latent_var_ema.copy_(var if torch.isnan(ema) else 0.99 * ema + 0.01 * var)
        self.autoencoder.set_scale_factor(float(self.latent_var_ema.clamp_min(1e-12).rsqrt()))

    # ----------------------------------------------------------------- steps
    def _random_crop(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W] -> [B, T, 3, h, w]``: one random ``train_crop`` window for the whole batch,
        drawn from the step's generator (seed + 1). The networks are fully convolutional, so training
        on crops costs H*W / (h*w) times less per step; validation uses the full frame. One window per
        batch rather than per clip: in paired 3-minute CPU runs it reached 23.6 vs 21.5 dB (docs/autoencoder.md)."""
        if self.hparams.train_crop is None:
            return x
        (h, w), (full_h, full_w) = self.hparams.train_crop, x.shape[-2:]
        if h > full_h or w > full_w:
            raise DriveSimInputError(f"train_crop is larger than the frames ({full_h} x {full_w})",
                                     field="train_crop", value=list(self.hparams.train_crop))
        gen = self._rng(seed_offset=1)
        top = int(torch.randint(0, full_h - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, full_w - w + 1, (1,), generator=gen))
        return x[..., top:top + h, left:left + w].contiguous()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = self._random_crop(batch["video"])
        opt_ae, opt_d = self.optimizers()
        logs_lr = self._apply_lr_schedule(opt_ae, opt_d)
        loss, recon, logs = self._generator_losses(x)
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_ae.step()
        if self._gan_on():
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            logs["d_loss"] = d_loss.detach()
        self.train_steps += 1
        logs["lr_factor"] = torch.tensor(logs_lr)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=x.shape[0])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=x.shape[0])
        return loss.detach()

    def _common_step(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["video"]
        # float32 before the metrics: under bf16-mixed the decoder's output is bf16
        recon = self.autoencoder.decode(self.autoencoder.encode(x).mode()).float().clamp(-1.0, 1.0)
        frames = rearrange((recon + 1) / 2, "b t c h w -> (b t) c h w")
        target = rearrange((x + 1) / 2, "b t c h w -> (b t) c h w")
        self.val_psnr.update(frames, target)
        self.val_ssim.update(frames, target)
        metrics = {"psnr": self.val_psnr, "ssim": self.val_ssim}
        if x.shape[1] > 1:
            self.val_flicker.update(flicker((recon + 1) / 2, (x + 1) / 2))
            metrics["flicker"] = self.val_flicker
        l1 = (x - recon).abs().mean()
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=x.shape[0])
        self.log(f"{stage}/l1", l1, batch_size=x.shape[0])
        return x, recon

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, recon = self._common_step(batch, "val")
        if batch_idx == 0:
            self._log_media(x, recon)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._common_step(batch, "test")

    # ----------------------------------------------------------------- logging / export
    def _log_media(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        """TensorBoard: a grid (target row over reconstruction row) and, for clips, a video."""
        if not isinstance(self.logger, TensorBoardLogger):
            return
        n = min(8, x.shape[1]) if x.shape[1] > 1 else min(8, x.shape[0])
        pick = (lambda v: v[0, :n]) if x.shape[1] > 1 else (lambda v: v[:n, 0])  # [n, 3, H, W]
        grid = torch.cat([pick(x), pick(recon)], dim=2)  # [n, 3, 2H, W]: target above reconstruction
        grid = rearrange((grid.detach().float().cpu() + 1) / 2, "n c h w -> c h (n w)").clamp(0, 1)
        self.logger.experiment.add_image("val/reconstruction", grid, self.global_step)
        if x.shape[1] > 1 and importlib.util.find_spec("moviepy") is not None:
            video = torch.cat([x[:1], recon[:1]], dim=3).detach().float().cpu()  # [1, T, 3, 2H, W]
            self.logger.experiment.add_video("val/video", (video + 1) / 2, self.global_step, fps=4)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        attach_model_to_checkpoint(checkpoint, MODEL_KIND, self.autoencoder.hparams, "autoencoder.")

    def _model_file_path(self) -> Path:
        if self.hparams.model_file:
            return Path(self.hparams.model_file)
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "model.safetensors"

    def on_fit_end(self) -> None:
        """Re-estimate the scale factor on ``scale_batches`` training batches (image stage; the temporal
        stage keeps the frozen encoder's inherited value) and write the model file."""
        ae = self.autoencoder
        if self.hparams.stage == "image" or not ae.has_scale_factor():
            gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed)
            batches = (b["video"].to(self.device) for b in self.trainer.train_dataloader)
            ae.eval()
            scale = estimate_scale_factor(ae, batches, gen, self.hparams.scale_batches)
            # every rank keeps rank 0's estimate: the one the model file holds
            ae.set_scale_factor(float(self.trainer.strategy.broadcast(scale, src=0)))
        if self.trainer.is_global_zero:
            path = save_model_file(self._model_file_path(), MODEL_KIND, ae.hparams, ae.state_dict(),
                                   overwrite=self.hparams.overwrite)
            print(f"autoencoder model file: {path} (scale_factor={float(ae.scale_factor):.4f})")


def _check_settings(stage: str, warmup_steps: int, lr_decay_fraction: float, latent_noise_mode: str,
                    compile_mode: str, **non_negative: float) -> None:
    """The training settings that can be checked before the network exists."""
    if stage not in STAGES:
        raise DriveSimInputError(f"stage must be one of {STAGES}", field="stage", value=stage)
    check_schedule(warmup_steps, lr_decay_fraction)
    for name, value in non_negative.items():
        if not value >= 0.0:
            raise DriveSimInputError(f"{name} must be >= 0", field=name, value=value)
    if latent_noise_mode not in NOISE_MODES:
        raise DriveSimInputError(f"latent_noise_mode must be one of {NOISE_MODES}", field="latent_noise_mode",
                                 value=latent_noise_mode)
    try:
        check_compile_mode(compile_mode)
    except ValueError as err:
        raise DriveSimInputError(str(err), field="compile_mode", value=compile_mode) from err


def _check_crop(train_crop: Sequence[int], factor: int) -> list[int]:
    """``[h, w]``, both multiples of the autoencoder's downsampling factor."""
    crop = [int(v) for v in train_crop]
    if len(crop) != 2 or min(crop) < factor or any(v % factor for v in crop):
        raise DriveSimInputError(f"train_crop must be [height, width], multiples of the downsampling "
                                 f"factor f={factor}", field="train_crop", value=crop)
    return crop
