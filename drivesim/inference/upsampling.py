"""The video upsampler on the inference path: one chunk sampler and one chunk stream.

- :class:`UpsamplerSampler` — one chunk: low-resolution frames ``[B, S+n, 3, h, w]`` and the
  previous chunk's last S high-resolution outputs -> ``[B, S+n, 3, H, W]``. The low-resolution
  frames are upsampled (bicubic) and noise-augmented at ``aug_level`` (paper: 150) and
  condition every frame; the S context frames are re-imposed in the network's diffusion space
  (``VideoUpsampler.to_diffusion``: the frame, or its scaled residual over the bicubic input).
- :class:`StreamingUpsampler` — frames in, frames out, in chunks of ``chunk`` with
  ``context`` frames carried between chunks (the rollout stream and :func:`upsample_clip`).

Randomness comes from the caller's generator, in chunk order (same generator, same frames).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from drivesim.diffusion.samplers import get_sampler
from drivesim.inference.loading import ModelRecord
from drivesim.inference.sampling import sample
from drivesim.models.conditioning import Conditioning
from drivesim.models.upsampler import augment_lowres, upsample_input

# upsample(low [B, S + n, 3, h, w], hi_context [B, S, 3, H, W] | None, generator) -> [B, S + n, 3, H, W]
Upsample = Callable[[torch.Tensor, torch.Tensor | None, torch.Generator], torch.Tensor]


class UpsamplerSampler:
    """The chunk sampler of an ``upsampler`` record (see the module docstring).

    ``chunk``: frames per call (the model's training window, ``num_frames``, 8); ``context``:
    output frames carried into the next chunk (2).
    """

    def __init__(self, model: ModelRecord, steps: int, aug_level: int | None = None, sampler: str = "ddim",
                 context: int = 2, chunk: int | None = None) -> None:
        if model.role != "upsampler":
            raise ValueError(f"UpsamplerSampler needs an upsampler record, got {model.role!r}")
        get_sampler(sampler)
        self.model, self.steps, self.sampler = model, int(steps), sampler
        self.scale = int(model.network.scale)
        self.aug_level = int(model.hparams.get("aug_level", 150) if aug_level is None else aug_level)
        self.chunk = int(chunk or model.hparams.get("num_frames") or 8)
        self.context = int(context)

    @torch.no_grad()
    def __call__(self, low: torch.Tensor, hi_context: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        net, device = self.model.network, self.model.device
        b, t = low.shape[:2]
        base = upsample_input(low.to(device), self.scale)                     # [B, T, 3, H, W]
        level = torch.full((b,), self.aug_level, dtype=torch.long)
        lowres = augment_lowres(base, level, self.model.schedule, generator)
        given, mask = None, None
        if hi_context is not None:
            s = hi_context.shape[1]
            given = net.to_diffusion(hi_context.to(device), base[:, :s])     # [B, S, 3, H, W]
            mask = torch.ones(b, s, device=device)
        cond = Conditioning(lowres=lowres, regime=level.to(device), context=given, context_mask=mask)
        x = sample(self.model, cond, t, tuple(base.shape[-2:]), steps=self.steps, sampler=self.sampler,
                   generator=generator)
        hi = net.from_diffusion(x, base).clamp(-1, 1)
        if hi_context is not None:  # the context frames come back exactly as given
            hi[:, : hi_context.shape[1]] = hi_context.to(hi)
        return hi


class StreamingUpsampler:
    """Upsample frames in chunks of ``chunk`` as they arrive.

    The first chunk has no context and emits ``chunk`` frames; every later one re-uses the
    last ``context`` output frames (and their low-resolution inputs) and emits
    ``chunk - context`` new ones. ``pending`` holds low-resolution frames not yet upsampled;
    :meth:`buffers` is what a resume state keeps.
    """

    def __init__(self, upsample: Upsample, chunk: int, context: int, low_context: torch.Tensor,
                 hi_context: torch.Tensor | None, pending: torch.Tensor) -> None:
        if not 0 <= context < chunk:
            raise ValueError(f"upsampler context {context} must be in [0, chunk={chunk})")
        self.upsample, self.chunk, self.context = upsample, int(chunk), int(context)
        self.low_context, self.hi_context, self.pending = low_context, hi_context, pending

    @classmethod
    def empty(cls, upsample: Upsample, chunk: int, context: int, like: torch.Tensor) -> StreamingUpsampler:
        none = like[:, :0]  # [B, 0, 3, h, w]
        return cls(upsample, chunk, context, none, None, none)

    def _step(self, n: int, generator: torch.Generator) -> torch.Tensor:
        s = 0 if self.hi_context is None else self.hi_context.shape[1]
        low = torch.cat([self.low_context, self.pending[:, :n]], dim=1)  # [B, s + n, 3, h, w]
        hi = self.upsample(low, self.hi_context, generator)              # [B, s + n, 3, H, W]
        if hi.shape[:2] != low.shape[:2]:
            raise ValueError(f"upsample returned {tuple(hi.shape)} for {tuple(low.shape)} inputs")
        keep = min(self.context, hi.shape[1])
        self.low_context, self.hi_context = low[:, low.shape[1] - keep:], hi[:, hi.shape[1] - keep:]
        self.pending = self.pending[:, n:]
        return hi[:, s:]

    def push(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Add ``[B, n, 3, h, w]`` frames; return the finished ``[B, m, 3, H, W]`` ones (or None)."""
        self.pending = torch.cat([self.pending, frames], dim=1)
        out = []
        while True:
            new = self.chunk - (0 if self.hi_context is None else self.hi_context.shape[1])
            if self.pending.shape[1] < new:
                break
            out.append(self._step(new, generator))
        return torch.cat(out, dim=1) if out else None

    def flush(self, generator: torch.Generator) -> torch.Tensor | None:
        """The last, shorter chunk at the end of the video."""
        return self._step(self.pending.shape[1], generator) if self.pending.shape[1] else None

    def buffers(self) -> dict[str, torch.Tensor | None]:
        return {"pending": self.pending, "low_context": self.low_context, "hi_context": self.hi_context}


def chunk_borders(num_frames: int, chunk: int, context: int) -> list[int]:
    """Index of the first new frame of every chunk after the first (where chunks meet)."""
    borders, start = [], chunk
    while start < num_frames:
        borders.append(start)
        start += chunk - context
    return borders


@torch.no_grad()
def upsample_clip(model: ModelRecord, low: torch.Tensor, *, steps: int, generator: torch.Generator,
                  chunk: int | None = None, context: int = 2, aug_level: int | None = None,
                  sampler: str = "ddim") -> torch.Tensor:
    """A whole clip ``[B, T, 3, h, w] -> [B, T, 3, H, W]`` through the chunked stream."""
    chunk_sampler = UpsamplerSampler(model, steps, aug_level=aug_level, sampler=sampler, context=context,
                                     chunk=chunk)
    stream = StreamingUpsampler.empty(chunk_sampler, chunk_sampler.chunk, min(context, chunk_sampler.chunk - 1),
                                      low)
    parts = [stream.push(low, generator), stream.flush(generator)]
    return torch.cat([p for p in parts if p is not None], dim=1)
