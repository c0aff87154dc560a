"""Feature extractors for FVD (I3D) and FID (Inception) from user-supplied TorchScript files.

No weights ship with drivesim and none are downloaded: the user passes a path (argument or
environment variable). The call interfaces are those of the files everybody reports with:

- I3D, StyleGAN-V ``i3d_torchscript.pt``:
  ``detector(uint8 [B, 3, T, H, W], rescale=True, resize=True, return_features=True) -> [B, 400]``
  (``resize`` squashes every frame to 224x224, ``rescale`` maps [0, 255] to [-1, 1]).
- Inception, StyleGAN2-ADA ``inception-2015-12-05.pt``:
  ``detector(uint8 [B, 3, H, W], return_features=True) -> [B, 2048]`` (pool3 features of the
  TF-ported FID Inception; it resizes to 299 internally).

Any TorchScript file with that call signature would run, so a file is recognised by its
SHA-256 (``PUBLISHED_WEIGHTS``): an unknown file is refused unless the caller allows it
(``--allow-unknown-weights``), and then the report marks the metric as non-standard.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from drivesim.utils.io import DriveSimInputError

I3D_ENV = "DRIVESIM_I3D"
INCEPTION_ENV = "DRIVESIM_INCEPTION"
RESIZE_POLICIES = ("squash", "center_crop")

_WEIGHTS_HELP = {
    "i3d": ("i3d_torchscript.pt", I3D_ENV, "--i3d",
            "the TorchScript I3D (Kinetics-400) published with StyleGAN-V "
            "(universome/stylegan-v, src/metrics/frechet_video_distance.py gives its URL)"),
    "inception": ("inception-2015-12-05.pt", INCEPTION_ENV, "--inception",
                  "the TorchScript FID Inception published with StyleGAN2-ADA-PyTorch "
                  "(NVlabs/stylegan2-ada-pytorch, metrics/frechet_inception_distance.py gives its URL)"),
}


# SHA-256 of the published detector files. Neither publisher lists a checksum next to the
# download; these are the digests that independent projects verifying those downloads agree
# on (the I3D one, 51,235,320 bytes, in several FVD evaluation setups; the Inception one,
# 95,607,719 bytes, in k-diffusion's download check). docs/evaluation.md says how to extend it.
PUBLISHED_WEIGHTS: dict[str, dict[str, str]] = {
    "i3d": {"bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2":
            "StyleGAN-V i3d_torchscript.pt (51,235,320 bytes)"},
    "inception": {"f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4":
                  "StyleGAN2-ADA inception-2015-12-05.pt (95,607,719 bytes)"},
}


class MissingWeightsError(DriveSimInputError):
    """The feature-extractor weights are not where the user said (or nowhere was said)."""


class UnknownWeightsError(DriveSimInputError):
    """A detector file whose SHA-256 is not a published one (and unknown files are not allowed)."""


@dataclass(frozen=True)
class WeightsInfo:
    """What the report records about a detector file."""

    kind: str
    file: str
    sha256: str
    published: bool
    published_name: str | None

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "published": self.published,
                "published_name": self.published_name}


def weights_help(kind: str) -> str:
    name, env, flag, source = _WEIGHTS_HELP[kind]
    return (f"needs the file '{name}': {source}. Download it yourself (drivesim never downloads "
            f"weights), then pass its path with {flag} PATH or set the environment variable "
            f"{env}=PATH. See docs/evaluation.md.")


def resolve_weights(kind: str, path: str | os.PathLike | None) -> Path:
    """The weights path from the argument, else the environment variable; checked to exist."""
    name, env, _, _ = _WEIGHTS_HELP[kind]
    chosen = path if path is not None else os.environ.get(env)
    if not chosen:
        raise MissingWeightsError(f"{kind.upper()} weights not given; " + weights_help(kind),
                                  field=env)
    p = Path(chosen).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{kind.upper()} weights file not found; " + weights_help(kind),
                                  path=p)
    return p


def check_weights(kind: str, path: str | os.PathLike | None, *, allow_unknown: bool = False,
                  known: Mapping[str, str] | None = None) -> WeightsInfo:
    """Hash the detector file and compare with ``known`` (default: the published files).

    An unknown file raises :class:`UnknownWeightsError` unless ``allow_unknown``: its FVD / FID
    would not be comparable with anybody's, and a wrong network gives a wrong number silently.
    """
    p = resolve_weights(kind, path)
    if not zipfile.is_zipfile(p):  # before the hash: the more useful message for a state dict
        raise MissingWeightsError(f"not a TorchScript archive (expected '{_WEIGHTS_HELP[kind][0]}'); "
                                  "state-dict files such as pt_inception-2015-12-05-*.pth and "
                                  "pickles (.pkl) are not supported. " + weights_help(kind), path=p)
    table = PUBLISHED_WEIGHTS[kind] if known is None else dict(known)
    digest = file_sha256(p)
    name = table.get(digest)
    if name is None and not allow_unknown:
        expected = ", ".join(f"{h[:12]}... ({n})" for h, n in table.items()) or "none registered"
        raise UnknownWeightsError(
            f"not the published {_WEIGHTS_HELP[kind][0]} (expected SHA-256 {expected}); a different "
            "network gives numbers nobody can compare. Pass --allow-unknown-weights to use it anyway "
            "(the report then marks the metric as non-standard)", path=p, field="sha256", value=digest)
    return WeightsInfo(kind, str(p), digest, name is not None, name)


def load_detector(kind: str, path: str | os.PathLike | None, *, allow_unknown: bool = False,
                  known: Mapping[str, str] | None = None) -> tuple[torch.jit.ScriptModule, WeightsInfo]:
    """:func:`check_weights` then :func:`load_torchscript`: the module and its report entry."""
    info = check_weights(kind, path, allow_unknown=allow_unknown, known=known)
    return _load_archive(kind, Path(info.file)), info


def load_torchscript(kind: str, path: str | os.PathLike | None, *, allow_unknown: bool = False,
                     known: Mapping[str, str] | None = None) -> torch.jit.ScriptModule:
    """Load a TorchScript detector after checking its hash (see :func:`check_weights`); a
    state-dict or pickle file is refused with an explanation."""
    return load_detector(kind, path, allow_unknown=allow_unknown, known=known)[0]


def _load_archive(kind: str, p: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is the
            warnings.simplefilter("ignore", DeprecationWarning)  # format these weights ship in
            module = torch.jit.load(str(p), map_location="cpu")
    except RuntimeError as err:
        raise MissingWeightsError(f"cannot load as TorchScript ({err}). " + weights_help(kind),
                                  path=p) from err
    return module.eval()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def center_crop_square(x: torch.Tensor) -> torch.Tensor:
    """Crop the last two dims (H, W) to the centred min(H, W) square."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top:top + side, left:left + side]


