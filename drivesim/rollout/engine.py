"""The long-rollout loop (Video LDM §4.1: predict, re-condition on the last S frames, repeat).

The loop only sees small injected callables, so it is tested with tiny stand-ins and wired
to the real models in :mod:`drivesim.rollout.sampler`:

- ``predict_segment(context [B,S,C,h,w], cond: SegmentCondition, generator) -> [B,T,C,h,w]``
  runs the prediction model on one window whose first S frames are the context;
- ``decode(latents [B,n,C,h,w]) -> frames [B,n,3,H,W]`` in [-1, 1] (the temporal decoder);
- ``interpolate(pair [B,2,C,h,w], cond, generator) -> [B,r+1,C,h,w]`` (optional) fills
  r - 1 frames between two key frames (endpoints included in its output).

Memory is bounded by one window: the loop keeps the S context latents, the decoder's
overlap and the current segment; frames go to chunk files as soon as they are decoded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.scenario import Scenario
from drivesim.rollout.state import RolloutState, load_state, save_state
from drivesim.rollout.writer import (
    WORK_DIR,
    ChunkWriter,
    finalize_outputs,
    output_exists,
    write_clip_json,
)
from drivesim.utils.io import DriveSimInputError

STATE_NAME = "state.pt"


@dataclass(frozen=True)
class SegmentCondition:
    """Conditioning of one window of ``window`` frames, the first ``num_context`` given.

    boxes [B,T,N,4] / box_classes [B,T,N] / box_ids [B,T,N] (``None`` when the scenario has
    no boxes), daynight [B], crowd [B] int64."""

    boxes: torch.Tensor | None
    box_classes: torch.Tensor | None
    box_ids: torch.Tensor | None
    daynight: torch.Tensor
    crowd: torch.Tensor
    num_context: int
    window: int


PredictSegment = Callable[[torch.Tensor, SegmentCondition, torch.Generator], torch.Tensor]
Decode = Callable[[torch.Tensor], torch.Tensor]
Interpolate = Callable[[torch.Tensor, SegmentCondition, torch.Generator], torch.Tensor]


@dataclass
class RolloutModels:
    predict_segment: PredictSegment
    decode: Decode
    interpolate: Interpolate | None = None
    decode_overlap: int = 2  # latent frames of temporal-decoder context on each side


@dataclass
class RolloutJob:
    plan: RolloutPlan
    scenario: Scenario
    out_dir: Path
    seed: int
    fingerprint: str
    debug_video: bool = False
    save_every: int = 2  # segments between resume-state saves
    metadata: dict = field(default_factory=dict)  # extra provenance for clip.json


@dataclass
class RolloutResult:
    out_dir: Path
    num_frames: int
    num_segments: int
    resumed_from: int | None


def segment_condition(scenario: Scenario, key_indices: list[int], model_fps: float,
                      num_context: int) -> SegmentCondition:
    """Scenario boxes of the given key frames as a B = 1 window condition."""
    dn, crowd = torch.tensor([scenario.daynight]), torch.tensor([scenario.crowd])
    if not scenario.has_boxes:
        return SegmentCondition(None, None, None, dn, crowd, num_context, len(key_indices))
    f = scenario.frames_at(key_indices, model_fps)
    return SegmentCondition(boxes=torch.from_numpy(f.boxes)[None], box_classes=torch.from_numpy(f.classes)[None],
                            box_ids=torch.from_numpy(f.track_ids)[None], daynight=dn, crowd=crowd,
                            num_context=num_context, window=len(key_indices))


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


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[1, n, 3, H, W] in [-1, 1] -> uint8 [n, H, W, 3]."""
    x = ((frames[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "n c h w -> n h w c").cpu().numpy()


class _Loop:
    """One rollout's mutable state; methods are the steps of :func:`run_rollout`."""

    def __init__(self, job: RolloutJob, models: RolloutModels, writer: ChunkWriter) -> None:
        self.job, self.models, self.writer, self.plan = job, models, writer, job.plan
        self.generator = torch.Generator().manual_seed(int(job.seed))
        self.segments_done = self.keys_done = self.frames_written = self.chunks = 0
        self.context: torch.Tensor | None = None
        self.decoder: StreamingDecoder | None = None

    def start(self, start_latents: torch.Tensor) -> None:
        keys = start_latents[:, : self.plan.num_key_frames]  # [1, S0', C, h, w]
        empty = keys[:, :0]
        self.decoder = StreamingDecoder(self.models.decode, self.models.decode_overlap, empty, empty)
        self.context = keys
        out = self._outputs(keys, prev_key=None, first_key=0)
        self.keys_done = keys.shape[1]
        self._write(out, final=self.plan.num_segments == 0)

    def restore(self, state: RolloutState) -> None:
        self.segments_done, self.keys_done = state.segments_done, state.keys_done
        self.frames_written, self.chunks = state.frames_written, state.chunks_written
        self.context = state.context
        left_n = min(self.models.decode_overlap, state.frames_written)
        tail = state.decode_tail
        self.decoder = StreamingDecoder(self.models.decode, self.models.decode_overlap,
                                        tail[:, :left_n], tail[:, left_n:])
        self.generator.set_state(state.generator_state)

    def _outputs(self, keys: torch.Tensor, prev_key: torch.Tensor | None, first_key: int) -> torch.Tensor:
        """Output-rate latents for new key frames ``keys`` [1,k,C,h,w] (interpolated when r > 1)."""
        r, interp = self.plan.interp_factor, self.models.interpolate
        if r == 1 or interp is None:
            return keys
        pieces = [] if prev_key is not None else [keys[:, :1]]
        prev = prev_key if prev_key is not None else keys[:, :1]
        for j in range(0 if prev_key is not None else 1, keys.shape[1]):
            key_index = first_key + j
            # output frames of the pair; past the drive's end (surplus of the last pair) hold
            idx = [min((key_index - 1) * r + i, self.plan.num_output_frames - 1) for i in range(r + 1)]
            cond = segment_condition(self.job.scenario, idx, self.plan.output_fps, 2)
            pair = torch.cat([prev, keys[:, j: j + 1]], dim=1)  # [1, 2, C, h, w]
            filled = interp(pair, cond, self.generator)  # [1, r + 1, C, h, w]
            pieces.append(torch.cat([filled[:, 1:r], keys[:, j: j + 1]], dim=1))
            prev = keys[:, j: j + 1]
        return torch.cat(pieces, dim=1)

    def run_segment(self, k: int) -> None:
        span = self.plan.segment(k)
        # key frame i is output frame i * r; the last window (and with interpolation the last
        # key frame) may overrun the drive, and there the final frame's boxes are held
        r, last = self.plan.interp_factor, self.plan.num_output_frames - 1
        idx = [min(i * r, last) for i in range(span.start, span.stop)]
        cond = segment_condition(self.job.scenario, idx, self.plan.output_fps, span.context)
        ctx = self.context[:, -span.context:]  # [1, S, C, h, w]
        latents = self.models.predict_segment(ctx, cond, self.generator)
        if latents.shape[:2] != (ctx.shape[0], span.window) or latents.shape[2:] != ctx.shape[2:]:
            raise ValueError(f"predict_segment returned {tuple(latents.shape)}, expected "
                             f"[{ctx.shape[0]}, {span.window}, {', '.join(map(str, ctx.shape[2:]))}]")
        new = latents[:, span.context: span.context + span.emit]  # [1, emit, C, h, w]
        out = self._outputs(new, prev_key=self.context[:, -1:], first_key=span.new_start)
        self.context = torch.cat([self.context, new], dim=1)[:, -self.plan.context:]
        self.keys_done += span.emit
        self.segments_done = k + 1
        self._write(out, final=k + 1 == self.plan.num_segments)

    def _write(self, out_latents: torch.Tensor, final: bool) -> None:
        remaining = self.plan.num_output_frames - self.frames_written - self.decoder.pending.shape[1]
        parts = [self.decoder.push(out_latents[:, :max(0, remaining)])]
        if final:
            parts.append(self.decoder.flush())
        parts = [p for p in parts if p is not None]
        if not parts:  # everything is still waiting for its right-hand decoder context
            return
        frames = torch.cat(parts, dim=1)  # [1, n, 3, H, W]
        first, n = self.frames_written, frames.shape[1]
        boxes = self.job.scenario.frames_at(range(first, first + n), self.plan.output_fps)
        self.writer.write(self.chunks, to_uint8(frames), boxes, first)
        self.frames_written += n
        self.chunks += 1

    def state(self) -> RolloutState:
        tail = torch.cat([self.decoder.left, self.decoder.pending], dim=1)
        return RolloutState(fingerprint=self.job.fingerprint, segments_done=self.segments_done,
                            keys_done=self.keys_done, frames_written=self.frames_written,
                            chunks_written=self.chunks, context=self.context, decode_tail=tail,
                            generator_state=self.generator.get_state())


def prepare_output(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing output unless ``--resume`` or ``--overwrite``."""
    if resume:
        return
    if output_exists(out_dir) and not overwrite:
        raise DriveSimInputError("output exists; pass --overwrite to replace it or --resume "
                                 "to continue an interrupted rollout", path=out_dir)
    shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)


@torch.no_grad()
def run_rollout(job: RolloutJob, models: RolloutModels, start_latents: torch.Tensor | None, *,
                resume: bool = False, overwrite: bool = False, progress: bool = True,
                desc: str = "rollout", position: int | None = None) -> RolloutResult:
    """Generate ``job.plan`` into ``job.out_dir`` (frames.mp4, clip.json, optional debug.mp4).

    ``start_latents`` [1, S0, C, h, w] are the start frames (ignored when resuming).
    ``desc`` / ``position``: the progress bar's label and terminal line (parallel drives).
    """
    out_dir, plan = Path(job.out_dir), job.plan
    prepare_output(out_dir, resume=resume, overwrite=overwrite)
    job.scenario.check_duration(plan.num_output_frames, plan.output_fps)
    writer = ChunkWriter(out_dir, fps=plan.output_fps, debug=job.debug_video)
    loop, state_path, resumed_from = _Loop(job, models, writer), out_dir / WORK_DIR / STATE_NAME, None
    if resume:
        state = load_state(state_path, job.fingerprint)
        writer.discard_from(state.chunks_written)  # chunks after the last state: redo them
        loop.restore(state)
        resumed_from = state.segments_done
    else:
        if start_latents is None or start_latents.ndim != 5 or start_latents.shape[0] != 1:
            raise ValueError("start_latents must be [1, S0, C, h, w]")
        loop.start(start_latents)
        save_state(state_path, loop.state())
    bar = tqdm(total=plan.num_output_frames, initial=loop.frames_written, unit="frame",
               desc=desc, position=position, disable=not progress, dynamic_ncols=True)
    try:
        for k in range(loop.segments_done, plan.num_segments):
            loop.run_segment(k)
            bar.set_postfix_str(f"segment {k + 1}/{plan.num_segments}", refresh=False)
            bar.update(loop.frames_written - bar.n)
            if (k + 1) % job.save_every == 0 and k + 1 < plan.num_segments:
                save_state(state_path, loop.state())
    finally:
        bar.close()
    n = finalize_outputs(writer, loop.chunks, overwrite=True)
    write_clip_json(out_dir, writer, loop.chunks, fps=plan.output_fps, num_frames=n,
                    scenario=job.scenario, metadata=job.metadata)
    writer.remove_work()
    return RolloutResult(out_dir, n, plan.num_segments, resumed_from)
