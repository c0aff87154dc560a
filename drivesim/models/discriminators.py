"""Patch discriminators for the autoencoder's adversarial loss.

- ``PatchDiscriminator2d``: the pix2pix / taming-transformers N-layer PatchGAN used by LDM for
  image training (frames judged independently).
- ``VideoDiscriminator3d``: the same design with 3D convs over ``[B, 3, T, H, W]``, the
  patch-wise video discriminator Video LDM uses alone for temporal-decoder fine-tuning
  (Sec. 3.1.1: adding an image discriminator made reconstruction FVD worse, 51.0 vs 32.9).

Both take videos ``[B, T, 3, H, W]`` and return patch logits (one per patch, not averaged).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def _init_weights(module: nn.Module) -> None:
    """taming-transformers init: conv N(0, 0.02), norm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchDiscriminator2d(nn.Module):
    """``[B, T, 3, H, W] -> [B, T, 1, H', W']`` logits; each frame is judged on its own."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        logits = self.net(rearrange(video, "b t c h w -> (b t) c h w"))
        return rearrange(logits, "(b t) c h w -> b t c h w", b=b)


class VideoDiscriminator3d(nn.Module):
    """``[B, T, 3, H, W] -> [B, 1, T', H', W']`` logits over spatio-temporal patches.

    Kernels (3, 4, 4): time keeps stride 1 (clips are short, 6 frames in the paper) while
    space halves per layer as in the 2D PatchGAN.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        k, pad = (3, 4, 4), (1, 1, 1)
        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels, k, (1, 2, 2), pad), nn.LeakyReLU(0.2, True)]
        ch = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2 ** i, 8)
            stride = (1, 2, 2) if i < num_layers else (1, 1, 1)
            layers += [nn.Conv3d(ch, out, k, stride, pad, bias=False), nn.BatchNorm3d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv3d(ch, 1, k, 1, pad))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(rearrange(video, "b t c h w -> b c t h w"))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())
