"""Datasets yielding the batch contract (docs/architecture.md), one sample at a time.

- :class:`ClipDataset`: windows of T frames from a folder of clips (clip format), resampled
  to a requested fps and resized/cropped to the training size, boxes transformed with them.
- :class:`SyntheticDataset`: an endless-world stream (``drivesim.data.world``), one fresh
  drive per sample, distinct and reproducible per rank and worker.
- :func:`collate_batch`: stacks samples into ``[B, ...]`` tensors (``clip_id``: list of str).

Per sample: ``video`` float32 ``[T, 3, H, W]`` in [-1, 1], ``boxes`` ``[T, N, 4]``,
``box_classes``/``box_ids`` int64 ``[T, N]``, ``ego_speed``/``ego_yaw_rate`` float32 ``[T]``
(m/s, rad/s left positive; 0 where unknown), ``ego_known`` bool ``[T]``,
``daynight``/``crowd`` int64 ``[]``, ``fps`` float32 ``[]``, ``clip_id`` str.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from drivesim.data.boxes import PaddedBoxes, ResizeCrop, pad_boxes
from drivesim.data.clip_format import (
    MANIFEST,
    Clip,
    mean_visible_vehicles,
    read_clip,
    read_manifest,
)
from drivesim.data.ego import EgoSeries
from drivesim.data.labels import CROWD_EDGES, DAY, NIGHT, crowd_bucket
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE
from drivesim.utils.io import DriveSimInputError

log = logging.getLogger(__name__)

MAX_OPEN_READERS = 8  # decoders kept open per dataset copy (one per DataLoader worker)
EGO_PROGRAM_FRACTION = 0.5   # share of synthetic drives driven by a random ego program (default)
EGO_PROGRAM_SECONDS = 300.0  # length of a random ego program (held after its end)


def resample_indices(frames: int, src_fps: float, out_fps: float, start: int = 0) -> np.ndarray:
    """Source frame indices of a window of ``frames`` output frames at ``out_fps``.

    Nearest-frame mapping: output frame k sits at time k / out_fps after the window start,
    i.e. at source position k * src_fps / out_fps, rounded half up. 30 fps -> 10 fps picks
    every 3rd frame; 10 fps -> 4 fps picks 0, 3 (2.5), 5, 8 (7.5), 10; upsampling repeats frames.
    """
    step = src_fps / out_fps
    return start + np.floor(np.arange(frames) * step + 0.5).astype(np.int64)


def window_starts(num_frames: int, frames: int, src_fps: float, out_fps: float, stride: int) -> list[int]:
    """Source start frames of the windows in a clip; ``stride`` is in output frames."""
    span = int(resample_indices(frames, src_fps, out_fps)[-1]) + 1
    step = max(1, round(stride * src_fps / out_fps))
    return list(range(0, num_frames - span + 1, step))


def to_video_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(127.5).sub_(1.0)
    return rearrange(x, "t h w c -> t c h w")


def ego_tensors(ego: EgoSeries) -> dict[str, torch.Tensor]:
    """The batch keys of ``T`` frames' ego motion: ``ego_speed`` / ``ego_yaw_rate`` float32 ``[T]``,
    ``ego_known`` bool ``[T]``."""
    return {"ego_speed": torch.from_numpy(np.asarray(ego.speed, np.float32).copy()),
            "ego_yaw_rate": torch.from_numpy(np.asarray(ego.yaw_rate, np.float32).copy()),
            "ego_known": torch.from_numpy(np.asarray(ego.known, bool).copy())}


def make_sample(rgb: np.ndarray, padded: Sequence[PaddedBoxes], daynight: int, crowd: int,
                fps: float, clip_id: str, ego: EgoSeries | None = None) -> dict:
    """One sample of the batch contract from ``[T, H, W, 3]`` frames, ``T`` padded box sets and
    (optionally) their ego motion; ``None`` = unknown."""
    return {
        "video": to_video_tensor(rgb),
        "boxes": torch.from_numpy(np.stack([p.boxes for p in padded])),
        "box_classes": torch.from_numpy(np.stack([p.classes for p in padded])),
        "box_ids": torch.from_numpy(np.stack([p.ids for p in padded])),
        **ego_tensors(EgoSeries.unknown(len(padded)) if ego is None else ego),
        "daynight": torch.tensor(daynight, dtype=torch.int64),
        "crowd": torch.tensor(crowd, dtype=torch.int64),
        "fps": torch.tensor(fps, dtype=torch.float32),
        "clip_id": clip_id,
    }


def collate_batch(samples: Sequence[dict]) -> dict:
    """Stack per-sample tensors into ``[B, ...]``; strings become a list (``clip_id``)."""
    if not samples:
        raise ValueError("collate_batch: empty list of samples")
    batch = {}
    for key, first in samples[0].items():
        values = [s[key] for s in samples]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, str):
            batch[key] = list(values)
        else:
            batch[key] = torch.as_tensor(values)
    return batch


class ClipDataset(Dataset):
    """Windows of ``frames`` frames at ``fps`` from the clips of one manifest split.

    Every clip contributes the windows starting at source frames 0, s, 2s, ... where
    ``s`` = ``stride`` output frames (default: ``frames``, non-overlapping). ``fps=None``
    keeps each clip's own rate. ``frames=1`` is the single-frame (image) mode.
    Frames are resized to cover ``height x width`` (aspect kept) and centre-cropped; boxes
    follow and boxes cropped away are dropped. ``max_boxes`` pads/truncates per frame.

    Bad clips (invalid clip.json, missing/corrupt frames, shorter than one window) raise
    ``DriveSimInputError`` unless ``lenient=True``; then they are skipped and listed in
    ``self.skipped`` as ``(clip_id, reason)`` and counted in the warning.

    ``cache_mb`` > 0 keeps whole decoded clips (uint8) in memory, least recently used evicted
    beyond that many MiB per dataset copy: random single-frame access into an mp4 otherwise
    decodes from the previous key frame on every sample, which costs a CPU core at the step
    rate of a small autoencoder.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", frames: int = 8,
                 fps: float | None = None, height: int = 128, width: int = 256, max_boxes: int = 16,
                 stride: int | None = None, lenient: bool = False, cache_mb: float = 0.0) -> None:
        if frames < 1 or height < 1 or width < 1 or max_boxes < 1 or (fps is not None and not fps > 0):
            raise ValueError(f"ClipDataset: bad sizes frames={frames} fps={fps} size={height}x{width} "
                             f"max_boxes={max_boxes}")
        self.root, self.split, self.frames, self.fps = Path(root), split, frames, fps
        self.out_hw, self.max_boxes, self.stride = (height, width), max_boxes, stride or frames
        self.lenient = lenient
        self.clips: list[Clip] = []
        self.windows: list[tuple[int, int]] = []  # (clip index, source start frame)
        self.skipped: list[tuple[str, str]] = []
        self.decode_failures: Counter[str] = Counter()
        self._open: OrderedDict[int, None] = OrderedDict()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # clip index -> uint8 [N, h, w, 3]
        self._cache_bytes, self._cache_limit = 0, int(max(cache_mb, 0.0) * 2**20)
        self._pid = os.getpid()
        self._inherited: list[object] = []
        self._load()

    def _load(self) -> None:
        entries = [e for e in read_manifest(self.root) if e.split == self.split]
        if not entries:
            raise DriveSimInputError("no clips in this split", path=self.root / MANIFEST, field="split",
                                     value=self.split)
        for entry in entries:
            try:
                clip = read_clip(self.root / entry.path)
                starts = window_starts(clip.num_frames, self.frames, clip.fps, self._out_fps(clip), self.stride)
                if not starts:
                    need = int(resample_indices(self.frames, clip.fps, self._out_fps(clip))[-1]) + 1
                    raise DriveSimInputError(
                        f"clip too short for a window of {self.frames} frames at {self._out_fps(clip)} fps "
                        f"(needs {need} source frames)", path=clip.path / "clip.json", field="num_frames",
                        value=clip.num_frames)
            except DriveSimInputError as err:
                if not self.lenient:
                    raise
                self.skipped.append((entry.clip_id, str(err)))
                continue
            self.windows += [(len(self.clips), s) for s in starts]
            self.clips.append(clip)
        if self.skipped:
            log.warning("ClipDataset(%s, split=%s): skipped %d of %d clips: %s", self.root, self.split,
                        len(self.skipped), len(entries), "; ".join(f"{c}: {r}" for c, r in self.skipped[:5]))
        if not self.windows:
            raise DriveSimInputError(f"no usable clips ({len(self.skipped)} skipped)", path=self.root / MANIFEST,
                                     field="split", value=self.split)

    def _out_fps(self, clip: Clip) -> float:
        return clip.fps if self.fps is None else float(self.fps)

    def __len__(self) -> int:
        return len(self.windows)

    def _touch(self, k: int) -> None:
        """Keep at most MAX_OPEN_READERS decoders open (file handles), least recent closed."""
        if self._pid != os.getpid():
            # A forked DataLoader worker inherited the parent's decoders (file offsets shared with
            # the parent, decoder threads that do not exist here): never use or free them (freeing
            # joins the missing threads and hangs); keep them referenced and open our own.
            for old in self._open:
                self._inherited.append(self.clips[old]._reader)
                self.clips[old]._reader = None
            self._open.clear()
            self._pid = os.getpid()
        self._open[k] = None
        self._open.move_to_end(k)
        while len(self._open) > MAX_OPEN_READERS:
            old, _ = self._open.popitem(last=False)
            self.clips[old].close()

    def _clip_frames(self, k: int, idx: np.ndarray) -> np.ndarray:
        """Frames ``idx`` of clip ``k``: from the decoded-clip cache when enabled, else the reader."""
        clip = self.clips[k]
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k][idx]
        size = clip.num_frames * clip.height * clip.width * 3
        if size > self._cache_limit:  # cache off, or a clip larger than the whole cache
            self._touch(k)
            return clip.frames(idx)
        self._touch(k)
        try:
            whole = clip.frames(np.arange(clip.num_frames))
        except DriveSimInputError:  # a broken frame somewhere: read just this window (lenient mode
            return clip.frames(idx)  # then loses only the windows that really fail)
        clip.close()  # decoded once: the reader is not needed again while the clip stays cached
        self._open.pop(k, None)
        while self._cache and self._cache_bytes + size > self._cache_limit:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        self._cache[k], self._cache_bytes = whole, self._cache_bytes + whole.nbytes
        return whole[idx]

    def _window_boxes(self, clip: Clip, idx: np.ndarray, rc: ResizeCrop) -> list[PaddedBoxes]:
        out = []
        for i in idx.tolist():
            boxes, keep = rc.apply_boxes(clip.boxes[i])
            out.append(pad_boxes(boxes[keep], clip.classes[i][keep], clip.track_ids[i][keep], self.max_boxes))
        return out

    def load_window(self, index: int) -> dict:
        k, start = self.windows[index]
        clip = self.clips[k]
        out_fps = self._out_fps(clip)
        idx = resample_indices(self.frames, clip.fps, out_fps, start)
        rgb = self._clip_frames(k, idx)                          # [T, h, w, 3] uint8
        rc = ResizeCrop.center((clip.height, clip.width), self.out_hw)
        rgb = np.stack([rc.apply_image(f) for f in rgb])         # [T, H, W, 3]
        return make_sample(rgb, self._window_boxes(clip, idx, rc), clip.daynight, clip.crowd, out_fps,
                           clip.clip_id, clip.ego_arrays(idx))

    def __getitem__(self, index: int) -> dict:
        if not self.lenient:
            return self.load_window(index)
        # Lenient: a clip whose frames fail to decode is reported and replaced by the next window.
        for attempt in range(min(len(self), 8)):
            i = (index + attempt) % len(self)
            try:
                return self.load_window(i)
            except DriveSimInputError as err:
                self.decode_failures[self.clips[self.windows[i][0]].clip_id] += 1
                log.warning("ClipDataset: skipping window %d: %s", i, err)
        raise DriveSimInputError("8 consecutive windows failed to decode", path=self.root, field="frames",
                                 value=index)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_indices(total: int, rank: int, world_size: int, worker: int = 0, num_workers: int = 1) -> range:
    """Global sample indices of one (rank, worker) out of ``total`` per epoch.

    Every rank gets ``total // world_size`` samples (the remainder, < world_size, is dropped
    so that all ranks run the same number of steps); within a rank the workers interleave.
    Rank r owns r, r + W, r + 2W, ...; worker w of K takes every K-th of those.
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"bad shard rank={rank}/{world_size} worker={worker}/{num_workers}")
    per_rank = total // world_size
    return range(rank + worker * world_size, per_rank * world_size, world_size * num_workers)


def world_config(scenario: dict, *, height: int, width: int, fps: float, night: bool | None = None):
    """The ``WorldConfig`` of a :meth:`SyntheticDataset.scenario` draw rendered at ``height x width``
    and ``fps`` (``night`` overrides the drawn lighting; the drive itself is unchanged). A draw
    with an ``ego_program`` drives that random ego program (``ego_presets.program_track``)."""
    from drivesim.data.ego_presets import program_track
    from drivesim.data.world import WorldConfig

    program = scenario.get("ego_program")
    return WorldConfig(seed=scenario["seed"], height=height, width=width, fps=fps,
                       night=scenario["night"] if night is None else night,
                       num_vehicles=scenario["num_vehicles"], weather=scenario["weather"],
                       traffic_range=scenario.get("traffic_range", DEFAULT_TRAFFIC_RANGE),
                       ego_track=None if program is None else program_track(program, EGO_PROGRAM_SECONDS))


class SyntheticDataset(IterableDataset):
    """Streams windows of ``frames`` frames rendered by the synthetic world.

    Sample ``i`` of epoch ``e`` is a fresh drive whose world seed, day/night
    (``night_fraction``), vehicle count (``min_vehicles..max_vehicles``), weather and
    warm-up length are drawn from ``SeedSequence([seed, e, i])``; ``traffic_range`` (metres of
    simulated traffic ahead, ``WorldConfig``) is the same for every drive. A share
    ``ego_program_fraction`` of the drives (drawn from a stream of its own, so the other draws
    do not depend on it) follows a random ego program of stops, speed changes and curves
    (``ego_presets.random_track``) instead of the world's own driver; every sample carries the
    ego's exact speed and yaw rate. The per-epoch index space
    ``0..samples-1`` is split over (rank, worker) by :func:`shard_indices`, so samples are
    distinct across ranks and workers, and identical for the same seed whatever the worker
    count. With ``resample_each_epoch`` every pass over the dataset (in a persistent worker)
    draws the next epoch's drives; otherwise every epoch repeats epoch 0 (validation).
    """

    def __init__(self, frames: int = 8, fps: float = 10.0, height: int = 128, width: int = 256,
                 max_boxes: int = 16, samples: int = 1000, seed: int = 0, night_fraction: float = 0.5,
                 min_vehicles: int = 0, max_vehicles: int = 12, weathers: Sequence[str] = ("clear",),
                 max_warmup_steps: int = 30, rank: int | None = None, world_size: int | None = None,
                 resample_each_epoch: bool = True, traffic_range: float = DEFAULT_TRAFFIC_RANGE,
                 ego_program_fraction: float = EGO_PROGRAM_FRACTION) -> None:
        if not (0 <= night_fraction <= 1 and 0 <= min_vehicles <= max_vehicles and frames >= 1 and samples >= 0
                and 0 <= ego_program_fraction <= 1):
            raise ValueError(f"SyntheticDataset: bad options night_fraction={night_fraction} "
                             f"vehicles={min_vehicles}..{max_vehicles} frames={frames} samples={samples} "
                             f"ego_program_fraction={ego_program_fraction}")
        self.frames, self.fps, self.height, self.width = frames, float(fps), height, width
        self.max_boxes, self.samples, self.seed = max_boxes, samples, seed
        self.night_fraction, self.vehicles = night_fraction, (min_vehicles, max_vehicles)
        self.weathers, self.max_warmup_steps = tuple(weathers), max_warmup_steps
        self.rank, self.world_size = rank, world_size
        self.resample_each_epoch, self.epoch = resample_each_epoch, 0
        self.traffic_range = float(traffic_range)
        self.ego_program_fraction = float(ego_program_fraction)

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        return _dist_rank_world()

    def __len__(self) -> int:
        return self.samples // self._rank_world()[1]

    def scenario(self, index: int, epoch: int = 0) -> dict:
        """The world settings of sample ``index`` in ``epoch`` (pure function of the seed)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index]))
        ego_rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index, 0xE60]))
        program = int(ego_rng.integers(2**31 - 1))
        return {"seed": int(rng.integers(2**31 - 1)), "night": bool(rng.random() < self.night_fraction),
                "num_vehicles": int(rng.integers(self.vehicles[0], self.vehicles[1] + 1)),
                "weather": str(self.weathers[int(rng.integers(len(self.weathers)))]),
                "warmup": int(rng.integers(0, self.max_warmup_steps + 1)), "traffic_range": self.traffic_range,
                "ego_program": program if ego_rng.random() < self.ego_program_fraction else None}

    def sample(self, index: int, epoch: int = 0) -> dict:
        """Render sample ``index`` of ``epoch`` (deterministic)."""
        from drivesim.data.world import DrivingWorld

        sc = self.scenario(index, epoch)
        world = DrivingWorld(world_config(sc, height=self.height, width=self.width, fps=self.fps))
        world.skip(sc["warmup"])  # start somewhere along the drive, not always at t = 0
        frames = [world.step() for _ in range(self.frames)]
        padded = [pad_boxes(f.boxes, f.classes, f.track_ids, self.max_boxes, warn=False) for f in frames]
        mean = mean_visible_vehicles([f.classes for f in frames], [f.visibility for f in frames])
        rgb = np.stack([f.rgb for f in frames])  # [T, H, W, 3]
        ego = EgoSeries.of([f.ego_speed for f in frames], [f.ego_yaw_rate for f in frames])
        return make_sample(rgb, padded, NIGHT if sc["night"] else DAY, crowd_bucket(mean, CROWD_EDGES),
                           self.fps, f"synth-s{self.seed}-e{epoch}-i{index}", ego)

    def indices(self) -> range:
        """Global indices this process (rank and DataLoader worker) yields."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self._rank_world()
        return shard_indices(self.samples, rank, world, worker, num_workers)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch if self.resample_each_epoch else 0
        if self.resample_each_epoch:
            self.epoch += 1
        for i in self.indices():
            yield self.sample(i, epoch)
