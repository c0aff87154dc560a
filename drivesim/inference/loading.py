"""One loader for every stage's model file: path -> ready :class:`ModelRecord`.

A model file (``.safetensors`` / ``.pt`` model file, or a Lightning ``.ckpt``) carries its
kind and hyper-parameters (``drivesim.models.model_files``), so the network is rebuilt from
the file alone and nothing pickled runs. The record says which *role* the network plays:

- ``autoencoder``: the KL autoencoder (image or temporal decoder);
- ``image``: a UNet without temporal layers (frames sampled independently; start frames);
- ``prediction``: a video UNet with context frames (the rollout's key-frame model);
- ``interpolation``: a video UNet with context frames and a regime label (T -> 4T);
- ``upsampler``: the pixel-space video upsampler (``drivesim.models.upsampler``).

Asking for a role the file cannot play is a :class:`DriveSimInputError` naming the file
and the hyper-parameter that disqualifies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drivesim.diffusion.parameterization import Denoiser, check_prediction
from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.models.autoencoder import MODEL_KIND as AUTOENCODER_KIND
from drivesim.models.autoencoder import build_autoencoder
from drivesim.models.compile import compile_network
from drivesim.models.model_files import read_model_file
from drivesim.models.unet import UNet
from drivesim.utils.io import DriveSimInputError

LDM_KIND = "ldm"  # model-file kind of image / video / interpolation UNets
UPSAMPLER_KIND = "upsampler"  # drivesim.models.upsampler.UPSAMPLER_KIND
ROLES = ("autoencoder", "image", "prediction", "interpolation", "upsampler")
_ROLE_TEXT = {"autoencoder": "an autoencoder", "image": "an image model",
              "prediction": "a prediction (video, context) model", "interpolation": "an interpolation model",
              "upsampler": "a video upsampler"}


@dataclass
class ModelRecord:
    """A loaded network and everything needed to use it.

    ``schedule`` / ``prediction`` are set for diffusion roles and ``None`` for the autoencoder;
    ``hparams`` is the model file's hyper-parameters (``unet``, ``schedule``, ``fps``,
    ``num_frames``, ``latent_size`` for LDMs).
    """

    network: nn.Module
    role: str
    path: Path | None
    hparams: dict[str, Any] = field(default_factory=dict)
    schedule: DiscreteVPSchedule | None = None
    prediction: str | None = None

    def denoiser(self) -> Denoiser:
        """D(x_t, t, cond) -> x0_hat of a diffusion record."""
        if self.schedule is None or self.prediction is None:
            raise ValueError(f"the {self.role} record has no diffusion schedule")
        return Denoiser(self.network, self.schedule, self.prediction)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def config(self) -> dict[str, Any]:
        """The network's constructor arguments (UNet config or autoencoder hparams)."""
        return dict(getattr(self.network, "config", None) or getattr(self.network, "hparams", {}))

    @property
    def fps(self) -> float | None:
        """Frame rate of the training windows (video models), when the file records it."""
        return float(self.hparams["fps"]) if self.hparams.get("fps") else None

    @property
    def num_frames(self) -> int | None:
        return int(self.hparams["num_frames"]) if self.hparams.get("num_frames") else None

    @property
    def latent_size(self) -> tuple[int, int] | None:
        size = self.hparams.get("latent_size")
        return (int(size[0]), int(size[1])) if size else None


def diffusion_record(unet: UNet, schedule: DiscreteVPSchedule, prediction: str,
                     hparams: dict[str, Any] | None = None, path: Path | None = None) -> ModelRecord:
    """A record for an in-memory UNet (a model being trained, a probe's variant)."""
    return ModelRecord(unet, unet_role(unet.config), path, dict(hparams or {}), schedule,
                       check_prediction(prediction))


def unet_role(config: dict[str, Any]) -> str:
    """The role a UNet config plays: image, prediction or interpolation."""
    if not config.get("temporal"):
        return "image"
    return "interpolation" if config.get("num_regimes", 0) else "prediction"


