"""Streaming stages between the rollout loop and the writer, each equal to its whole-video form.

- :class:`StreamingDecoder`: latents -> frames through the temporal decoder in overlapping
  windows (equal to decoding the whole video at once).
- :class:`StreamingUpsampler` (``drivesim.inference.upsampling``): low-resolution frames ->
  high-resolution frames through the video upsampler in chunks; each chunk after the first is
  conditioned on the previous chunk's last output frames, so chunk borders do not flicker.

Both hold at most one window of frames, so memory does not grow with the length of a drive,
and both expose their buffers for the resume state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from drivesim.inference.upsampling import StreamingUpsampler, Upsample

Decode = Callable[[torch.Tensor], torch.Tensor]
__all__ = ["Decode", "StreamingDecoder", "StreamingUpsampler", "Upsample"]


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
