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
:func:`iter_rollout` yields each decoded chunk (frames + the boxes used) as it is made, with
or without an output folder; :func:`run_rollout` runs it to the end.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from drivesim.data.ego import EgoSeries
from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.scenario import Scenario, ScenarioFrames
from drivesim.rollout.state import RolloutState, load_state, save_state
from drivesim.rollout.streams import Decode, StreamingDecoder, StreamingUpsampler, Upsample
from drivesim.rollout.writer import (
    WORK_DIR,
    ChunkWriter,
    finalize_outputs,
    output_exists,
    write_clip_json,
)
from drivesim.utils.frames import to_uint8
from drivesim.utils.io import DriveSimInputError

STATE_NAME = "state.pt"


@dataclass(frozen=True)
class SegmentCondition:
    """Conditioning of one window of ``window`` frames, the first ``num_context`` given.

    boxes [B,T,N,4] / box_classes [B,T,N] / box_ids [B,T,N] (``None`` when the scenario has
    no boxes), daynight [B], crowd [B] int64; the commanded ego motion ego_speed / ego_yaw_rate
    [B,T] float32 (m/s, rad/s left positive) with ego_known [B,T] bool (``None``: no frame
    of the window has known motion)."""

    boxes: torch.Tensor | None
    box_classes: torch.Tensor | None
    box_ids: torch.Tensor | None
    daynight: torch.Tensor
    crowd: torch.Tensor
    num_context: int
    window: int
    ego_speed: torch.Tensor | None = None
    ego_yaw_rate: torch.Tensor | None = None
    ego_known: torch.Tensor | None = None


PredictSegment = Callable[[torch.Tensor, SegmentCondition, torch.Generator], torch.Tensor]
Interpolate = Callable[[torch.Tensor, SegmentCondition, torch.Generator], torch.Tensor]


@dataclass
class RolloutModels:
    """The loop's model callables.

    ``interpolate``: one callable (one pass, factor ``plan.interp_factor``) or a sequence of
    passes with their ``interp_factors`` (the paper's cascade: the same model twice, x4 then
    x4 with the second regime); their product is the plan's ``interp_factor``.
    ``upsample``: the video upsampler over ``upsample_chunk``-frame chunks with
    ``upsample_context`` frames carried between chunks (None: frames are written as decoded).
    """

    predict_segment: PredictSegment
    decode: Decode
    interpolate: Interpolate | Sequence[Interpolate] | None = None
    decode_overlap: int = 2  # latent frames of temporal-decoder context on each side
    interp_factors: tuple[int, ...] = ()
    upsample: Upsample | None = None
    upsample_chunk: int = 8
    upsample_context: int = 2

    def passes(self, total_factor: int) -> list[tuple[int, Interpolate]]:
        """[(factor, interpolate)] per interpolation pass, checked against the plan's factor."""
        if self.interpolate is None:
            return []
        fns = [self.interpolate] if callable(self.interpolate) else list(self.interpolate)
        factors = tuple(self.interp_factors) or ((total_factor,) if len(fns) == 1 else ())
        if len(factors) != len(fns) or math.prod(factors) != total_factor or min(factors) < 2:
            raise ValueError(f"interpolation factors {factors} for {len(fns)} passes do not make the "
                             f"plan's interp_factor {total_factor}")
        return list(zip(factors, fns))


@dataclass
class RolloutJob:
    plan: RolloutPlan
    scenario: Scenario
    out_dir: Path | None  # None: frames are only yielded (no files, no resume)
    seed: int
    fingerprint: str
    debug_video: bool = False
    save_every: int = 2  # segments between resume-state saves
    metadata: dict = field(default_factory=dict)  # extra provenance for clip.json


@dataclass
class RolloutChunk:
    """Output frames ``first .. first + n - 1`` as they are decoded: ``frames`` uint8
    ``[n, H, W, 3]``, the scenario boxes used for them (``ScenarioFrames``, padded) and the
    commanded ego motion of each frame (``EgoSeries``; unknown where the scenario has none)."""

    first: int
    frames: np.ndarray
    boxes: ScenarioFrames
    ego: EgoSeries | None = None


@dataclass
class RolloutResult:
    out_dir: Path | None
    num_frames: int
    num_segments: int
    resumed_from: int | None


