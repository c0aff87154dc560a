"""The network a training stage trains: given in the config, or taken from the file it starts from.

A first stage (image autoencoder, image LDM) states its whole architecture in its config
(``autoencoder:`` / ``unet:`` with a ``class_path``). A later stage takes the architecture from
the model file it initialises from (``init_from``) and states only what it adds: the temporal
decoder's kernels (``stage: temporal`` autoencoder) or the video UNet's :class:`TemporalLayers`
(``video`` / ``interpolation`` LDM). Model files and checkpoints always carry the full
architecture, so a trained network is rebuilt from its file alone. A setting given twice (an
architecture block next to ``init_from``) is a :class:`DriveSimInputError` naming the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drivesim.inference import load_model
from drivesim.models.autoencoder import HPARAM_NAMES, MODEL_KIND, AutoencoderKL
from drivesim.models.model_files import load_model_file, read_model_file
from drivesim.models.unet import UNet
from drivesim.utils.io import DriveSimInputError

AE_TEMPORAL_DEFAULTS = {"temporal_kernel": 3, "temporal_spatial_kernel": 3}


@dataclass(frozen=True)
class TemporalLayers:
    """What a video / interpolation stage adds to the image UNet of its ``init_from`` file: the
    temporal-side UNet settings (``docs/networks.md``). ``use_ego``: the per-frame ego-motion
    embedding (speed, yaw rate), trained with the temporal layers. ``use_checkpoint`` (gradient
    checkpointing) and ``use_ego`` None keep the image UNet's value."""

    max_frames: int = 16
    alpha_mode: str = "per_frame"
    temporal_position: str = "sinusoidal"
    temporal_ff: bool = True
    use_context: bool = True
    context_channels: int = 32
    context_input: bool = False
    num_regimes: int = 0
    use_ego: bool | None = None
    use_checkpoint: bool | None = None

    def unet_overrides(self) -> dict[str, Any]:
        """UNet constructor arguments that turn an image UNet's config into this video UNet's."""
        values = {k: v for k, v in asdict(self).items() if v is not None}
        return {"temporal": True, **values}


