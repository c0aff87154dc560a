"""Streaming stages between the rollout loop and the writer, each equal to its whole-video form.

- :class:`StreamingDecoder`: latents -> frames through the temporal decoder in overlapping
  windows (equal to decoding the whole video at once).
- :class:`StreamingUpsampler`: low-resolution frames -> high-resolution frames through the
  video upsampler in chunks of ``chunk`` frames; each chunk after the first is conditioned on
  the previous chunk's last ``context`` output frames (re-imposed, as the prediction model's
  context), so chunk borders do not flicker.

Both hold at most one window of frames, so memory does not grow with the length of a drive,
and both expose their buffers for the resume state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Decode = Callable[[torch.Tensor], torch.Tensor]
# upsample(low [B, S + n, 3, h, w], hi_context [B, S, 3, H, W] | None, generator) -> [B, S + n, 3, H, W]
Upsample = Callable[[torch.Tensor, torch.Tensor | None, torch.Generator], torch.Tensor]


class StreamingDecoder:
    """Decode latents in overlapping windows as they arrive, equal to decoding the whole video.

    A frame is emitted once ``overlap`` later latents exist (its right-hand context); the
    last ``overlap`` emitted latents stay as left context. ``flush`` emits the rest at the
    video's end, where whole-video decoding has no right context either.
    """

    def __init__(self, decode: Decode, overlap: int, left: torch.Tensor, pending: torch.Tensor) -> None:
        self.decode, self.overlap = decode, int(overlap)
        self.left, self.pending = left, pending  # [B, <=o, C, h, w], [B, p, C, h, w]

    def _emit(self, n: int) -> torch.Tensor | None:
        if n == 0:
            return None
        window = torch.cat([self.left, self.pending], dim=1)  # [B, l + p, C, h, w]
        lo = self.left.shape[1]
        frames = self.decode(window)[:, lo: lo + n]  # [B, n, 3, H, W]
        emitted = torch.cat([self.left, self.pending[:, :n]], dim=1)
        self.left = emitted[:, emitted.shape[1] - min(self.overlap, emitted.shape[1]):]
        self.pending = self.pending[:, n:]
        return frames

    def push(self, latents: torch.Tensor) -> torch.Tensor | None:
        self.pending = torch.cat([self.pending, latents], dim=1)
        return self._emit(max(0, self.pending.shape[1] - self.overlap))

    def flush(self) -> torch.Tensor | None:
        return self._emit(self.pending.shape[1])


class StreamingUpsampler:
    """Upsample frames in chunks of ``chunk`` as they arrive.

    The first chunk has no context and emits ``chunk`` frames; every later one re-uses the
    last ``context`` output frames (and their low-resolution inputs) and emits
    ``chunk - context`` new ones. ``pending`` holds low-resolution frames not yet upsampled.
    """

    def __init__(self, upsample: Upsample, chunk: int, context: int, low_context: torch.Tensor,
                 hi_context: torch.Tensor, pending: torch.Tensor) -> None:
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
        self.pending = torch.cat([self.pending, frames], dim=1)
        out = []
        while True:
            new = self.chunk - (0 if self.hi_context is None else self.hi_context.shape[1])
            if self.pending.shape[1] < new:
                break
            out.append(self._step(new, generator))
        return torch.cat(out, dim=1) if out else None

    def flush(self, generator: torch.Generator) -> torch.Tensor | None:
        return self._step(self.pending.shape[1], generator) if self.pending.shape[1] else None

    def buffers(self) -> dict[str, torch.Tensor | None]:
        """What the resume state keeps: the pending low-res frames and the context pair."""
        return {"pending": self.pending, "low_context": self.low_context, "hi_context": self.hi_context}
