"""`LatentDiffusionModule`: image, video (prediction) and interpolation LDM training.

Glue only (docs/architecture.md, "Code style"): the UNet (`drivesim.models.unet`), the
schedule, loss, samplers, guidance and masks (`drivesim.diffusion`) do the work. Stages (Video
LDM, Blattmann et al. 2023; docs/architecture.md, "Pipeline stages"): ``image`` trains a
spatial UNet on latents (stage 2); ``video`` trains the temporal layers of a video UNet
initialised from an image checkpoint, with S in {0, 1, 2} context frames (stage 3);
``interpolation`` uses key frames 0 and T-1 as context plus a regime label (stage 4). The frozen autoencoder comes from its own model file (``autoencoder_path``); its
hyper-parameters are never restated in the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from lightning.pytorch import LightningModule

from drivesim.data.labels import VEHICLE_CLASSES
from drivesim.diffusion.losses import TIMESTEP_SAMPLING, diffusion_loss
from drivesim.diffusion.masks import (
    interpolation_mask,
    masked_context,
    sample_context_masks,
)
from drivesim.diffusion.parameterization import check_prediction
from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.inference import (
    LDM_KIND,
    ModelRecord,
    diffusion_record,
    guidance_scales,
    load_model,
    sample,
)
from drivesim.models.compile import check_compile_mode, compile_network
from drivesim.models.conditioning import Conditioning, box_layout
from drivesim.models.unet import UNet, parameter_group
from drivesim.training.budget import budget_progress, check_schedule, lr_factor, make_adam
from drivesim.training.checkpoints import attach_model_to_checkpoint, save_model_file
from drivesim.training.rng import step_generator
from drivesim.training.sample_grid import log_sample_grid
from drivesim.training.stage_networks import (
    TemporalLayers,
    as_temporal_layers,
    load_added_layers,
    stage_unet,
    state_keys,
)
from drivesim.utils.io import DriveSimInputError

STAGES = ("image", "video", "interpolation")
UNET_KIND = LDM_KIND  # the model-file kind drivesim.inference.load_model reads back
TRAINED_GROUPS = {"image": ("spatial", "conditioning", "temporal", "context", "ego"),
                  "video": ("temporal", "context", "ego"), "interpolation": ("temporal", "context", "ego")}


class LatentDiffusionModule(LightningModule):
    """Latent diffusion training; the constructor signature is the config.

    Args:
        unet: the image stage's network (``class_path: drivesim.models.unet.UNet``,
            ``temporal: false``). The video stages take theirs from ``init_from``; a ``unet``
            there is a full video UNet (``temporal: true, use_context: true``) given without
            ``init_from``, e.g. rebuilt from a checkpoint (``training/stage_networks.py``).
        stage: ``image`` | ``video`` | ``interpolation``.
        autoencoder_path: frozen autoencoder model file; needed to encode ``video`` batches
            and to decode validation samples (optional when batches carry ``latents``).
        init_from: image-LDM checkpoint (.ckpt / model file). Video stages: its UNet config and
            spatial weights are the video UNet's spatial part (temporal layers start new); image
            stage: the full weights for the configured ``unet``.
        temporal_from: video stages: a trained model file of the same stage (another run's) whose
            temporal, context and ego layers replace the new ones at their init; the spatial
            layers stay ``init_from``'s (``drivesim train --init RUN`` passes it).
        temporal_layers: video stages: what they add to the image UNet of ``init_from``
            (``TemporalLayers``: max_frames, alpha_mode, use_context, context_channels,
            context_input, num_regimes (interpolation: 2), ...); the spatial keys are never restated.
        prediction: ``v`` (paper) or ``eps``.
        num_train_steps, schedule, beta_start, beta_end: the VP schedule (paper: 1000, LDM
            linear-in-sqrt(beta), 0.0015 -> 0.0195).
        drop_boxes, drop_labels, drop_context, drop_ego: per-condition dropout for classifier-free
            guidance (paper: 10%); ``drop_context`` forces S = 0 on top of ``context_probs``;
            ``drop_ego`` replaces a clip's ego motion by the learned null (UNets with ``use_ego``).
        context_probs: P(S = 0), P(S = 1), P(S = 2) context frames (video stage).
        loss_on_context_frames: also regress the (clean-given) context frames.
        regime_fps_split: interpolation windows with fps below it get regime 0
            (1.875 -> 7.5 fps), others regime 1 (7.5 -> 30 fps); a batch ``regime`` wins.
        lr, weight_decay, betas, warmup_steps: AdamW with linear warm-up.
        lr_decay_fraction: linear decay of the lr over the last fraction of the budget
            (``max_steps`` or ``max_time``, whichever ends first; ``training/budget.py``).
        box_loss_weight: lambda of the box-weighted loss: latent cells covered by vehicle boxes
            weigh 1 + lambda (GeoDiffusion-style foreground re-weighting; 0 = plain loss).
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023; typical 5), None = off.
        timesteps, timestep_mean, timestep_std: training noise-level distribution, ``uniform``
            (DDPM, default) or ``logit_normal`` (SD3: sigmoid(mean + std * n) of the range).
        train_spatial_lr_scale: video stages: 0 freezes spatial + conditioning layers (only
            temporal / context parameters are optimised); > 0 trains them at lr * scale.
        blend_lr_scale: video stages: the alpha-blend logits (``*.blend.mix``) train at
            lr * scale, without weight decay (1 = like the other temporal parameters). One scalar
            per frame and layer moves slowly at the temporal layers' lr, so the blend stays near
            its initial value in a short run.
        latent_size: (h, w) of generated latents when no batch gives the size.
        val_sample_steps, num_val_samples, val_guidance, val_seed: validation sampling (DDIM).
        model_file, overwrite: where ``on_fit_end`` writes the UNet model file (kind ``ldm``;
            default ``<log_dir>/model.safetensors``) and whether it may replace one.
        compile, compile_mode: ``torch.compile`` the UNet in place before training (one graph,
            ``models/compile.py``); mode ``default``, ``max-autotune-no-cudagraphs`` or, on
            CUDA, ``reduce-overhead`` (docs/scaling.md, "Compiled training and sampling").
    """

    def __init__(self, unet: UNet | None = None, stage: str = "image", autoencoder_path: str | None = None,
                 init_from: str | None = None, temporal_layers: TemporalLayers | None = None,
                 temporal_from: str | None = None, prediction: str = "v", num_train_steps: int = 1000,
                 schedule: str = "linear", beta_start: float = 0.0015, beta_end: float = 0.0195,
                 drop_boxes: float = 0.1, drop_labels: float = 0.1, drop_context: float = 0.1,
                 drop_ego: float = 0.1,
                 context_probs: Sequence[float] = (0.34, 0.33, 0.33),
                 loss_on_context_frames: bool = False, regime_fps_split: float = 15.0,
                 lr: float = 1e-4, weight_decay: float = 0.0, betas: Sequence[float] = (0.9, 0.999),
                 warmup_steps: int = 1000, train_spatial_lr_scale: float = 0.0, blend_lr_scale: float = 1.0,
                 latent_size: Sequence[int] = (8, 16), val_sample_steps: int = 20,
                 num_val_samples: int = 4, val_guidance: float = 2.0, val_seed: int = 0,
                 seed: int = 0, model_file: str | None = None, overwrite: bool = False, compile: bool = False,
                 compile_mode: str = "default",
                 lr_decay_fraction: float = 0.0, box_loss_weight: float = 0.0,
                 snr_gamma: float | None = None, timesteps: str = "uniform",
                 timestep_mean: float = 0.0, timestep_std: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["unet"])
        if temporal_layers is not None:  # a plain mapping in the hparams: checkpoints load weights-only
            self.hparams.temporal_layers = asdict(as_temporal_layers(temporal_layers))
        check_schedule(warmup_steps, lr_decay_fraction)
        _check_config(stage, prediction, timesteps,
                      probabilities={"drop_boxes": drop_boxes, "drop_labels": drop_labels, "drop_context": drop_context,
                                     "drop_ego": drop_ego},
                      non_negative={"box_loss_weight": box_loss_weight},
                      positive={"blend_lr_scale": blend_lr_scale, "timestep_std": timestep_std, "snr_gamma": snr_gamma})
        unet, initialised = stage_unet(stage, unet, temporal_layers, init_from)
        _check_unet(unet, stage)
        self.unet = unet
        self.schedule = DiscreteVPSchedule(num_train_steps, schedule, beta_start, beta_end)
        self.autoencoder = _load_frozen_autoencoder(autoencoder_path)
        if init_from and not initialised:
            self._init_from(init_from)
        if temporal_from:
            if stage == "image" or not init_from:
                raise DriveSimInputError("temporal_from adds a video stage's trained layers to the image model of "
                                         "init_from; set both, in a video or interpolation stage",
                                         field="temporal_from", value=temporal_from)
            role = "prediction" if stage == "video" else "interpolation"
            load_added_layers(self.unet, state_keys(init_from), temporal_from, role)
        self._freeze_untrained_groups()
        self._data_info: dict[str, Any] = {}
        check_compile_mode(compile_mode)
        if compile:
            compile_network(self.unet, compile_mode)  # in place: state-dict keys stay unchanged

    # -- construction helpers -----------------------------------------------------------
    def _init_from(self, path: str) -> None:
        """Image stage: the full weights of an image model file into the configured UNet (the video
        stages build their UNet from ``init_from`` in ``stage_unet``)."""
        state = load_unet_state(path)
        video_keys = [k for k in state if parameter_group(k) in ("temporal", "context")]
        if video_keys:
            raise DriveSimInputError(f"a video checkpoint cannot initialise the image stage "
                                     f"(temporal keys such as {video_keys[:2]})", path=path, field="init_from")
        try:
            self.unet.load_state_dict(state)
        except RuntimeError as err:  # keys / shapes differ from this UNet's config
            raise DriveSimInputError(f"image weights do not match the UNet config: {str(err)[:300]}",
                                     path=path, field="init_from") from err

    def _trained_groups(self) -> tuple[str, ...]:
        groups = TRAINED_GROUPS[self.hparams.stage]
        if self.hparams.stage != "image" and self.hparams.train_spatial_lr_scale > 0:
            groups = groups + ("spatial", "conditioning")
        return groups

    def _freeze_untrained_groups(self) -> None:
        trained = self._trained_groups()
        for name, p in self.unet.named_parameters():
            p.requires_grad_(parameter_group(name) in trained)

    def model_hparams(self) -> dict[str, Any]:
        """Hyper-parameters of the ``ldm`` model file: everything a sampler needs."""
        hp = self.hparams
        info = {"unet": self.unet.config, "prediction": hp.prediction, "stage": hp.stage,
                "schedule": {"num_steps": hp.num_train_steps, "kind": hp.schedule,
                             "beta_start": hp.beta_start, "beta_end": hp.beta_end},
                "latent_size": list(hp.latent_size),
                # provenance: the frozen autoencoder whose latents this model learned (drivesim sample's default)
                "autoencoder_path": hp.autoencoder_path}
        return info | self._data_info

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Makes the .ckpt readable by load_model_file(path, "ldm") (rollout, sample).
        attach_model_to_checkpoint(checkpoint, UNET_KIND, self.model_hparams(), "unet.")

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self._data_info and "fps" in batch:  # recorded in the model file for rollouts
            z_frames = (batch["latents"] if "latents" in batch else batch["video"]).shape[1]
            self._data_info = {"fps": float(batch["fps"][0]), "num_frames": int(z_frames)}

    def on_fit_end(self) -> None:
        """Write the UNet model file (kind ``ldm``) next to the logs, or to ``model_file``."""
        if not self.trainer.is_global_zero:
            return
        path = Path(self.hparams.model_file or Path(self.trainer.log_dir or self.trainer.default_root_dir)
                    / "model.safetensors")
        save_model_file(path, UNET_KIND, self.model_hparams(), self.unet.state_dict(),
                        overwrite=self.hparams.overwrite)
        print(f"diffusion model file: {path}")

    def train(self, mode: bool = True) -> LatentDiffusionModule:
        super().train(mode)
        if self.autoencoder is not None:  # the autoencoder stays frozen in eval mode
            self.autoencoder.eval()
        return self

    # -- batch -> (latents, conditioning) -------------------------------------------------
    def batch_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Latents [B, T, C, h, w] (already scaled) from a batch: cached or encoded now.

        Always contiguous: the autoencoder returns channels-last strided latents, and the
        video UNet's backward pass segfaults on them with torch 2.13 CPU.
        """
        if "latents" in batch:
            return batch["latents"].contiguous()
        if "video" not in batch:
            raise DriveSimInputError("a batch needs 'latents' or 'video'", field="batch",
                                     value=sorted(batch))
        if self.autoencoder is None:
            raise DriveSimInputError("'video' batches need autoencoder_path to encode them",
                                     field="autoencoder_path")
        with torch.no_grad():
            return self.autoencoder.encode_latents(batch["video"]).contiguous()

    def _context(self, batch: dict[str, Any], z: torch.Tensor, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(context latents m*z, mask [B, T]) for the video stages; (None, None) for images."""
        b, t = z.shape[:2]
        stage = self.hparams.stage
        if stage == "image":
            return None, None
        if stage == "video":
            mask, _ = sample_context_masks(b, t, self.hparams.context_probs, generator)
            drop = torch.rand(b, generator=generator) < self.hparams.drop_context
            mask = mask * (~drop)[:, None].float()
        else:
            mask = interpolation_mask(b, t)
        mask = mask.to(z.device)
        return masked_context(z, mask), mask

    def _regime(self, batch: dict[str, Any], b: int) -> torch.Tensor | None:
        if self.hparams.stage != "interpolation":
            return None
        if "regime" in batch:
            return batch["regime"].long()
        if "fps" not in batch:
            raise DriveSimInputError("interpolation batches need 'fps' or 'regime'", field="batch",
                                     value=sorted(batch))
        return (batch["fps"] >= self.hparams.regime_fps_split).long().reshape(b)

    def batch_conditioning(self, batch: dict[str, Any], z: torch.Tensor, train: bool,
                           generator: torch.Generator | None = None) -> Conditioning:
        """Conditioning from the batch, with guidance dropout when ``train``."""
        b = z.shape[0]
        context, mask = self._context(batch, z, generator)
        cond = Conditioning.from_batch(batch, context=context, context_mask=mask,
                                       regime=self._regime(batch, b)).to(z.device)
        if train:
            p_box, p_lab = self.hparams.drop_boxes, self.hparams.drop_labels
            drop_boxes = (torch.rand(b, generator=generator) < p_box).to(z.device)
            drop_labels = (torch.rand(b, generator=generator) < p_lab).to(z.device)
            cond = cond.with_dropped(boxes=drop_boxes, labels=drop_labels)
            if self.unet.ego_encoder is not None:  # drawn last: UNets without ego keep their stream
                drop_ego = (torch.rand(b, generator=generator) < self.hparams.drop_ego).to(z.device)
                cond = cond.with_dropped(ego=drop_ego)
        return cond

    # -- steps ---------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any], train: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion loss of one batch (guidance dropout only when ``train``)."""
        z = self.batch_latents(batch)
        cond = self.batch_conditioning(batch, z, train=train, generator=generator)
        loss_mask = None
        if cond.context_mask is not None and not self.hparams.loss_on_context_frames:
            loss_mask = 1.0 - cond.context_mask
        return diffusion_loss(self.unet, z, cond, self.schedule, generator=generator,
                              prediction=self.hparams.prediction, loss_mask=loss_mask,
                              weight=self._box_weight(batch, z), snr_gamma=self.hparams.snr_gamma,
                              timesteps=self.hparams.timesteps, timestep_mean=self.hparams.timestep_mean,
                              timestep_std=self.hparams.timestep_std)

    def _box_weight(self, batch: dict[str, Any], z: torch.Tensor) -> torch.Tensor | None:
        """[B, T, 1, h, w] = 1 + box_loss_weight * (vehicle-box coverage of each latent cell),
        from the batch's boxes whether or not guidance dropout hid them from the network
        (the weight says where the vehicles are in x0, not what the network was told)."""
        lam = float(self.hparams.box_loss_weight)
        if lam == 0.0 or "boxes" not in batch:
            return None
        b, t, _, h, w = z.shape
        cover = box_layout(Conditioning.from_batch(batch), b, t, h, w, z.device)  # [(B T), C_l, h, w]
        vehicles = cover[:, [c - 1 for c in VEHICLE_CLASSES]].amax(dim=1, keepdim=True)
        return 1.0 + lam * rearrange(vehicles, "(b t) 1 h w -> b t 1 h w", b=b)

    def _common_step(self, batch: dict[str, Any], stage: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Loss + logging; training draws from ``step_generator(seed, global_step, rank)``."""
        loss = self.compute_loss(batch, stage == "train", generator)
        batch_size = len(batch["daynight"]) if "daynight" in batch else None
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_step=stage == "train",
                 on_epoch=True, batch_size=batch_size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gen = step_generator(self.hparams.seed, self.global_step, self.global_rank)
        return self._common_step(batch, "train", gen)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # a fixed draw per batch makes validation losses comparable across epochs
        gen = torch.Generator().manual_seed(self.hparams.val_seed + 7919 * batch_idx)
        loss = self._common_step(batch, "val", gen)
        if batch_idx == 0 and self.hparams.num_val_samples > 0 and self.trainer.is_global_zero:
            self._log_validation_samples(batch)
        return loss

    def _log_validation_samples(self, batch: dict[str, Any]) -> None:
        n = min(self.hparams.num_val_samples, len(batch["clip_id"]) if "clip_id" in batch else 1)
        sub = {k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
        z = self.batch_latents(sub)
        cond = self.batch_conditioning(sub, z, train=False,
                                       generator=torch.Generator().manual_seed(self.hparams.val_seed))
        g = self.hparams.val_guidance
        scales = guidance_scales(cond, context=g, labels=g, boxes=g, ego=g)
        latents = self.generate(cond, z.shape[1], tuple(z.shape[-2:]), self.hparams.val_sample_steps,
                                scales, generator=torch.Generator().manual_seed(self.hparams.val_seed))
        if self.autoencoder is None:
            return
        with torch.no_grad():
            frames = self.autoencoder.decode_latents(latents)
        log_sample_grid(self.logger, "val/samples", frames, sub, self.global_step)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] for the batch's conditioning (boxes, labels,
        optional context ``latents`` with ``context_mask``); keys ``steps``, ``guidance``,
        ``seed``, ``num_frames``, ``sampler`` override the validation defaults."""
        b = len(batch["daynight"])
        frames_t = int(batch.get("num_frames", batch["boxes"].shape[1] if "boxes" in batch else 1))
        context = batch.get("latents") if "context_mask" in batch else None
        cond = Conditioning.from_batch(batch, context=context, context_mask=batch.get("context_mask"),
                                       regime=batch.get("regime")).to(self.device)
        g = float(batch.get("guidance", self.hparams.val_guidance))
        scales = guidance_scales(cond, context=g, labels=g, boxes=g, ego=g)  # g = 1: one conditional pass
        gen = torch.Generator().manual_seed(int(batch.get("seed", self.hparams.val_seed)) + batch_idx)
        latents = self.generate(cond, frames_t, tuple(self.hparams.latent_size),
                                int(batch.get("steps", self.hparams.val_sample_steps)), scales,
                                sampler=batch.get("sampler", "ddim"), generator=gen, batch_size=b)
        if self.autoencoder is None:
            raise DriveSimInputError("decoding samples needs autoencoder_path", field="autoencoder_path")
        return self.autoencoder.decode_latents(latents).clamp(-1, 1)

    # -- sampling ------------------------------------------------------------------------
    def inference_record(self) -> ModelRecord:
        """This module's UNet as an inference record (``drivesim.inference``)."""
        return diffusion_record(self.unet, self.schedule, self.hparams.prediction, self.model_hparams())

    @torch.no_grad()
    def generate(self, cond: Conditioning, num_frames: int, latent_hw: tuple[int, int],
                 steps: int = 50, scales: dict[str, float | torch.Tensor] | None = None,
                 sampler: str = "ddim", generator: torch.Generator | None = None,
                 eta: float = 0.0, batch_size: int | None = None) -> torch.Tensor:
        """Latents [B, T, C, h, w] for ``cond`` through the one sampling call
        (``drivesim.inference.sample``: guidance ``scales``, context re-imposed every step)."""
        return sample(self.inference_record(), cond, num_frames, latent_hw, steps=steps, sampler=sampler,
                      scales=scales, generator=generator, eta=eta, batch_size=batch_size)

    # -- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        param_groups = optimizer_param_groups(self.unet, hp.stage, hp.lr, hp.train_spatial_lr_scale,
                                              hp.blend_lr_scale)
        optimizer = make_adam(param_groups, hp.lr, tuple(hp.betas), hp.weight_decay, decoupled=True)
        warmup, decay = max(int(hp.warmup_steps), 0), float(hp.lr_decay_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, budget_progress(self._trainer), warmup, decay))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def optimizer_param_groups(unet: UNet, stage: str, lr: float, spatial_lr_scale: float = 0.0,
                           blend_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups of a stage: its trained groups at ``lr``; in the video stages the
    alpha-blend logits (``*.blend.mix``) at ``lr * blend_lr_scale`` without weight decay, and the
    spatial + conditioning layers at ``lr * spatial_lr_scale`` when that is > 0. Empty groups dropped."""
    video = stage != "image"
    main, blend = [], []
    for name, p in unet.named_parameters():
        group = parameter_group(name)
        if group in TRAINED_GROUPS[stage]:
            (blend if video and blend_lr_scale != 1.0 and name.endswith(".blend.mix") else main).append(p)
    groups = [{"params": main, "lr": lr}, {"params": blend, "lr": lr * blend_lr_scale, "weight_decay": 0.0}]
    if video and spatial_lr_scale > 0:
        spatial = [p for n, p in unet.named_parameters() if parameter_group(n) in ("spatial", "conditioning")]
        groups.append({"params": spatial, "lr": lr * spatial_lr_scale})
    return [g for g in groups if g["params"]]


def _check_config(stage: str, prediction: str, timesteps: str, probabilities: dict[str, float],
                  non_negative: dict[str, float], positive: dict[str, float | None]) -> None:
    """The training settings; a bad one is a DriveSimInputError naming it (None = off passes)."""
    if stage not in STAGES:
        raise DriveSimInputError(f"stage must be one of {STAGES}", field="stage", value=stage)
    try:
        check_prediction(prediction)
    except ValueError as err:
        raise DriveSimInputError(str(err), field="prediction", value=prediction) from err
    if timesteps not in TIMESTEP_SAMPLING:
        raise DriveSimInputError(f"expected one of {TIMESTEP_SAMPLING}", field="timesteps", value=timesteps)
    for name, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise DriveSimInputError("expected a probability in [0, 1]", field=name, value=value)
    for name, value in non_negative.items():
        if not value >= 0.0:
            raise DriveSimInputError("expected >= 0", field=name, value=value)
    for name, value in positive.items():
        if value is not None and not value > 0.0:
            raise DriveSimInputError("expected > 0", field=name, value=value)


def _check_unet(unet: UNet, stage: str) -> None:
    """The stage's UNet: an image UNet for the image stage, a video UNet with context frames for
    the video stages."""
    if (stage == "image") == bool(unet.temporal):
        raise DriveSimInputError(f"stage '{stage}' needs a UNet with temporal={stage != 'image'}",
                                 field="unet.temporal", value=unet.temporal)
    if stage != "image" and unet.context_encoder is None:
        raise DriveSimInputError(f"stage '{stage}' needs a UNet with use_context=True",
                                 field="temporal_layers.use_context", value=False)
    regimes = int(unet.config.get("num_regimes", 0))
    if stage != "image" and (stage == "interpolation") != (regimes > 0):
        raise DriveSimInputError("the interpolation stage needs num_regimes >= 1 (its frame-rate regimes), the "
                                 "video stage none", field="temporal_layers.num_regimes", value=regimes)


def load_unet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """UNet weights from a LatentDiffusionModule .ckpt or a ``diffusion_unet`` model file."""
    from drivesim.models.model_files import load_model_file

    _, state = load_model_file(path, UNET_KIND)
    return state


def _load_frozen_autoencoder(path: str | None) -> torch.nn.Module | None:
    if not path:
        return None
    ae = load_model(path, "autoencoder").network
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae.eval()
