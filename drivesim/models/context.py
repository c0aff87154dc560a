"""Context frames for the prediction / interpolation models (Video LDM sec. 3.1.1).

The first S frames (prediction) or the key frames (interpolation) are given as clean
latents z with a temporal mask m; the condition is c_S = (m * z, m), [B, T, C+1, h, w].
A learned downsampling maps c_S to the resolution of every temporal 3D-conv block, where
it is concatenated to the block input (see `TemporalConvBlock`). S = 0 (all-zero mask) is
the unconditional branch used for context guidance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from drivesim.models.conditioning import Conditioning


def build_context_input(cond: Conditioning | None, latents: Tensor) -> Tensor:
    """c_S = concat(m * z, m) aligned with ``latents`` [B, T, C, h, w] -> [B, T, C+1, h, w].

    ``cond.context`` may hold fewer frames than T (the first T' frames; the rest get m = 0);
    no context (None) is S = 0.
    """
    b, t, c, h, w = latents.shape
    out = latents.new_zeros(b, t, c + 1, h, w)
    if cond is None or cond.context is None:
        return out
    ctx, mask = cond.context, cond.context_mask
    if ctx.shape[0] != b:
        raise ValueError(f"Conditioning.context: batch {ctx.shape[0]} != latents batch {b}")
    if ctx.shape[1] > t:
        raise ValueError(f"Conditioning.context: {ctx.shape[1]} context frames exceed the "
                         f"T={t} frames being denoised")
    if tuple(ctx.shape[2:]) != (c, h, w):
        raise ValueError(f"Conditioning.context: frame shape {tuple(ctx.shape[2:])} does not "
                         f"match the latents' (C, h, w) = {(c, h, w)}")
    m = mask.to(device=latents.device, dtype=latents.dtype)[:, :, None, None, None]  # [B,T',1,1,1]
    out = out.clone()
    out[:, : ctx.shape[1], :c] = m * ctx.to(device=latents.device, dtype=latents.dtype)
    out[:, : ctx.shape[1], c:] = m.expand(-1, -1, 1, h, w)
    return out


def nearest_context(c_s: Tensor) -> Tensor:
    """For every frame t, the c_S entry of the nearest context frame: [B, T, C+1, h, w] -> same.

    Frame t gets (z_k, 1) with k = argmin |t - k| over the frames with m = 1 (ties: the
    earlier one), or zeros when the clip has no context (S = 0). Used as an input-level
    context pathway (``UNet(context_input=True)``): each frame sees the latent it continues
    from at its own resolution, the way Stable Video Diffusion concatenates its conditioning
    frame to every frame's input.
    """
    b, t = c_s.shape[:2]
    mask = c_s[:, :, -1].flatten(2).amax(dim=2) > 0                        # [B, T] context frames
    pos = torch.arange(t, device=c_s.device, dtype=torch.float32)
    dist = (pos[:, None] - pos[None, :]).abs()[None].expand(b, t, t)       # [B, t, k]
    dist = dist + pos[None, None, :] * 1e-3                                # ties -> earlier k
    dist = dist.masked_fill(~mask[:, None, :], float("inf"))
    k = dist.argmin(dim=2)                                                 # [B, T]
    picked = torch.gather(c_s, 1, k[:, :, None, None, None].expand_as(c_s))
    return picked * mask.any(dim=1).to(c_s.dtype)[:, None, None, None, None]


class ContextEncoder(nn.Module):
    """Learned downsampling of c_S: a conv stem, then one stride-2 conv per UNet level.

    forward(c_S [B, T, C+1, h, w]) -> {(h_l, w_l): [(B T), channels, h_l, w_l]} for
    l = 0..num_levels-1 with h_l = h / 2^l (the resolutions of the UNet levels).
    """

    def __init__(self, latent_channels: int, channels: int = 32, num_levels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(latent_channels + 1, channels, 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, stride=1 if i == 0 else 2,
                                               padding=1))
            for i in range(num_levels))

    def forward(self, c_s: Tensor) -> dict[tuple[int, int], Tensor]:
        x = self.stem(c_s.flatten(0, 1))  # [B, T, C+1, h, w] -> [(B T), C+1, h, w]
        feats: dict[tuple[int, int], Tensor] = {}
        for level in self.levels:
            x = level(x)
            feats[(int(x.shape[-2]), int(x.shape[-1]))] = x
        return feats
