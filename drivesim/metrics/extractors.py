"""Feature extractors for FVD (I3D) and FID (Inception) from user-supplied TorchScript files.

No weights ship with drivesim and none are downloaded: the user passes a path (argument or
environment variable). The call interfaces are those of the files everybody reports with:

- I3D, StyleGAN-V ``i3d_torchscript.pt``:
  ``detector(uint8 [B, 3, T, H, W], rescale=True, resize=True, return_features=True) -> [B, 400]``
  (``resize`` squashes every frame to 224x224, ``rescale`` maps [0, 255] to [-1, 1]).
- Inception, StyleGAN2-ADA ``inception-2015-12-05.pt``:
  ``detector(uint8 [B, 3, H, W], return_features=True) -> [B, 2048]`` (pool3 features of the
  TF-ported FID Inception; it resizes to 299 internally).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
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


class MissingWeightsError(DriveSimInputError):
    """The feature-extractor weights are not where the user said (or nowhere was said)."""


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


def load_torchscript(kind: str, path: str | os.PathLike | None) -> torch.jit.ScriptModule:
    """Load a TorchScript detector; a state-dict or pickle file is refused with an explanation."""
    p = resolve_weights(kind, path)
    if not zipfile.is_zipfile(p):
        raise MissingWeightsError(f"not a TorchScript archive (expected '{_WEIGHTS_HELP[kind][0]}'); "
                                  "state-dict files such as pt_inception-2015-12-05-*.pth and "
                                  "pickles (.pkl) are not supported. " + weights_help(kind), path=p)
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
