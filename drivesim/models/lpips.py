"""LPIPS perceptual distance (Zhang et al. 2018, VGG16 variant), weights supplied by the user.

No weights can be downloaded here, so the network is built from a single file the user
provides (``.safetensors`` or a weights-only torch file) holding:
- ``features.<i>.weight|bias``: torchvision's ``vgg16().features`` state dict (ImageNet weights);
- ``lin<k>.model.1.weight`` (k = 0..4): the LPIPS linear heads (the ``lpips`` package's ``weights/v0.1/vgg.pth``).
Build it once with ``{**{f"features.{k}": v for k, v in vgg.features.state_dict().items()}, **lpips_vgg_pth}``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from drivesim.utils.io import DriveSimInputError

# torchvision vgg16 "D" configuration; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)
_WIDTHS = (64, 128, 256, 512, 512)


class _LinearHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """``forward(x, y)`` on videos ``[B, T, 3, H, W]`` in [-1, 1] -> per-frame distance ``[B, T]``."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU(inplace=False)]
                ch = v
        self.features = nn.Sequential(*layers)
        for k, width in enumerate(_WIDTHS):
            self.add_module(f"lin{k}", _LinearHead(width))
        # LPIPS ScalingLayer: inputs in [-1, 1] mapped to ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always evaluation mode: the heads' dropout belongs to training LPIPS itself, and in a
        metric it would make the distance random."""
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                feats.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))  # unit-normalise channels
            if i == _TAPS[-1]:
                break
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        fx = self._taps(rearrange(x, "b t c h w -> (b t) c h w"))
        fy = self._taps(rearrange(y, "b t c h w -> (b t) c h w"))
        dist = sum(getattr(self, f"lin{k}").model((a - c).pow(2)).mean(dim=(1, 2, 3))
                   for k, (a, c) in enumerate(zip(fx, fy)))
        return rearrange(dist, "(b t) -> b t", b=b)


def load_lpips(path: str | os.PathLike) -> LPIPS:
    """Build LPIPS from the user's weight file; clear error if the path is missing or incomplete."""
    path = Path(path)
    if not path.is_file():
        raise DriveSimInputError("LPIPS weights file not found (set lpips_path to a file holding VGG16 "
                                 "'features.*' and LPIPS 'lin*' weights, or leave it unset)", path=path,
                                 field="lpips_path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt or pickled-code file
            raise DriveSimInputError(f"not a weights-only torch file: {err}", path=path, field="lpips_path") from err
    model = LPIPS()
    wanted = {k for k in model.state_dict() if k not in ("shift", "scale")}
    missing = sorted(wanted - set(state))
    if missing:
        raise DriveSimInputError(f"LPIPS weights incomplete: missing {missing[:4]}", path=path, field="lpips_path")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return model.eval()