def segment_condition(scenario: Scenario, key_indices: list[int], model_fps: float,
                      num_context: int) -> SegmentCondition:
    """Scenario boxes and ego motion of the given frames (indices at ``model_fps``) as a B = 1
    window condition."""
    dn, crowd = torch.tensor([scenario.daynight]), torch.tensor([scenario.crowd])
    ego = _ego_tensors(scenario.ego_at(key_indices, model_fps))
    if not scenario.has_boxes:
        return SegmentCondition(None, None, None, dn, crowd, num_context, len(key_indices), **ego)
    f = scenario.frames_at(key_indices, model_fps)
    return SegmentCondition(boxes=torch.from_numpy(f.boxes)[None], box_classes=torch.from_numpy(f.classes)[None],
                            box_ids=torch.from_numpy(f.track_ids)[None], daynight=dn, crowd=crowd,
                            num_context=num_context, window=len(key_indices), **ego)


def _ego_tensors(ego: EgoSeries) -> dict[str, torch.Tensor | None]:
    """The window's ego fields, ``[1, T]`` each; all None when no frame's motion is known."""
    if not ego.known.any():
        return {"ego_speed": None, "ego_yaw_rate": None, "ego_known": None}
    return {"ego_speed": torch.from_numpy(ego.speed.astype(np.float32))[None],
            "ego_yaw_rate": torch.from_numpy(ego.yaw_rate.astype(np.float32))[None],
            "ego_known": torch.from_numpy(ego.known.astype(bool))[None]}


def interpolation_pass(seq: torch.Tensor, prev: torch.Tensor, base: int, spacing: int, r: int,
                       interpolate: Interpolate, generator: torch.Generator,
                       condition: Callable[[list[int]], SegmentCondition]) -> torch.Tensor:
    """One interpolation pass: ``seq`` [1,n,C,h,w] at output frames base + spacing * (1..n)
    (``prev`` at ``base``) -> [1, n*r, C, h, w] at base + (spacing / r) * (1..n*r), each gap
    filled from its two ends in order; ``condition(output frame indices)`` gives a window's
    conditioning."""
    step, out = spacing // r, []
    for j in range(seq.shape[1]):
        idx = [base + j * spacing + i * step for i in range(r + 1)]
        pair = torch.cat([prev, seq[:, j: j + 1]], dim=1)  # [1, 2, C, h, w]
        filled = interpolate(pair, condition(idx), generator)  # [1, r + 1, C, h, w]
        out.append(torch.cat([filled[:, 1:r], seq[:, j: j + 1]], dim=1))
        prev = seq[:, j: j + 1]
    return torch.cat(out, dim=1)


