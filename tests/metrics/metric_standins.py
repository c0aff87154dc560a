"""Tiny TorchScript stand-ins with the call interfaces of the real FVD / FID detectors.

They let the whole evaluation plumbing run (tests, smoke runs of ``drivesim eval``) where
the real weights cannot be had. Their numbers mean nothing and must never be reported:
``drivesim eval`` records the extractor file's hash in the report, and a stand-in's
feature width (400 / 2048) matches the real one only so that shapes are exercised.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class I3DStandIn(nn.Module):
    """``forward(uint8 [B, 3, T, H, W], rescale, resize, return_features) -> [B, 400]``."""

    def __init__(self, num_features: int = 400, size: int = 32) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv3d(3, 16, kernel_size=(3, 5, 5), stride=(1, 4, 4), padding=(1, 2, 2))
        self.head = nn.Linear(32, num_features)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        v = x.float()
        if rescale:
            v = v / 127.5 - 1.0
        if resize:  # squash every frame to size x size, as the real detector does to 224
            v = F.interpolate(v, size=(v.shape[2], self.size, self.size), mode="trilinear",
                              align_corners=False)
        h = torch.relu(self.conv(v))
        # mean and temporal-difference energy so that frame order matters, as in I3D
        motion = (h[:, :, 1:] - h[:, :, :-1]).abs().mean(dim=(2, 3, 4))
        pooled = torch.cat([h.mean(dim=(2, 3, 4)), motion], dim=1)
        feats = self.head(pooled)
        return feats if return_features else feats.softmax(dim=1)


class InceptionStandIn(nn.Module):
    """``forward(uint8 [B, 3, H, W], return_features) -> [B, 2048]``."""

    def __init__(self, num_features: int = 2048, size: int = 32) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(3, 32, kernel_size=5, stride=4, padding=2)
        self.head = nn.Linear(32, num_features)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        v = F.interpolate(x.float() / 127.5 - 1.0, size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        feats = self.head(torch.relu(self.conv(v)).mean(dim=(2, 3)))
        return feats if return_features else feats.softmax(dim=1)


def save_standin(kind: str, path: str | os.PathLike, seed: int = 0, num_features: int | None = None) -> None:
    """Script a stand-in (``kind`` 'i3d' or 'inception') with seeded weights to ``path``.

    ``num_features`` defaults to the real width (400 / 2048); tests may shrink it for speed.
    """
    cls = {"i3d": I3DStandIn, "inception": InceptionStandIn}[kind]
    module = (cls() if num_features is None else cls(num_features)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 1
            param.normal_(0.0, fan_in ** -0.5, generator=generator)
    with warnings.catch_warnings():  # torch.jit is deprecated; the real detectors are TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))


def load_standin(kind: str, path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Load a saved stand-in: its SHA-256 is not a published one, so it needs ``allow_unknown``."""
    from drivesim.metrics.extractors import load_torchscript

    return load_torchscript(kind, path, allow_unknown=True)
