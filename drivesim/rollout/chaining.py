"""Chaining arithmetic for long rollouts (Video LDM §3.1 / §4.1, "Align your Latents").

A rollout is a sequence of prediction segments over *key* latent frames at the model fps:

- segment 0 conditions on ``first_context`` start frames (1: the start frame; the paper's
  first round) and emits ``T - first_context`` new frames;
- every later segment conditions on the last ``context`` (S = 2) key frames generated so far
  and emits ``T - S`` new frames.

An optional interpolation pass inserts ``factor - 1`` frames between consecutive key frames
(the paper's interpolation model: 3 frames between each pair, T -> 4T), so ``K`` key frames
give ``(K - 1) * factor + 1`` output frames. The output has exactly
``round(seconds * output_fps)`` frames; the last segment may generate more key frames than
needed and the surplus is dropped.

Everything here is integer arithmetic with no tensors, so it is tested exhaustively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentSpan:
    """Key-frame bookkeeping of one segment.

    ``start``: key-frame index of the first frame of the window (context included);
    ``context``: how many window frames are context; ``emit``: how many of the new frames
    are kept (the last segment may keep fewer than it generates).
    """

    index: int
    start: int
    window: int
    context: int
    emit: int

    @property
    def new_start(self) -> int:
        """Key-frame index of the first newly generated frame."""
        return self.start + self.context

    @property
    def stop(self) -> int:
        """One past the last window frame (key-frame index)."""
        return self.start + self.window


@dataclass(frozen=True)
class RolloutPlan:
    """How many key frames, segments and output frames a rollout of ``seconds`` needs."""

    seconds: float
    model_fps: float
    window: int = 10  # T latent frames per prediction window (paper: T = 10 key frames)
    context: int = 2  # S context frames for every segment after the first (paper: 2)
    first_context: int = 1  # context frames of the first segment (the start frame)
    interp_factor: int = 1  # output fps = model fps * interp_factor

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"seconds must be a positive finite number, got {self.seconds!r}")
        if not (self.model_fps > 0 and math.isfinite(self.model_fps)):
            raise ValueError(f"model fps must be positive, got {self.model_fps!r}")
        if not 1 <= self.context < self.window:
            raise ValueError(f"context S={self.context} must satisfy 1 <= S < T={self.window}")
        if not 1 <= self.first_context < self.window:
            raise ValueError(f"first_context={self.first_context} must be in [1, T={self.window})")
        if self.interp_factor < 1:
            raise ValueError(f"interp_factor must be >= 1, got {self.interp_factor!r}")

    @property
    def output_fps(self) -> float:
        return self.model_fps * self.interp_factor

    @property
    def num_output_frames(self) -> int:
        """round(seconds * output fps), at least 1 (the start frame)."""
        return max(1, int(round(self.seconds * self.output_fps)))

    @property
    def num_key_frames(self) -> int:
        """Key frames needed so that interpolation covers every output frame."""
        n = self.num_output_frames
        return 1 + math.ceil((n - 1) / self.interp_factor)

    @property
    def num_segments(self) -> int:
        """Segments to produce ``num_key_frames`` (0 when the start frames already suffice)."""
        k = self.num_key_frames
        if k <= self.first_context:
            return 0
        if k <= self.window:
            return 1
        return 1 + math.ceil((k - self.window) / (self.window - self.context))

    def segment(self, index: int) -> SegmentSpan:
        """The span of segment ``index`` (0-based)."""
        if not 0 <= index < self.num_segments:
            raise IndexError(f"segment {index} outside [0, {self.num_segments})")
        if index == 0:
            start, ctx = 0, self.first_context
        else:
            # after segment 0 there are T key frames; each later segment adds T - S.
            done = self.window + (index - 1) * (self.window - self.context)
            start, ctx = done - self.context, self.context
        new = self.window - ctx
        emit = min(new, self.num_key_frames - (start + ctx))
        return SegmentSpan(index=index, start=start, window=self.window, context=ctx, emit=emit)

    def key_frames_after(self, segments_done: int) -> int:
        """Key frames available (start frames included) after ``segments_done`` segments."""
        if segments_done == 0:
            return min(self.first_context, self.num_key_frames)
        return self.segment(segments_done - 1).new_start + self.segment(segments_done - 1).emit

    def output_frames_for_keys(self, num_keys: int) -> int:
        """Output frames that ``num_keys`` key frames give after interpolation (truncated)."""
        if num_keys <= 0:
            return 0
        return min(self.num_output_frames, (num_keys - 1) * self.interp_factor + 1)
