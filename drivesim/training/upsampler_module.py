"""`UpsamplerModule`: the pixel-space video upsampler stage (Video LDM, sec. 3.3).

Glue only (docs/architecture.md, "Code style"): the network is `models.upsampler.VideoUpsampler`,
the loss `diffusion.losses.diffusion_loss`, sampling `inference.sample`. Batches are the
standard ``video`` ``[B,T,3,H,W]`` at the *high* resolution; the module makes the input:

1. low-resolution frames by area downsampling by ``scale``, bicubically upsampled back
   (``upsample_input``) on the whole frame;
2. one random patch per clip (``patch_size``, the same crop for all its frames, aligned to the
   network's stride) of the target and of its upsampled input: trained on patches, applied to
   whole frames;
3. one augmentation level per clip, uniform in 0..``max_aug_level``, noising the input
   (``augment_lowres``); the level is the network's conditioning label;
4. S context frames per clip (``context_probs`` over S = 0, 1, 2; S = 0 is the dropped
   context), re-imposed clean, left out of the loss;
5. with probability ``image_prob`` a step trains the frames independently (temporal layers off,
   no context), joint image-video training as in Ho et al. 2022, so the same weights also serve
   as the per-frame upsampler that the benchmark compares against.

Randomness comes from ``step_generator(seed, step, rank)``, in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from drivesim.diffusion.losses import diffusion_loss
from drivesim.diffusion.masks import masked_context, sample_context_masks
from drivesim.diffusion.parameterization import check_prediction
from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.inference import ModelRecord, load_model, upsampler_record
from drivesim.inference.upsampling import upsample_clip
from drivesim.models.compile import check_compile_mode, compile_network
from drivesim.models.conditioning import Conditioning
from drivesim.models.upsampler import (
    UPSAMPLER_KIND,
    VideoUpsampler,
    augment_lowres,
    downsample_frames,
    upsample_input,
)
from drivesim.training.budget import budget_progress, check_schedule, lr_factor, make_adam
from drivesim.training.checkpoints import attach_model_to_checkpoint, save_model_file
from drivesim.training.rng import step_generator
from drivesim.utils.io import DriveSimInputError


class UpsamplerModule(LightningModule):
    """Video upsampler training; the constructor signature is the config.

    Args:
        upsampler: the network (``class_path: drivesim.models.upsampler.VideoUpsampler``); its
            ``scale`` sets the low resolution (frame size / scale), its ``max_aug_level`` the
            augmentation range.
        init_from: an ``upsampler`` model file to continue from (another run's, ``drivesim train
            --init RUN``): its network and weights, in place of an ``upsampler`` block (never both);
            its prediction and schedule must equal this config's.
        prediction, num_train_steps, schedule, beta_start, beta_end: the VP schedule of both the
            diffusion and the noise augmentation (pixel space: ``cosine``).
        aug_level: the augmentation level used at inference (paper: 150), stored in the model file.
        patch_size: (h, w) of the high-resolution training patches; None trains on whole frames.
        context_probs: P(S = 0), P(S = 1), P(S = 2) clean context frames per clip.
        image_prob: probability that a step trains per-frame (temporal layers off, no context).
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023), None = the plain loss.
        lr, weight_decay, betas, warmup_steps, lr_decay_fraction: AdamW with linear warm-up and a
            linear decay over the last fraction of the budget (``training/budget.py``).
        val_sample_steps, num_val_samples, val_seed: validation samples (PSNR against bicubic).
        model_file, overwrite: where ``on_fit_end`` writes the ``upsampler`` model file (default
            ``<log_dir>/model.safetensors``) and whether it may replace one.
        compile, compile_mode: ``torch.compile`` the network's UNet in place before training (one
            graph, ``models/compile.py``); mode ``default``, ``max-autotune-no-cudagraphs`` or, on
            CUDA, ``reduce-overhead``.
    """

    def __init__(self, upsampler: VideoUpsampler | None = None, init_from: str | None = None,
                 prediction: str = "v", num_train_steps: int = 1000,
                 schedule: str = "cosine", beta_start: float = 0.0015, beta_end: float = 0.0195,
                 aug_level: int = 150, patch_size: Sequence[int] | None = (128, 128),
                 context_probs: Sequence[float] = (0.25, 0.0, 0.75), image_prob: float = 0.25,
                 snr_gamma: float | None = None,
                 lr: float = 1e-4, weight_decay: float = 0.0, betas: Sequence[float] = (0.9, 0.999),
                 warmup_steps: int = 500, lr_decay_fraction: float = 0.0, val_sample_steps: int = 5,
                 num_val_samples: int = 2, val_seed: int = 0, seed: int = 0,
                 model_file: str | None = None, overwrite: bool = False, compile: bool = False,
                 compile_mode: str = "default") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["upsampler"])
        check_compile_mode(compile_mode)
        check_prediction(prediction)
        check_schedule(warmup_steps, lr_decay_fraction)
        if init_from is not None:
            if upsampler is not None:
                raise DriveSimInputError("the network comes from init_from, so an upsampler block would state it "
                                         "twice; remove one (--model.init_args.upsampler null)", field="upsampler",
                                         value=type(upsampler).__name__)
            upsampler = _upsampler_from_file(init_from, prediction, num_train_steps, schedule, beta_start, beta_end)
        if not isinstance(upsampler, VideoUpsampler):
            raise DriveSimInputError("expected a VideoUpsampler (an upsampler block) or init_from", field="upsampler",
                                     value=type(upsampler).__name__)
        if not (isinstance(aug_level, int) and 0 <= aug_level <= upsampler.max_aug_level):
            raise DriveSimInputError(f"expected an int in [0, {upsampler.max_aug_level}] (max_aug_level)",
                                     field="aug_level", value=aug_level)
        if not 0.0 <= image_prob < 1.0:
            raise DriveSimInputError("expected a probability in [0, 1)", field="image_prob", value=image_prob)
        if snr_gamma is not None and not snr_gamma > 0:
            raise DriveSimInputError("expected None or > 0", field="snr_gamma", value=snr_gamma)
        self.upsampler = upsampler
        if compile:
            compile_network(upsampler, compile_mode)  # its UNet, in place: state-dict keys stay unchanged
        self.schedule = DiscreteVPSchedule(num_train_steps, schedule, beta_start, beta_end)
        if self.schedule.num_steps <= upsampler.max_aug_level:
            raise DriveSimInputError("the schedule has fewer steps than augmentation levels",
                                     field="num_train_steps", value=num_train_steps)
        self.align = math.lcm(upsampler.scale, upsampler.size_multiple)
        self.patch = _check_patch(patch_size, self.align)
        self._data_info: dict[str, Any] = {}

    # -- model file ------------------------------------------------------------------------
    def model_hparams(self) -> dict[str, Any]:
        """Hyper-parameters of the ``upsampler`` model file (``models.upsampler.build_upsampler``)."""
        hp, net = self.hparams, self.upsampler
        return {"network": net.config, "prediction": hp.prediction,
                "schedule": {"num_steps": hp.num_train_steps, "kind": hp.schedule,
                             "beta_start": hp.beta_start, "beta_end": hp.beta_end},
                "aug_level": hp.aug_level, "max_aug_level": net.max_aug_level, "scale": net.scale,
                "fps": self._data_info.get("fps"),
                "num_frames": self._data_info.get("num_frames", net.unet.max_frames)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        attach_model_to_checkpoint(checkpoint, UPSAMPLER_KIND, self.model_hparams(), "upsampler.")

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self._data_info and "fps" in batch:  # recorded in the model file for rollouts
            self._data_info = {"fps": float(batch["fps"][0]), "num_frames": int(batch["video"].shape[1])}

    def on_fit_end(self) -> None:
        """Write the model file (kind ``upsampler``) next to the logs, or to ``model_file``."""
        if not self.trainer.is_global_zero:
            return
        path = Path(self.hparams.model_file or Path(self.trainer.log_dir or self.trainer.default_root_dir)
                    / "model.safetensors")
        save_model_file(path, UPSAMPLER_KIND, self.model_hparams(), self.upsampler.state_dict(),
                        overwrite=self.hparams.overwrite)
        print(f"upsampler model file: {path}")

    def inference_record(self) -> ModelRecord:
        return upsampler_record(self.upsampler, self.model_hparams())

    # -- batch -> (target, conditioning) ---------------------------------------------------
    def _video(self, batch: dict[str, Any]) -> torch.Tensor:
        video = batch.get("video")
        if video is None or video.dim() != 5 or video.shape[2] != 3:
            raise DriveSimInputError("upsampler batches need 'video' [B,T,3,H,W] at the high resolution",
                                     field="batch.video", value=None if video is None else tuple(video.shape))
        if video.shape[-2] % self.align or video.shape[-1] % self.align:
            raise DriveSimInputError(f"frame size must be divisible by {self.align} (scale x network stride)",
                                     field="data.height/width", value=tuple(video.shape[-2:]))
        return video

    def training_pair(self, video: torch.Tensor, generator: torch.Generator | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(target patch, its clean upsampled low-res input), both ``[B,T,3,ph,pw]`` frames."""
        s = self.upsampler.scale
        up = upsample_input(downsample_frames(video, s), s)                   # [B, T, 3, H, W]
        if self.patch is None:
            return video, up
        return random_patches([video, up], self.patch, self.align, generator)

    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator | None,
                     train: bool = True) -> torch.Tensor:
        """Diffusion loss of one batch; per-frame (``image_prob``) steps only when ``train``."""
        frames, up = self.training_pair(self._video(batch), generator)
        x0 = self.upsampler.to_diffusion(frames, up)                         # [B, T, 3, ph, pw]
        b, t = x0.shape[:2]
        level = torch.randint(0, self.upsampler.max_aug_level + 1, (b,), generator=generator)
        lowres = augment_lowres(up, level, self.schedule, generator)
        mask, _ = sample_context_masks(b, t, self.hparams.context_probs, generator)
        per_frame = bool(torch.rand((), generator=generator) < self.hparams.image_prob) and train
        mask = (mask * (0.0 if per_frame else 1.0)).to(x0.device)
        given = bool(mask.any())
        cond = Conditioning(lowres=lowres, regime=level.to(x0.device),
                            context=masked_context(x0, mask) if given else None,
                            context_mask=mask if given else None)
        with frames_independent(self.upsampler, per_frame):
            return diffusion_loss(self.upsampler, x0, cond, self.schedule, generator=generator,
                                  prediction=self.hparams.prediction, loss_mask=1.0 - mask,
                                  snr_gamma=self.hparams.snr_gamma)

    # -- steps -----------------------------------------------------------------------------
    def _common_step(self, batch: dict[str, Any], stage: str, generator: torch.Generator | None
                     ) -> torch.Tensor:
        loss = self.compute_loss(batch, generator, train=stage == "train")
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_step=stage == "train",
                 on_epoch=True, batch_size=batch["video"].shape[0], sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train", step_generator(self.hparams.seed, self.global_step,
                                                                self.global_rank))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.hparams.val_seed + 7919 * batch_idx)
        loss = self._common_step(batch, "val", gen)
        if batch_idx == 0 and self.hparams.num_val_samples > 0:
            self._log_validation_psnr(self._video(batch)[: self.hparams.num_val_samples])
        return loss

    @torch.no_grad()
    def _log_validation_psnr(self, video: torch.Tensor) -> None:
        """PSNR of whole-frame samples (one chunk) and of bicubic upsampling against the frames."""
        s = self.upsampler.scale
        low = downsample_frames(video, s)
        hi = upsample_clip(self.inference_record(), low, steps=self.hparams.val_sample_steps,
                           generator=torch.Generator().manual_seed(self.hparams.val_seed), chunk=video.shape[1])
        scores = {"val/psnr": psnr(hi, video).mean(), "val/psnr_bicubic": psnr(upsample_input(low, s), video).mean()}
        self.log_dict(scores, batch_size=video.shape[0], sync_dist=True)

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = make_adam(list(self.upsampler.parameters()), hp.lr, tuple(hp.betas), hp.weight_decay,
                              decoupled=True)
        warmup, decay = max(int(hp.warmup_steps), 0), float(hp.lr_decay_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, budget_progress(self._trainer), warmup, decay))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# -- helpers (also used by the benchmark and the rollout stream) -----------------------------