def _check_uint8(x: torch.Tensor, ndim: int, layout: str) -> None:
    if x.dtype != torch.uint8 or x.ndim != ndim or x.shape[-3] != 3:
        raise ValueError(f"expected uint8 {layout} with 3 channels, got {x.dtype} {tuple(x.shape)}")


class I3DFeatures(nn.Module):
    """Video -> I3D features with an explicit resize policy.

    ``squash`` feeds the full frame and lets the detector resize to 224x224 (StyleGAN-V);
    ``center_crop`` first crops the centred square, so 128x256 driving frames keep their
    aspect ratio at the cost of the sides.
    """

    def __init__(self, detector: nn.Module, resize: str = "squash") -> None:
        super().__init__()
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize: expected one of {RESIZE_POLICIES}, got {resize!r}")
        self.detector, self.resize = detector, resize

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, 3, H, W]`` -> float ``[B, F]``."""
        _check_uint8(video, 5, "[B, T, 3, H, W]")
        if self.resize == "center_crop":
            video = center_crop_square(video)
        x = rearrange(video, "b t c h w -> b c t h w").contiguous()  # StyleGAN-V layout
        return self.detector(x, rescale=True, resize=True, return_features=True).float()


class InceptionFeatures(nn.Module):
    """Images -> Inception pool3 features; usable as torchmetrics' custom FID extractor."""

    def __init__(self, detector: nn.Module, resize: str = "squash") -> None:
        super().__init__()
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize: expected one of {RESIZE_POLICIES}, got {resize!r}")
        self.detector, self.resize = detector, resize
        # torchmetrics reads num_features instead of probing with a random image.
        self.num_features = int(self.forward(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape[-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> float ``[B, F]``."""
        _check_uint8(images, 4, "[B, 3, H, W]")
        if self.resize == "center_crop":
            images = center_crop_square(images)
        return self.detector(images.contiguous(), return_features=True).float()
