"""Lightning glue for the autoencoder stages (DESIGN stage 1 and 1b).

- ``stage="image"``: the per-frame KL autoencoder with a 2D PatchGAN (LDM recipe).
- ``stage="temporal"``: initialised from an image-stage model file (``init_from``), the
  encoder is frozen, the decoder gains 3D-conv temporal blocks, and only the 3D video
  discriminator judges T-frame clips (Video LDM Sec. 3.1.1).

Loss per frame (LDM ``LPIPSWithDiscriminator``, without the learned log-variance):
``L = sum|x - x_hat| (+ w_p LPIPS) + w_kl KL + lambda_adv * disc_weight * (-E[D(x_hat)])``, with
``lambda_adv = ||grad_last L_rec|| / (||grad_last L_gan|| + 1e-4)`` at the last decoder layer and the
GAN terms switched on from ``disc_start`` training steps. Two optimizers, manual optimisation
(so ``trainer.max_steps`` counts optimizer steps: 1 per batch before ``disc_start``, 2 after).
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
from drivesim.models.discriminators import PatchDiscriminator2d, VideoDiscriminator3d, hinge_d_loss
from drivesim.models.lpips import load_lpips
from drivesim.training.budget import budget_progress, check_schedule, lr_factor, make_adam
from drivesim.training.checkpoints import (
    attach_model_to_checkpoint,
    load_model_file,
    save_model_file,
)
from drivesim.training.rng import step_generator
from drivesim.utils.io import DriveSimInputError

STAGES = ("image", "temporal")
NOISE_MODES = ("fixed", "uniform")
_SHAPE_KEYS = ("base_channels", "ch_mult", "num_res_blocks", "latent_channels", "in_channels", "patch_size")


def flicker(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Temporal flicker: mean |(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])| over ``[B, T, 3, H, W]`` (T >= 2),
    in the units of the inputs; it is zero when the errors are constant in time."""
    if recon.shape[1] < 2:
        raise ValueError(f"flicker needs T >= 2 frames, got shape {tuple(recon.shape)}")
    return _frame_change_error(recon, target).mean()