class _Loop:
    """One rollout's mutable state; methods are the steps of :func:`run_rollout`.

    Per segment: key latents -> interpolation passes -> streaming decoder -> (streaming
    upsampler) -> writer; every stage draws its noise from the one generator, in this order.
    """

    def __init__(self, job: RolloutJob, models: RolloutModels, writer: ChunkWriter | None) -> None:
        self.job, self.models, self.writer, self.plan = job, models, writer, job.plan
        self.passes = models.passes(job.plan.interp_factor)
        self.made: list[RolloutChunk] = []  # decoded since the caller last took them
        self.generator = torch.Generator().manual_seed(int(job.seed))
        self.segments_done = self.keys_done = self.frames_written = self.chunks = 0
        self.context: torch.Tensor | None = None
        self.decoder: StreamingDecoder | None = None
        self.upsampler: StreamingUpsampler | None = None

    def _new_upsampler(self, buffers: dict | None, like: torch.Tensor) -> StreamingUpsampler | None:
        m = self.models
        if m.upsample is None:
            return None
        if buffers is None:
            return StreamingUpsampler.empty(m.upsample, m.upsample_chunk, m.upsample_context, like)
        return StreamingUpsampler(m.upsample, m.upsample_chunk, m.upsample_context, buffers["low_context"],
                                  buffers["hi_context"], buffers["pending"])

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
        up = state.upsampler
        decoded = state.frames_written + (0 if up is None else up["pending"].shape[1])
        left_n = min(self.models.decode_overlap, decoded)
        tail = state.decode_tail
        self.decoder = StreamingDecoder(self.models.decode, self.models.decode_overlap,
                                        tail[:, :left_n], tail[:, left_n:])
        if up is not None and self.models.upsample is None:
            raise ValueError("the resume state holds upsampler buffers but no upsampler is loaded")
        self.upsampler = None if up is None else self._new_upsampler(up, None)
        self.generator.set_state(state.generator_state)

    def _fill(self, seq: torch.Tensor, prev: torch.Tensor, base: int, spacing: int, r: int,
              interpolate: Interpolate) -> torch.Tensor:
        """One interpolation pass over the scenario (see :func:`interpolation_pass`); output
        frames past the drive's end (the surplus of the last pair) hold its final frame."""
        last = self.plan.num_output_frames - 1
        return interpolation_pass(
            seq, prev, base, spacing, r, interpolate, self.generator,
            lambda idx: segment_condition(self.job.scenario, [min(i, last) for i in idx], self.plan.output_fps, 2))

    def _outputs(self, keys: torch.Tensor, prev_key: torch.Tensor | None, first_key: int) -> torch.Tensor:
        """Output-rate latents for new key frames ``keys`` [1,k,C,h,w]: each key-frame gap goes
        through every interpolation pass as soon as both its ends exist (key i = output i * R)."""
        if not self.passes:
            return keys
        head = []
        if prev_key is None:  # the start frame is output frame 0 as it is
            head, prev_key, keys, first_key = [keys[:, :1]], keys[:, :1], keys[:, 1:], first_key + 1
        seq, spacing = keys, self.plan.interp_factor
        base = (first_key - 1) * spacing  # output index of prev_key
        for r, interpolate in self.passes:
            if seq.shape[1]:
                seq = self._fill(seq, prev_key, base, spacing, r, interpolate)
            spacing //= r
        return torch.cat([*head, seq], dim=1)

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

    def _in_flight(self) -> int:
        """Output frames pushed into the stages but not written yet."""
        up = 0 if self.upsampler is None else self.upsampler.pending.shape[1]
        return self.decoder.pending.shape[1] + up

    def _decoded(self, out_latents: torch.Tensor, final: bool) -> torch.Tensor | None:
        remaining = self.plan.num_output_frames - self.frames_written - self._in_flight()
        parts = [self.decoder.push(out_latents[:, :max(0, remaining)])]
        if final:
            parts.append(self.decoder.flush())
        parts = [p for p in parts if p is not None]
        return torch.cat(parts, dim=1) if parts else None  # [1, n, 3, H, W]

    def _upsampled(self, frames: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        if self.models.upsample is None:
            return frames
        if self.upsampler is None:
            if frames is None:
                return None
            self.upsampler = self._new_upsampler(None, frames)
        parts = [] if frames is None else [self.upsampler.push(frames, self.generator)]
        if final:
            parts.append(self.upsampler.flush(self.generator))
        parts = [p for p in parts if p is not None]
        return torch.cat(parts, dim=1) if parts else None

    def _write(self, out_latents: torch.Tensor, final: bool) -> None:
        frames = self._upsampled(self._decoded(out_latents, final), final)
        if frames is None:  # everything is still waiting for its right-hand context
            return
        first, n = self.frames_written, frames.shape[1]
        boxes = self.job.scenario.frames_at(range(first, first + n), self.plan.output_fps)
        ego = self.job.scenario.ego_at(range(first, first + n), self.plan.output_fps)
        rgb = to_uint8(frames[0])  # [n, H, W, 3]
        if self.writer is not None:
            self.writer.write(self.chunks, rgb, boxes, first, ego)
        self.made.append(RolloutChunk(first, rgb, boxes, ego))
        self.frames_written += n
        self.chunks += 1

    def state(self) -> RolloutState:
        tail = torch.cat([self.decoder.left, self.decoder.pending], dim=1)
        up = None if self.upsampler is None else self.upsampler.buffers()
        return RolloutState(fingerprint=self.job.fingerprint, segments_done=self.segments_done,
                            keys_done=self.keys_done, frames_written=self.frames_written,
                            chunks_written=self.chunks, context=self.context, decode_tail=tail,
                            generator_state=self.generator.get_state(), upsampler=up)


def prepare_output(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing output unless ``--resume`` or ``--overwrite``."""
    if resume:
        return
    if output_exists(out_dir) and not overwrite:
        raise DriveSimInputError("output exists; pass --overwrite to replace it or --resume "
                                 "to continue an interrupted rollout", path=out_dir)
    shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)


def _begin(job: RolloutJob, models: RolloutModels, start_latents: torch.Tensor | None,
           resume: bool, overwrite: bool) -> tuple[_Loop, int | None]:
    """The loop at its first unfinished segment: started from ``start_latents`` or restored."""
    plan, out_dir = job.plan, job.out_dir
    if resume and out_dir is None:
        raise ValueError("resume needs an output folder")
    if out_dir is not None:
        prepare_output(Path(out_dir), resume=resume, overwrite=overwrite)
    job.scenario.check_duration(plan.num_output_frames, plan.output_fps)
    writer = None if out_dir is None else ChunkWriter(out_dir, fps=plan.output_fps, debug=job.debug_video)
    loop = _Loop(job, models, writer)
    if resume:
        state = load_state(Path(out_dir) / WORK_DIR / STATE_NAME, job.fingerprint)
        writer.discard_from(state.chunks_written)  # chunks after the last state: redo them
        loop.restore(state)
        return loop, state.segments_done
    if start_latents is None or start_latents.ndim != 5 or start_latents.shape[0] != 1:
        raise ValueError("start_latents must be [1, S0, C, h, w]")
    loop.start(start_latents)
    if writer is not None:
        save_state(Path(out_dir) / WORK_DIR / STATE_NAME, loop.state())
    return loop, None


@torch.no_grad()
def iter_rollout(job: RolloutJob, models: RolloutModels, start_latents: torch.Tensor | None, *,
                 resume: bool = False, overwrite: bool = False, progress: bool = True,
                 desc: str = "rollout", position: int | None = None
                 ) -> Generator[RolloutChunk, None, RolloutResult]:
    """Generate ``job.plan``, yielding each decoded :class:`RolloutChunk` in order.

    With ``job.out_dir`` the chunks also go to ``frames.mp4`` / ``clip.json`` (and
    ``debug.mp4``) there, with resume states; the generator returns the
    :class:`RolloutResult`. ``start_latents`` [1, S0, C, h, w] are the start frames
    (ignored when resuming). ``desc`` / ``position``: the progress bar's label and line.
    """
    plan = job.plan
    loop, resumed_from = _begin(job, models, start_latents, resume, overwrite)
    state_path = None if job.out_dir is None else Path(job.out_dir) / WORK_DIR / STATE_NAME
    bar = tqdm(total=plan.num_output_frames, initial=loop.frames_written, unit="frame",
               desc=desc, position=position, disable=not progress, dynamic_ncols=True)
    try:
        yield from _take(loop)
        for k in range(loop.segments_done, plan.num_segments):
            loop.run_segment(k)
            bar.set_postfix_str(f"segment {k + 1}/{plan.num_segments}", refresh=False)
            bar.update(loop.frames_written - bar.n)
            if state_path is not None and (k + 1) % job.save_every == 0 and k + 1 < plan.num_segments:
                save_state(state_path, loop.state())
            yield from _take(loop)
    finally:
        bar.close()
    n = loop.frames_written
    if loop.writer is not None:
        n = finalize_outputs(loop.writer, loop.chunks, overwrite=True)
        write_clip_json(Path(job.out_dir), loop.writer, loop.chunks, fps=plan.output_fps, num_frames=n,
                        scenario=job.scenario, metadata=job.metadata)
        loop.writer.remove_work()
    return RolloutResult(None if job.out_dir is None else Path(job.out_dir), n, plan.num_segments,
                         resumed_from)


def _take(loop: _Loop) -> list[RolloutChunk]:
    made, loop.made = loop.made, []
    return made


def run_rollout(job: RolloutJob, models: RolloutModels, start_latents: torch.Tensor | None, *,
                resume: bool = False, overwrite: bool = False, progress: bool = True,
                desc: str = "rollout", position: int | None = None) -> RolloutResult:
    """Generate ``job.plan`` into ``job.out_dir`` (frames.mp4, clip.json, optional debug.mp4)."""
    if job.out_dir is None:
        raise ValueError("run_rollout writes files: the job needs out_dir (use iter_rollout to stream)")
    chunks = iter_rollout(job, models, start_latents, resume=resume, overwrite=overwrite,
                          progress=progress, desc=desc, position=position)
    while True:
        try:
            next(chunks)
        except StopIteration as done:
            return done.value
