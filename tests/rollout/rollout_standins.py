"""Tiny deterministic stand-ins for the rollout's models (tests, memory measurements).

They honour the same contracts as the real wrappers in :mod:`drivesim.rollout.sampler`,
cost microseconds, and are sensitive to everything the loop must get right:

- :class:`StandinPredictor` copies the context into the first S window frames (context
  re-imposition), draws noise from the injected generator for the new frames and adds a
  term from each frame's own boxes, so the order of generator use, the context hand-over
  and the per-frame conditioning all show in the output;
- :class:`StandinDecoder` is a temporal decoder: each output frame mixes its latent
  neighbours (radius 1, zero padding at window edges, like the 3D convs of the temporal
  decoder), so chunked decoding without right-hand context would differ from whole-video
  decoding;
- :func:`standin_interpolate` linearly blends the two key frames plus a little noise.
"""

from __future__ import annotations

import torch
from einops import repeat

from drivesim.rollout.engine import SegmentCondition


class StandinPredictor:
    """predict_segment(context [B,S,C,h,w], cond, generator) -> [B,T,C,h,w]."""

    def __init__(self, decay: float = 0.9, noise: float = 0.3) -> None:
        self.decay, self.noise = decay, noise

    def __call__(self, context: torch.Tensor, cond: SegmentCondition,
                 generator: torch.Generator) -> torch.Tensor:
        b, s, c, h, w = context.shape
        new = cond.window - s
        eps = torch.randn((b, new, c, h, w), generator=generator)
        frames, last = [], context[:, -1]
        for i in range(new):
            last = self.decay * last + self.noise * eps[:, i]
            frames.append(last + self._box_term(cond, s + i, (b, c, h, w)))
        return torch.cat([context, torch.stack(frames, dim=1)], dim=1)  # [B, T, C, h, w]

    @staticmethod
    def _box_term(cond: SegmentCondition, frame: int, shape: tuple[int, ...]) -> torch.Tensor:
        b, c, h, w = shape
        bias = cond.daynight.float().view(b, 1, 1, 1) * 0.1
        if cond.boxes is None:
            return bias.expand(b, c, h, w)
        boxes = cond.boxes[:, frame] * (cond.box_classes[:, frame, :, None] > 0)  # [B, N, 4]
        return bias + boxes.sum(dim=(1, 2)).view(b, 1, 1, 1) * 0.05


class StandinDecoder:
    """decode(latents [B,n,C,h,w]) -> frames [B,n,3,8h,8w] in [-1, 1], temporal radius 1."""

    radius = 1

    def __init__(self, scale: int = 8) -> None:
        self.scale = scale

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        # [0.25, 0.5, 0.25] over time with zero padding at the window edges, as elementwise
        # arithmetic: a convolution kernel's accumulation order may depend on buffer alignment,
        # which would make byte-identical comparisons of encoded videos flaky
        x = z[:, :, :3]
        pad = torch.zeros_like(x[:, :1])
        x = 0.25 * torch.cat([pad, x[:, :-1]], dim=1) + 0.5 * x + 0.25 * torch.cat([x[:, 1:], pad], dim=1)
        x = repeat(x, "b n c h w -> b n c (h s1) (w s2)", s1=self.scale, s2=self.scale)
        return torch.tanh(x)


def standin_interpolate(pair: torch.Tensor, cond: SegmentCondition,
                        generator: torch.Generator) -> torch.Tensor:
    """[B, 2, C, h, w] key frames -> [B, r + 1, C, h, w] with the keys at both ends."""
    r = cond.window - 1
    wts = torch.linspace(0, 1, r + 1, dtype=pair.dtype).view(1, r + 1, 1, 1, 1)
    out = (1 - wts) * pair[:, :1] + wts * pair[:, 1:]
    jitter = 0.05 * torch.randn(out.shape, generator=generator)
    jitter[:, 0] = 0
    jitter[:, -1] = 0
    return out + jitter


class StandinUpsampler:
    """upsample(low [B,S+n,3,h,w], hi_context [B,S,3,H,W] | None, generator) -> [B,S+n,3,H,W].

    Nearest-neighbour x``scale`` plus generator noise on the new frames, the context frames
    re-imposed, and a term from the context's mean, so a wrong hand-over between chunks,
    a wrong generator order or a missing context all change the output. Records the window
    sizes it was called with."""

    def __init__(self, scale: int = 2) -> None:
        self.scale, self.calls = scale, []

    def __call__(self, low: torch.Tensor, hi_context: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        s = 0 if hi_context is None else hi_context.shape[1]
        self.calls.append((s, low.shape[1] - s))
        hi = repeat(low, "b n c h w -> b n c (h s1) (w s2)", s1=self.scale, s2=self.scale).clone()
        hi[:, s:] += 0.05 * torch.randn(hi[:, s:].shape, generator=generator)
        if hi_context is not None:
            hi[:, :s] = hi_context
            # a reduction's last bits may depend on buffer alignment: quantised, so equal inputs
            # give equal frames
            hi[:, s:] += 0.1 * torch.round(hi_context.mean() * 1024) / 1024
        return hi.clamp(-1, 1)