def _frame_change_error(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])| per pixel, ``[B, T - 1, C, H, W]``."""
    return ((recon[:, 1:] - recon[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs()


def flicker_split(recon: torch.Tensor, target: torch.Tensor, threshold: float = 0.03) -> tuple[torch.Tensor, ...]:
    """The flicker metric on pixels whose true change ``max_c |x[t+1] - x[t]|`` is at most ``threshold``
    ("static": content that barely changes, so any error change there is the decoder's own flicker)
    and on the others ("moving"), plus the moving fraction of pixels; ``[B, T, 3, H, W]`` in [0, 1].
    A mean over an empty set is NaN."""
    if recon.shape != target.shape or recon.ndim != 5 or recon.shape[1] < 2:
        raise ValueError(f"flicker_split needs two equal [B, T >= 2, C, H, W] tensors, got {tuple(recon.shape)} "
                         f"and {tuple(target.shape)}")
    err = _frame_change_error(recon, target)
    moving = ((target[:, 1:] - target[:, :-1]).abs().amax(dim=2, keepdim=True) > threshold).expand_as(err)
    nan = torch.tensor(float("nan"))
    static_err, moving_err = err[~moving], err[moving]
    return (static_err.mean() if static_err.numel() else nan, moving_err.mean() if moving_err.numel() else nan,
            moving.float().mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """LDM adaptive GAN weight ||grad rec|| / (||grad gan|| + 1e-4) at ``last_layer``, clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class AutoencoderModule(LightningModule):
    """Trains :class:`AutoencoderKL`; the constructor arguments are the YAML config.

    ``train_crop: [h, w]`` trains on one random window per batch (multiples of the downsampling
    factor; validation uses full frames). ``warmup_steps`` / ``lr_decay_fraction``: the budget
    schedule of both optimizers (``training/budget.py``: linear decay over the last fraction
    of ``max_steps`` or ``max_time``, whichever ends first). ``flicker_weight`` (temporal stage,
    beyond the paper) adds ``w * sum |(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])|`` per frame pair, a
    direct penalty on the flicker metric next to the video discriminator. ``latent_noise``
    (beyond the paper) decodes ``z + s * std_c(z) * eps`` in training (robust decoder; std per latent
    channel; s = ``latent_noise``, or per sample U(0, ``latent_noise``) with ``latent_noise_mode:
    uniform``). ``l2_weight`` adds ``w_2 * sum (x - x_hat)^2`` to the per-frame L1 sum:
    PSNR is a squared error, and the squared term weighs the large errors (lamps, tail lights,
    lane edges) that L1 leaves blurred. ``spatial_lr_scale`` (temporal stage with a trainable spatial
    decoder): the spatial decoder layers train at ``learning_rate * spatial_lr_scale``, the temporal
    blocks and alpha at ``learning_rate``.
    """

    def __init__(self, stage: str = "image", base_channels: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 4),
                 num_res_blocks: int = 2, latent_channels: int = 4, temporal_kernel: int = 3,
                 temporal_spatial_kernel: int = 3, patch_size: int = 1, logvar_init: float = 0.0,
                 dropout: float = 0.0, learning_rate: float = 4.5e-6, disc_learning_rate: float | None = None,
                 kl_weight: float = 1e-6, lpips_path: str | None = None, lpips_weight: float = 1.0,
                 disc_weight: float = 0.5, disc_start: int = 50001, disc_channels: int = 64, disc_layers: int = 3,
                 init_from: str | None = None, freeze_spatial_decoder: bool = False, scale_batches: int = 4,
                 model_file: str | None = None, overwrite: bool = False, seed: int = 0,
                 train_crop: Sequence[int] | None = None, warmup_steps: int = 0,
                 lr_decay_fraction: float = 0.0, flicker_weight: float = 0.0, latent_noise: float = 0.0,
                 latent_noise_mode: str = "fixed", l2_weight: float = 0.0,
                 spatial_lr_scale: float = 1.0) -> None:
        super().__init__()
        if stage not in STAGES:
            raise DriveSimInputError(f"stage must be one of {STAGES}", field="stage", value=stage)
        check_schedule(warmup_steps, lr_decay_fraction)
        for name, value in (("flicker_weight", flicker_weight), ("latent_noise", latent_noise),
                            ("l2_weight", l2_weight), ("spatial_lr_scale", spatial_lr_scale)):
            if not value >= 0.0:
                raise DriveSimInputError(f"{name} must be >= 0", field=name, value=value)
        if latent_noise_mode not in NOISE_MODES:
            raise DriveSimInputError(f"latent_noise_mode must be one of {NOISE_MODES}", field="latent_noise_mode",
                                     value=latent_noise_mode)
        if train_crop is not None:
            train_crop = [int(v) for v in train_crop]
            f = patch_size * 2 ** (len(ch_mult) - 1)
            if len(train_crop) != 2 or min(train_crop) < f or any(v % f for v in train_crop):
                raise DriveSimInputError(f"train_crop must be [height, width], multiples of the downsampling "
                                         f"factor f={f}", field="train_crop", value=train_crop)
        if stage == "temporal" and not init_from:
            raise DriveSimInputError("the temporal stage starts from an image-stage model file; set init_from",
                                     field="init_from", value=init_from)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.autoencoder = AutoencoderKL(base_channels, ch_mult, num_res_blocks, latent_channels, dropout=dropout,
                                         temporal_decoder=stage == "temporal", temporal_kernel=temporal_kernel,
                                         temporal_spatial_kernel=temporal_spatial_kernel, patch_size=patch_size,
                                         logvar_init=logvar_init)
        if init_from:
            self._init_from(Path(init_from))
        disc_cls = VideoDiscriminator3d if stage == "temporal" else PatchDiscriminator2d
        self.discriminator = disc_cls(3, disc_channels, disc_layers)
        self._lpips = [load_lpips(lpips_path)] if lpips_path else []  # a list: kept out of the state dict
        self._frozen = self._freeze()
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_var_ema", torch.tensor(math.nan))
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_flicker = MeanMetric()

    # ----------------------------------------------------------------- setup
    def _init_from(self, path: Path) -> None:
        """Load image- (or temporal-) stage weights; the spatial architecture must match exactly."""
        hparams, state = load_model_file(path, MODEL_KIND)
        ours = self.autoencoder.hparams
        for key in _SHAPE_KEYS:
            if key in hparams and hparams[key] != ours[key]:
                raise DriveSimInputError(f"init_from has {key}={hparams[key]!r} but this config has {ours[key]!r}",
                                         path=path, field=key, value=hparams[key])
        try:
            missing, unexpected = self.autoencoder.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensor shapes disagree
            raise DriveSimInputError(f"weights do not fit: {str(err)[:300]}", path=path, field="state_dict") from err
        temporal_names = {n for n, _ in self.autoencoder.named_parameters() if "temporal" in n}
        bad_missing = [k for k in missing if k not in temporal_names]
        if bad_missing or unexpected:
            raise DriveSimInputError(f"weights do not fit: missing {bad_missing[:4]}, unexpected {unexpected[:4]}",
                                     path=path, field="state_dict")

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
        last = self.autoencoder.decoder_last_layer()
        if last.requires_grad:
            return last
        return self.autoencoder.decoder.temporal_mixes()[-1].block.conv2.weight  # last trainable layer

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

    def _rng(self, device: torch.device) -> torch.Generator:
        """Posterior-sample noise of this training step: a pure function of (seed, step, rank),
        so a resumed run draws what an uninterrupted one would (training/rng.py)."""
        return step_generator(self.hparams.seed, int(self.train_steps), self.global_rank)

    # ----------------------------------------------------------------- losses
    def _posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        if self.hparams.stage == "temporal":
            with torch.no_grad():
                return self.autoencoder.encode(x)
        return self.autoencoder.encode(x)

    def _rec_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-frame sum of |x - x_hat| (+ w_2 (x - x_hat)^2) (+ w_p * LPIPS per pixel), averaged
        over frames (LDM, with an optional squared term)."""
        frames = x.shape[0] * x.shape[1]
        diff = x - recon
        rec = diff.abs().sum() / frames
        if self.hparams.l2_weight:
            rec = rec + self.hparams.l2_weight * diff.pow(2).sum() / frames
        if self._lpips:
            lpips = self._lpips[0].to(x.device)
            rec = rec + self.hparams.lpips_weight * lpips(x, recon).sum() * x[0, 0].numel() / frames
        return rec

    def _generator_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        hp = self.hparams
        posterior = self._posterior(x)
        gen = self._rng(x.device)
        z = posterior.sample(gen)
        recon = self.autoencoder.decode(self._noisy_latents(z, gen)).float()  # float32 losses under bf16-mixed
        rec = self._rec_loss(x, recon)
        kl = posterior.kl().mean()
        loss = rec + hp.kl_weight * kl
        logs = {"rec_loss": rec.detach(), "kl": kl.detach(), "l1": (x - recon).abs().mean().detach()}
        if hp.flicker_weight > 0 and x.shape[1] > 1:
            # sum over pixels of |(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])| per frame pair: the
            # flicker metric in the units of the per-frame L1 sum
            diff = _frame_change_error(recon, x)
            temporal = diff.sum() / (diff.shape[0] * diff.shape[1])
            loss = loss + hp.flicker_weight * temporal
            logs["flicker_loss"] = temporal.detach()
        if int(self.train_steps) >= hp.disc_start:
            g_loss = -self.discriminator(recon).mean()
            weight = adaptive_weight(rec, g_loss, self._adaptive_layer()) * hp.disc_weight
            loss = loss + weight * g_loss
            logs.update(g_loss=g_loss.detach(), d_weight=weight)
        self._track_latent_variance(z.detach())
        return loss, recon, logs

    def _noisy_latents(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z + s * std_c(z) * eps, with std_c the batch std of each latent channel c (detached) and the
        level s = ``latent_noise`` (mode ``fixed``) or, per sample, s ~ U(0, ``latent_noise``) (mode
        ``uniform``): the decoder learns to render slightly-off latents smoothly. Why: with
        kl_weight ~1e-6 the posterior std collapses (~1% of the latent std), so the decoder only ever
        sees exact latents and turns a diffusion model's residual latent noise into high-frequency
        texture. Per channel, because the channels' scales differ by up to 4x in trained models (one
        global std drowned the small ones). The level costs reconstruction: in 8-minute runs a fixed 0.4
        plateaued at 25.4 dB, uniform U(0, 0.4) reached 28.1, a fixed 0.1 29.1 and no
        noise 29.4 dB; the tiny configs keep 0.4, whose latents the demo's LDMs learn (docs/autoencoder.md)."""
        hp = self.hparams
        if hp.latent_noise == 0.0:
            return z
        eps = torch.randn(z.shape, generator=generator, device=generator.device).to(z)
        level = torch.full((z.shape[0],), hp.latent_noise, device=generator.device)  # [B]
        if hp.latent_noise_mode == "uniform":
            level *= torch.rand(z.shape[0], generator=generator, device=generator.device)
        level = level.to(z).view(-1, *([1] * (z.dim() - 1)))  # [B, 1, 1, 1, 1]
        dims = [d for d in range(z.dim()) if d != 2]  # z is [B, T, C, h, w]
        return z + level * z.detach().float().std(dim=dims, keepdim=True).to(z) * eps

    def _track_latent_variance(self, z: torch.Tensor) -> None:
        """Running (EMA) latent variance so that every Lightning checkpoint carries a usable scale
        factor; fit end replaces it by a fresh estimate. The temporal stage keeps the inherited one."""
        if self.hparams.stage == "temporal" and self.autoencoder.has_scale_factor():
            return
        var = z.double().var().float()
        ema = self.latent_var_ema
        self.latent_var_ema.copy_(var if torch.isnan(ema) else 0.99 * ema + 0.01 * var)
        self.autoencoder.set_scale_factor(float(self.latent_var_ema.clamp_min(1e-12).rsqrt()))

    # ----------------------------------------------------------------- steps
    def _random_crop(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W] -> [B, T, 3, h, w]``: one random ``train_crop`` window for the whole batch,
        drawn from the step's generator. The networks are fully convolutional, so training on crops
        costs H*W / (h*w) times less per step; validation uses the full frame. One window per batch
        rather than per clip: in paired 3-minute CPU runs it reached 23.6 vs 21.5 dB (docs/autoencoder.md)."""
        if self.hparams.train_crop is None:
            return x
        (h, w), (full_h, full_w) = self.hparams.train_crop, x.shape[-2:]
        if h > full_h or w > full_w:
            raise DriveSimInputError(f"train_crop is larger than the frames ({full_h} x {full_w})",
                                     field="train_crop", value=list(self.hparams.train_crop))
        gen = step_generator(self.hparams.seed + 1, int(self.train_steps), self.global_rank)
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
        if int(self.train_steps) >= self.hparams.disc_start:
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
        return Path(root) / "autoencoder.safetensors"

    def on_fit_end(self) -> None:
        """Re-estimate the scale factor on ``scale_batches`` training batches (image stage; the temporal
        stage keeps the frozen encoder's inherited value) and write the model file."""
        ae = self.autoencoder
        if self.hparams.stage == "image" or not ae.has_scale_factor():
            gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed)
            batches = (b["video"].to(self.device) for b in self.trainer.train_dataloader)
            ae.eval()
            ae.set_scale_factor(estimate_scale_factor(ae, batches, gen, self.hparams.scale_batches))
        if self.trainer.is_global_zero:
            path = save_model_file(self._model_file_path(), MODEL_KIND, ae.hparams, ae.state_dict(),
                                   overwrite=self.hparams.overwrite)
            print(f"autoencoder model file: {path} (scale_factor={float(ae.scale_factor):.4f})")