def as_temporal_layers(value: TemporalLayers | dict | None) -> TemporalLayers | None:
    """``value`` as :class:`TemporalLayers` (a checkpoint's hyper-parameters hold it as a dict)."""
    if value is None or isinstance(value, TemporalLayers):
        return value
    if not isinstance(value, dict):
        raise DriveSimInputError("expected the temporal settings as a mapping", field="temporal_layers",
                                 value=type(value).__name__)
    known = {f.name for f in fields(TemporalLayers)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise DriveSimInputError(f"not a temporal setting (the spatial UNet comes from init_from); "
                                 f"known: {sorted(known)}", field=f"temporal_layers.{unknown[0]}",
                                 value=value[unknown[0]])
    return TemporalLayers(**value)


def stage_unet(stage: str, unet: UNet | None, temporal_layers: TemporalLayers | dict | None,
               init_from: str | None) -> tuple[UNet, bool]:
    """``(the stage's UNet, whether init_from's weights are already in it)``.

    ``image``: the configured ``unet`` (``init_from`` weights are loaded by the caller). ``video`` /
    ``interpolation``: with ``init_from``, a video UNet built from the image UNet of that file plus
    ``temporal_layers``, spatial weights loaded; without it, the given ``unet`` (a module rebuilt
    from a checkpoint, which holds the full config), whose settings ``temporal_layers`` must agree with.
    """
    layers = as_temporal_layers(temporal_layers)
    if stage == "image":
        if layers is not None:
            raise DriveSimInputError("only the video stages add temporal layers; remove temporal_layers "
                                     "from the image stage", field="temporal_layers", value=asdict(layers))
        if unet is None:
            raise DriveSimInputError("the image stage needs its network: a unet block "
                                     "(class_path: drivesim.models.unet.UNet)", field="unet")
        return unet, False
    if init_from and unet is not None:
        raise DriveSimInputError(f"the {stage} stage takes its spatial UNet from init_from, so a unet block "
                                 f"would state it twice; give only temporal_layers",
                                 field="unet", value=_spatial_summary(unet.config))
    if init_from:
        return video_unet_from_image_file(init_from, layers or TemporalLayers()), True
    if unet is None:
        raise DriveSimInputError(f"the {stage} stage starts from the image stage's model file: set init_from "
                                 f"(--model.init_args.init_from FILE; drivesim train passes it)", field="init_from")
    if layers is not None:
        check_temporal_layers(unet.config, layers)
    return unet, False


def video_unet_from_image_file(path: str | Path, layers: TemporalLayers) -> UNet:
    """A video UNet: the image UNet of model file ``path`` (its config and spatial + conditioning
    weights) with ``layers`` added; the temporal and context layers start at their identity init."""
    image = load_model(path, "image").network
    try:
        return UNet.from_image_unet(image, **layers.unet_overrides())
    except (TypeError, ValueError) as err:  # a temporal setting the UNet refuses
        raise DriveSimInputError(f"temporal settings not accepted: {err}", path=path,
                                 field="temporal_layers", value=asdict(layers)) from err


def check_temporal_layers(config: dict[str, Any], layers: TemporalLayers) -> None:
    """Each stated temporal setting must equal the UNet config's."""
    for name, value in layers.unet_overrides().items():
        if name != "use_checkpoint" and config.get(name) != value:
            raise DriveSimInputError(f"the UNet has {name}={config.get(name)!r}", field=f"temporal_layers.{name}",
                                     value=value)


def _spatial_summary(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("in_channels", "model_channels", "channel_mult", "num_res_blocks")
    return {k: config.get(k) for k in keys}


# -- autoencoder --------------------------------------------------------------------------
def stage_autoencoder(stage: str, autoencoder: AutoencoderKL | None, init_from: str | None,
                      temporal_kernel: int | None = None, temporal_spatial_kernel: int | None = None) -> AutoencoderKL:
    """The autoencoder a stage trains: the configured ``autoencoder`` (image stage), or the one of
    model file ``init_from`` (an image stage continued, or the temporal stage, which adds a temporal
    decoder with the given kernels; None = the file's, else 3)."""
    kernels = {"temporal_kernel": temporal_kernel, "temporal_spatial_kernel": temporal_spatial_kernel}
    if init_from and autoencoder is not None:
        raise DriveSimInputError("the architecture comes from init_from, so an autoencoder block would state it "
                                 "twice; remove one (--model.init_args.autoencoder null)",
                                 field="autoencoder", value=autoencoder.hparams)
    if stage == "image":
        for name, value in kernels.items():
            if value is not None:
                raise DriveSimInputError("only stage temporal adds a temporal decoder", field=name, value=value)
        if init_from:
            return autoencoder_from_file(init_from, temporal=None)
        if autoencoder is None:
            raise DriveSimInputError("the image stage needs its network: an autoencoder block (class_path: "
                                     "drivesim.models.autoencoder.AutoencoderKL) or init_from", field="autoencoder")
        if autoencoder.hparams["temporal_decoder"]:
            raise DriveSimInputError("the image stage trains a per-frame decoder; the temporal decoder is stage "
                                     "temporal's", field="autoencoder.temporal_decoder", value=True)
        return autoencoder
    if autoencoder is not None:
        raise DriveSimInputError("the temporal stage takes its autoencoder from init_from; remove the autoencoder "
                                 "block", field="autoencoder", value=autoencoder.hparams)
    if not init_from:
        raise DriveSimInputError("the temporal stage starts from an image-stage model file: set init_from "
                                 "(--model.init_args.init_from FILE; drivesim train passes it)", field="init_from")
    return autoencoder_from_file(init_from, temporal=kernels)


def autoencoder_from_file(path: str | Path, temporal: dict[str, int | None] | None) -> AutoencoderKL:
    """The autoencoder of model file ``path`` with its weights (and scale factor, if estimated);
    ``temporal``: add a temporal decoder (new blocks at their identity init) with these kernels."""
    hparams, state = load_model_file(path, MODEL_KIND)
    unknown = sorted(set(hparams) - HPARAM_NAMES)
    if unknown:
        raise DriveSimInputError("unknown autoencoder hyper-parameters", path=path, field="hparams", value=unknown)
    config = dict(hparams)
    if temporal is None:
        if config.get("temporal_decoder"):
            raise DriveSimInputError("this autoencoder has a temporal decoder; the image stage starts from an "
                                     "image-stage file", path=path, field="init_from")
    else:
        config.update(_temporal_config(path, hparams, temporal), temporal_decoder=True)
    try:
        ae = AutoencoderKL(**config)
    except (TypeError, ValueError) as err:  # hyper-parameters from another version
        raise DriveSimInputError(f"autoencoder hyper-parameters not accepted: {err}", path=path,
                                 field="hparams") from err
    try:
        missing, unexpected = ae.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensor shapes disagree with the hyper-parameters
        raise DriveSimInputError(f"weights do not fit: {str(err)[:300]}", path=path, field="state_dict") from err
    new = {n for n, _ in ae.named_parameters() if "temporal" in n} if not hparams.get("temporal_decoder") else set()
    bad_missing = [k for k in missing if k not in new]
    if bad_missing or unexpected:
        raise DriveSimInputError(f"weights do not fit: missing {bad_missing[:4]}, unexpected {unexpected[:4]}",
                                 path=path, field="state_dict")
    return ae


def _temporal_config(path: str | Path, hparams: dict[str, Any], wanted: dict[str, int | None]) -> dict[str, int]:
    """The temporal kernels: a temporal file keeps its own (a different one stated is an error);
    an image file gets the stated ones (default 3)."""
    out = {}
    for name, value in wanted.items():
        if hparams.get("temporal_decoder"):
            if value is not None and value != hparams.get(name):
                raise DriveSimInputError(f"init_from already has a temporal decoder with {name}="
                                         f"{hparams.get(name)!r}", path=path, field=name, value=value)
            out[name] = hparams[name]
        else:
            out[name] = AE_TEMPORAL_DEFAULTS[name] if value is None else int(value)
    return out


# -- continuing another run's later stages -------------------------------------------------
def load_added_layers(network: nn.Module, base_keys: set[str], path: str | Path, role: str) -> list[str]:
    """Copy into ``network`` the weights that its earlier-stage file left at their init (every
    state key not in ``base_keys``: temporal, context and ego layers, alpha blends) from model file
    ``path`` of the same ``role``, another run's trained stage (``temporal_from``). The spatial
    weights stay the earlier stage's: Video LDM keeps the image model's layers and learns only what
    it adds. Returns the copied keys; a key absent or of another shape is refused, naming it."""
    other = load_model(path, role).network.state_dict()
    own = network.state_dict()
    added = sorted(k for k in own if k not in base_keys)
    if not added:
        raise DriveSimInputError("the network adds no layers to its earlier stage, so there is nothing to take",
                                 path=path, field="temporal_from")
    missing = [k for k in added if k not in other]
    extra = sorted(k for k in other if k not in own and k not in base_keys)
    if missing or extra:
        which = f"lacks layers the stage adds (e.g. {missing[:2]})" if missing else \
            f"has layers the stage does not add (e.g. {extra[:2]})"
        raise DriveSimInputError(f"this {role} file {which}: its temporal settings differ from the config's",
                                 path=path, field="temporal_from")
    wrong = [f"{k} {tuple(other[k].shape)} vs {tuple(own[k].shape)}" for k in added if other[k].shape != own[k].shape]
    if wrong:
        raise DriveSimInputError(f"layer shapes differ from the config's: {wrong[:2]}", path=path,
                                 field="temporal_from")
    with torch.no_grad():
        for key in added:
            own[key].copy_(other[key])
    return added


def state_keys(path: str | Path) -> set[str]:
    """The state-dict keys of the network in model file (or checkpoint) ``path``."""
    return set(read_model_file(path)[2])