def _role_problem(config: dict[str, Any], role: str) -> tuple[str, Any] | None:
    """(field, value) that disqualifies a UNet config from ``role``, or None."""
    temporal, ctx, regimes = config.get("temporal"), config.get("use_context"), config.get("num_regimes", 0)
    if role == "image":
        return ("unet.temporal", temporal) if temporal else None
    if not temporal:
        return "unet.temporal", temporal
    if not ctx:
        return "unet.use_context", ctx
    if role == "prediction" and regimes:
        return "unet.num_regimes", regimes
    if role == "interpolation" and not regimes:
        return "unet.num_regimes", regimes
    return None


def _build_unet(path: Path, hparams: dict[str, Any], state: dict[str, torch.Tensor], role: str | None) -> ModelRecord:
    config = hparams.get("unet")
    if not isinstance(config, dict):
        raise DriveSimInputError("LDM model file has no 'unet' hyper-parameters", path=path,
                                 field="hparams.unet", value=type(config).__name__)
    if role is not None:
        problem = _role_problem(config, role)
        if problem is not None:
            raise DriveSimInputError(f"this model file is not {_ROLE_TEXT[role]}", path=path,
                                     field=problem[0], value=problem[1])
    try:
        unet = UNet(**config)
    except (TypeError, ValueError) as err:  # a config from another UNet version
        raise DriveSimInputError(f"UNet hyper-parameters not accepted: {err}", path=path,
                                 field="hparams.unet") from err
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes disagree with the config
        raise DriveSimInputError(f"weights do not match the UNet config: {str(err)[:300]}", path=path,
                                 field="state_dict") from err
    if missing or unexpected:
        raise DriveSimInputError(f"weights do not match the UNet config: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}", path=path, field="state_dict")
    return ModelRecord(unet.eval(), role or unet_role(config), path, hparams, *_diffusion_settings(hparams, path))


def upsampler_record(network: nn.Module, hparams: dict[str, Any], path: Path | None = None) -> ModelRecord:
    """A record for a video upsampler and its file's hyper-parameters (in memory or loaded)."""
    return ModelRecord(network, "upsampler", path, dict(hparams), *_diffusion_settings(hparams, path))


def _diffusion_settings(hparams: dict[str, Any], path: Path | None) -> tuple[DiscreteVPSchedule, str]:
    """(schedule, prediction) of a diffusion model file, refused with the field named."""
    try:
        schedule = DiscreteVPSchedule(**hparams.get("schedule", {}))
        prediction = check_prediction(hparams.get("prediction", "v"))
    except (TypeError, ValueError) as err:
        raise DriveSimInputError(f"schedule / prediction not accepted: {err}", path=path,
                                 field="hparams.schedule") from err
    return schedule, prediction


def _build_upsampler(path: Path, hparams: dict[str, Any], state: dict[str, torch.Tensor]) -> ModelRecord:
    from drivesim.models.upsampler import build_upsampler

    return upsampler_record(build_upsampler(hparams, state, path).eval(), hparams, path)


def load_model(path: str | Path, role: str | None = None, *, device: torch.device | str = "cpu",
               compile: bool = False, compile_mode: str = "default") -> ModelRecord:
    """Load any stage's model file as a ready record (eval mode, on ``device``).

    ``role`` (one of :data:`ROLES`) is checked against the file; None takes the role the
    file's hyper-parameters describe. ``compile`` compiles the network in place
    (``drivesim.models.compile``; fixed shapes, as in rollouts).
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    path = Path(path)
    if not path.is_file():
        raise DriveSimInputError("model file not found", path=path)
    kind, hparams, state = read_model_file(path)
    if kind == AUTOENCODER_KIND and role in (None, "autoencoder"):
        record = ModelRecord(build_autoencoder(hparams, state, path=path), "autoencoder", path, hparams)
    elif kind == LDM_KIND and role not in ("autoencoder", "upsampler"):
        record = _build_unet(path, hparams, state, role)
    elif kind == UPSAMPLER_KIND and role in (None, "upsampler"):
        record = _build_upsampler(path, hparams, state)
    else:
        wanted = _ROLE_TEXT[role] if role else "a drivesim model file"
        raise DriveSimInputError(f"this '{kind}' file is not {wanted}", path=path, field="kind", value=kind)
    record.network.to(device).eval()
    if compile:
        compile_network(record.network, compile_mode, device=device)  # reduce-overhead: CUDA only
    return record