def _check_patch(patch: Sequence[int] | None, align: int) -> tuple[int, int] | None:
    if patch is None:
        return None
    if len(patch) != 2 or any(not isinstance(p, int) or p <= 0 or p % align for p in patch):
        raise DriveSimInputError(f"expected (h, w), positive multiples of {align} (scale x network stride)",
                                 field="patch_size", value=list(patch))
    return int(patch[0]), int(patch[1])


def random_patches(videos: list[torch.Tensor], patch: tuple[int, int], align: int,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
    """The same random ``patch`` crop of every tensor ``[B,T,C,H,W]`` in ``videos``, one crop per
    clip (shared by its frames), offsets multiples of ``align`` -> tensors ``[B,T,C,ph,pw]``."""
    b, _, _, height, width = videos[0].shape
    ph, pw = patch
    if ph > height or pw > width:
        raise DriveSimInputError(f"the patch is larger than the frames {(height, width)}", field="patch_size",
                                 value=list(patch))
    ys = torch.randint(0, (height - ph) // align + 1, (b,), generator=generator) * align
    xs = torch.randint(0, (width - pw) // align + 1, (b,), generator=generator) * align
    return tuple(torch.stack([v[i, :, :, y:y + ph, x:x + pw] for i, (y, x) in
                              enumerate(zip(ys.tolist(), xs.tolist()))]) for v in videos)


@contextmanager
def frames_independent(network: VideoUpsampler, enabled: bool) -> Iterator[None]:
    """Temporarily switch the temporal layers off (``image_only``) when ``enabled``."""
    before = network.image_only
    network.image_only = before or enabled
    try:
        yield
    finally:
        network.image_only = before


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per clip of frames in [-1, 1]: ``[B,T,C,H,W]`` pair -> ``[B]``."""
    mse = ((x.float().clamp(-1, 1) - y.float()) / 2.0).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _upsampler_from_file(path: str, prediction: str, num_steps: int, kind: str, beta_start: float,
                         beta_end: float) -> VideoUpsampler:
    """The network of ``upsampler`` model file ``path`` with its weights, in training mode; its
    diffusion settings must be the config's (a continued network learned those targets)."""
    record = load_model(path, "upsampler")
    schedule = record.hparams.get("schedule", {})
    pairs = {"prediction": (record.hparams.get("prediction"), prediction),   # config field: (file, config)
             "num_train_steps": (schedule.get("num_steps"), num_steps), "schedule": (schedule.get("kind"), kind),
             "beta_start": (schedule.get("beta_start"), beta_start), "beta_end": (schedule.get("beta_end"), beta_end)}
    for name, (found, stated) in pairs.items():
        if found != stated:
            raise DriveSimInputError(f"init_from was trained with {name}={found!r}", path=path, field=name,
                                     value=stated)
    return record.network.train()
