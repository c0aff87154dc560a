"""One streaming pass over real and fake videos computing every requested metric.

Each video is read once, in blocks of consecutive needed frames; the frames are dispatched to
FVD clips, FID frames, the oracle and the C2ST. Fake-side results are also kept per time
window (``protocol.window_seconds``, a clip belongs to the window of its first frame) for
drift curves over long rollouts, with the real clips' own level beside each metric.
``evaluate_videos`` is the plain entry point for scripts and for a validation callback
(training/ wraps it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn

from drivesim.data.labels import DAYNIGHT_UNKNOWN, NIGHT
from drivesim.metrics.c2st import C2STCollector, C2STConfig
from drivesim.metrics.extractors import I3DFeatures, InceptionFeatures
from drivesim.metrics.fid import build_fid, compute_fid, fid_stats, set_fid_real_stats
from drivesim.metrics.frechet import FeatureStats
from drivesim.metrics.fvd import FrechetVideoDistance
from drivesim.metrics.oracle.model import Oracle
from drivesim.metrics.oracle.scores import (
    BoxFidelity,
    box_fidelity_frame,
    frame_differences,
    grey_small,
    vehicle_boxes,
)
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sampling import clip_indices, fvd_clip_starts
from drivesim.metrics.sources import VideoSource
from drivesim.metrics.summaries import frechet_result, oracle_result, temporal_result
from drivesim.utils.io import DriveSimInputError

METRICS = ("fvd", "fid", "oracle", "temporal", "c2st")
TEMPORAL_SIZE = (64, 128)  # grey frames for temporal statistics: resolution-independent
READ_BLOCK = 64


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise DriveSimInputError(f"expected a subset of {METRICS}", field="metrics", value=names)
    if "oracle" in names and "temporal" not in names:
        names.append("temporal")  # the oracle group includes temporal consistency
    return tuple(dict.fromkeys(names))


class Evaluator:
    """Feed videos with ``add(source, real)``, then ``result()``; ``real_stats`` after that.

    ``num_videos`` (``{True: real count, False: fake count}``) resolves
    ``protocol.clip_sampling="auto"`` per side; unknown counts resolve to "consecutive".
    """

    def __init__(self, metrics: str | Sequence[str] = ("fvd", "fid", "oracle"), *,
                 protocol: EvalProtocol | None = None, i3d: nn.Module | None = None,
                 inception: nn.Module | None = None, oracle: Oracle | None = None,
                 real_stats: dict[str, FeatureStats] | None = None, batch_size: int = 8,
                 num_videos: Mapping[bool, int] | None = None, c2st: C2STConfig | None = None) -> None:
        self.metrics, self.protocol = parse_metrics(metrics), protocol or EvalProtocol()
        self.batch_size, real_stats = batch_size, real_stats or {}
        self.num_videos = dict(num_videos or {})
        self.sampling = {real: self.protocol.sampling_for(self.num_videos.get(real)) for real in (True, False)}
        self._build_frechet(i3d, inception, real_stats)
        if "oracle" in self.metrics and oracle is None:
            raise ValueError("metric oracle needs an Oracle (oracle.load_or_train_oracle())")
        self.oracle = oracle
        p = self.protocol
        self.c2st = C2STCollector(p.c2st_clip_frames, p.c2st_clips_per_video, p.c2st_max_clips,
                                  c2st or C2STConfig(seed=p.seed)) if "c2st" in self.metrics else None
        self.cached = set(real_stats)
        self.quota = {(side, m): n for side in (True, False) for m, n in (
            ("fvd", p.num_clips), ("fid", p.fid_num_frames))}
        self.quota[(True, "oracle")] = p.oracle_real_frames
        for m in self.cached:
            self.quota[(True, m)] = 0
        self._clips: list[tuple[np.ndarray, int, bool, int]] = []   # (uint8 [T, H, W, 3], window, real, half)
        self._frames: list[tuple[np.ndarray, int, bool, int]] = []  # (uint8 [H, W, 3], window, real, half)
        self.win_fvd: dict[int, FeatureStats] = {}
        self.win_fid: dict[int, FeatureStats] = {}
        self.halves: dict[str, list[FeatureStats]] = {}
        self.box = {True: BoxFidelity(), False: BoxFidelity()}
        self.win_box: dict[int, BoxFidelity] = defaultdict(BoxFidelity)
        self.diffs: dict[bool, list[np.ndarray]] = {True: [], False: []}
        self.real_diff_halves: list[list[np.ndarray]] = [[], []]
        self.win_diffs: dict[int, list[np.ndarray]] = defaultdict(list)
        self.daynight = {True: [0, 0], False: [0, 0]}        # [correct, scored]
        self.win_daynight: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.counts: dict[str, int] = defaultdict(int)
        self.timings: dict[str, float] = defaultdict(float)
        self._real_index = 0

    def _build_frechet(self, i3d: nn.Module | None, inception: nn.Module | None,
                       real_stats: dict[str, FeatureStats]) -> None:
        self.fvd = self.fid = None
        if "fvd" in self.metrics:
            if i3d is None:
                raise ValueError("metric fvd needs an I3D detector (extractors.load_torchscript('i3d', path))")
            ext = i3d if isinstance(i3d, I3DFeatures) else I3DFeatures(i3d, self.protocol.resize)
            probe = torch.zeros(1, self.protocol.frames_per_clip, 3, 64, 64, dtype=torch.uint8)
            self.fvd = FrechetVideoDistance(ext, num_features=ext(probe).shape[1], reset_real=False,
                                            ddof=self.protocol.ddof)
            if "fvd" in real_stats:
                self.fvd.set_real_stats(real_stats["fvd"])
        if "fid" in self.metrics:
            if inception is None:
                raise ValueError("metric fid needs an Inception detector (extractors.load_torchscript('inception', path))")
            ext = inception if isinstance(inception, InceptionFeatures) else InceptionFeatures(inception, self.protocol.resize)
            self.fid = build_fid(ext, reset_real=False)
            if "fid" in real_stats:
                set_fid_real_stats(self.fid, real_stats["fid"])

    # ------------------------------------------------------------------ planning
    def window(self, frame: int, fps: float) -> int:
        w = self.protocol.window_seconds
        return 0 if w is None else int(frame / fps // w)

    def _plan(self, src: VideoSource, real: bool) -> dict[str, np.ndarray]:
        p, stride = self.protocol, self.protocol.stride_for(src.fps)
        empty = np.zeros(0, np.int64)
        plan = {"clips": np.zeros((0, p.frames_per_clip), np.int64), "fid": empty, "oracle": empty,
                "c2st": empty}
        if self.fvd is not None and self.quota[(real, "fvd")] > 0:
            limit = min(self.quota[(real, "fvd")], p.max_clips_per_video or 1 << 30)
            starts = fvd_clip_starts(src.num_frames, p.frames_per_clip, stride, self.sampling[real],
                                     seed=p.seed, name=src.name, limit=limit)
            plan["clips"] = clip_indices(starts, p.frames_per_clip, stride)   # [n, frames_per_clip]
            self.quota[(real, "fvd")] -= len(starts)
        if self.fid is not None and self.quota[(real, "fid")] > 0:
            plan["fid"] = np.arange(0, src.num_frames, p.fid_frame_stride)[: self.quota[(real, "fid")]]
            self.quota[(real, "fid")] -= len(plan["fid"])
        if "temporal" in self.metrics:
            idx = np.arange(0, src.num_frames, stride)
            if real:
                idx = idx[: self.quota[(True, "oracle")]]
                self.quota[(True, "oracle")] -= len(idx)
            plan["oracle"] = idx
        if self.c2st is not None:
            plan["c2st"] = self.c2st.plan(src.num_frames, stride, real, self.num_videos.get(real))
        return plan

    # ------------------------------------------------------------------ feeding
    def add(self, src: VideoSource, real: bool) -> None:
        """Stream one video through every metric (the source is closed afterwards)."""
        try:
            self._add(src, real)
        finally:
            src.close()

    def _add(self, src: VideoSource, real: bool) -> None:
        plan = self._plan(src, real)
        clip_of = {int(i): k for k, c in enumerate(plan["clips"]) for i in c}
        fid_set, oracle_set, c2st_set = (set(plan[k].tolist()) for k in ("fid", "oracle", "c2st"))
        needed = np.array(sorted(set(clip_of) | fid_set | oracle_set | c2st_set), dtype=np.int64)
        if len(needed) == 0:
            return
        half = self._real_index % 2 if real else 0   # real videos alternate halves (real level)
        self._real_index += int(real)
        self.counts[f"{'real' if real else 'fake'}_videos"] += 1
        pending: dict[int, list[np.ndarray]] = defaultdict(list)
        oracle_state: dict = {"prev": None, "luma": defaultdict(list)}
        for start in range(0, len(needed), READ_BLOCK):
            block = needed[start:start + READ_BLOCK]
            t0 = time.perf_counter()
            frames = src.read(block)
            self.timings["read"] += time.perf_counter() - t0
            for i, frame in zip(block.tolist(), frames):
                if i in clip_of:
                    k = clip_of[i]
                    pending[k].append(frame)
                    if len(pending[k]) == self.protocol.frames_per_clip:   # dated by its first frame
                        first = int(plan["clips"][k][0])
                        self._push_clip(np.stack(pending.pop(k)), self.window(first, src.fps), real, half)
                if i in fid_set:
                    self._push_frame(frame, self.window(i, src.fps), real, half)
            self._feed_block(src, block, frames, real, half, oracle_set, c2st_set, oracle_state)
        self._finish_daynight(src, real, oracle_state["luma"])
        if self.c2st is not None:
            self.c2st.end_video(src.name, real, src.fps, src.num_frames, lambda i: self.window(i, src.fps))

    def _feed_block(self, src: VideoSource, block: np.ndarray, frames: np.ndarray, real: bool, half: int,
                    oracle_set: set, c2st_set: set, oracle_state: dict) -> None:
        in_oracle = np.array([i in oracle_set for i in block.tolist()])
        if in_oracle.any():
            self._oracle_block(src, block[in_oracle], frames[in_oracle], real, half, oracle_state)
        in_c2st = np.array([i in c2st_set for i in block.tolist()])
        if self.c2st is not None and in_c2st.any():
            t0 = time.perf_counter()
            self.c2st.add(block[in_c2st], frames[in_c2st])
            self.timings["c2st"] += time.perf_counter() - t0

    def _push_clip(self, clip: np.ndarray, window: int, real: bool, half: int) -> None:
        if self._clips and self._clips[0][0].shape != clip.shape:
            self._flush_clips()
        self._clips.append((clip, window, real, half))
        if len(self._clips) >= self.batch_size:
            self._flush_clips()

    def _flush_clips(self) -> None:
        if not self._clips:
            return
        t0 = time.perf_counter()
        video = torch.from_numpy(np.stack([c[0] for c in self._clips]))      # [B, T, H, W, 3]
        feats = self.fvd.extractor(rearrange(video, "b t h w c -> b t c h w"))  # [B, 400]
        self._route(feats, self._clips, self.fvd.update_features, self.win_fvd, "clips", "fvd")
        self._clips = []
        self.timings["fvd"] += time.perf_counter() - t0

    def _push_frame(self, frame: np.ndarray, window: int, real: bool, half: int) -> None:
        if self._frames and self._frames[0][0].shape != frame.shape:
            self._flush_frames()
        self._frames.append((frame, window, real, half))
        if len(self._frames) >= 4 * self.batch_size:
            self._flush_frames()

    def _flush_frames(self) -> None:
        if not self._frames:
            return
        t0 = time.perf_counter()
        images = torch.from_numpy(np.stack([f[0] for f in self._frames]))  # [B, H, W, 3]
        feats = self.fid.inception(rearrange(images, "b h w c -> b c h w"))  # [B, 2048]
        self._route(feats, self._frames, self._fid_update, self.win_fid, "fid_frames", "fid")
        self._frames = []
        self.timings["fid"] += time.perf_counter() - t0

    def _fid_update(self, feats: torch.Tensor, real: bool) -> None:
        # the same moments torchmetrics' FrechetInceptionDistance.update accumulates
        f = feats.double()
        side = "real" if real else "fake"
        setattr(self.fid, f"{side}_features_sum", getattr(self.fid, f"{side}_features_sum") + f.sum(0))
        setattr(self.fid, f"{side}_features_cov_sum", getattr(self.fid, f"{side}_features_cov_sum") + f.T @ f)
        setattr(self.fid, f"{side}_features_num_samples",
                getattr(self.fid, f"{side}_features_num_samples") + f.shape[0])

    def _route(self, feats: torch.Tensor, items: list, update: Callable, windows: dict, name: str,
               metric: str) -> None:
        for real in (True, False):
            rows = [k for k, item in enumerate(items) if item[2] == real]
            if not rows:
                continue
            update(feats[rows], real)
            self.counts[f"{'real' if real else 'fake'}_{name}"] += len(rows)
            for k in rows:
                if real:
                    halves = self.halves.setdefault(metric, [FeatureStats.empty(feats.shape[1]) for _ in range(2)])
                    halves[items[k][3]].update(feats[k:k + 1])
                else:
                    windows.setdefault(items[k][1], FeatureStats.empty(feats.shape[1])).update(feats[k:k + 1])

    def _oracle_block(self, src: VideoSource, idx: np.ndarray, frames: np.ndarray, real: bool, half: int,
                      state: dict) -> None:
        t0 = time.perf_counter()
        grey = grey_small(frames, *TEMPORAL_SIZE)                       # [n, 64, 128]
        if state["prev"] is not None:
            grey = torch.cat([state["prev"], grey])
        diffs = frame_differences(grey)              # [n] (or [n - 1] for a video's first block)
        state["prev"] = grey[-1:]
        self.diffs[real].append(diffs)
        windows = np.array([self.window(int(i), src.fps) for i in idx])
        if real:
            self.real_diff_halves[half].append(diffs)
        else:
            diff_windows = windows[len(idx) - len(diffs):]  # a pair belongs to its later frame
            for w in np.unique(diff_windows):
                self.win_diffs[int(w)].append(diffs[diff_windows == w])
        self.counts[f"{'real' if real else 'fake'}_temporal_frames"] += len(idx)
        if self.oracle is not None:
            self._oracle_scores(src, idx, frames, real, windows, state)
        self.timings["oracle"] += time.perf_counter() - t0

    def _oracle_scores(self, src: VideoSource, idx: np.ndarray, frames: np.ndarray, real: bool,
                       windows: np.ndarray, state: dict) -> None:
        for w, lum in zip(windows, self.oracle.luma(frames)):
            state["luma"][int(w)].append(float(lum))
        if src.boxes is not None:
            prob = self.oracle.vehicle_prob(frames)                 # [n, h, w]
            boxes, classes = src.boxes(idx)                         # [n, N, 4], [n, N]
            for k in range(len(idx)):
                score = box_fidelity_frame(prob[k], vehicle_boxes(boxes[k], classes[k]))
                self.box[real].add(score)
                if not real:
                    self.win_box[int(windows[k])].add(score)

    def _finish_daynight(self, src: VideoSource, real: bool, luma: dict[int, list[float]]) -> None:
        """One prediction per (video, window): mean luma below the fitted threshold is night."""
        if self.oracle is None or src.daynight == DAYNIGHT_UNKNOWN:
            return
        for w, values in luma.items():
            correct = int(self.oracle.is_night(float(np.mean(values))) == (src.daynight == NIGHT))
            self.daynight[real][0] += correct
            self.daynight[real][1] += 1
            if not real:
                self.win_daynight[w][0] += correct
                self.win_daynight[w][1] += 1

    # ------------------------------------------------------------------ results
    def real_stats(self) -> dict[str, FeatureStats]:
        out = {}
        if self.fvd is not None:
            out["fvd"] = self.fvd.stats(True)
        if self.fid is not None:
            out["fid"] = fid_stats(self.fid, True)
        return out

    def result(self) -> dict:
        """JSON-ready results; per-window entries for drift curves."""
        if self.fvd is not None:
            self._flush_clips()
        if self.fid is not None:
            self._flush_frames()
        out: dict = {"metrics": list(self.metrics), "counts": dict(self.counts)}
        p, bounds = self.protocol, self._window_bounds
        if self.fvd is not None:
            out["fvd"] = frechet_result(float(self.fvd.compute()), self.fvd.stats(True), self.win_fvd, "clips",
                                        bounds=bounds, ddof=p.ddof, min_window=p.min_window_clips,
                                        cached="fvd" in self.cached, halves=self.halves.get("fvd"))
            out["fvd"]["clip_sampling"] = {"real": self.sampling[True], "fake": self.sampling[False]}
        if self.fid is not None:
            out["fid"] = frechet_result(compute_fid(self.fid, ddof=p.ddof), fid_stats(self.fid, True),
                                        self.win_fid, "frames", bounds=bounds, ddof=p.ddof,
                                        min_window=p.min_window_frames, cached="fid" in self.cached,
                                        halves=self.halves.get("fid"))
        if "temporal" in self.metrics:
            out["temporal"] = temporal_result(self.real_diff_halves, self.diffs[False], self.win_diffs, bounds)
        if self.oracle is not None:
            out["oracle"] = oracle_result(self.box, self.win_box, self.daynight, self.win_daynight,
                                          self.oracle.luma_threshold, self.oracle.calibration, bounds)
        if self.c2st is not None:
            t0 = time.perf_counter()
            out["c2st"] = self.c2st.result(bounds)
            self.timings["c2st"] += time.perf_counter() - t0
        out["timings_s"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out

    def _window_bounds(self, w: int) -> dict:
        ws = self.protocol.window_seconds
        return {"window": w, "start_s": None if ws is None else w * ws,
                "end_s": None if ws is None else (w + 1) * ws}


VideoLike = VideoSource | Callable[[], VideoSource]


def _iter_sources(items: Iterable[VideoLike]) -> Iterable[VideoSource]:
    for item in items:
        yield item if isinstance(item, VideoSource) else item()


def evaluate_videos(fake: Iterable[VideoLike], real: Iterable[VideoLike], *,
                    metrics: str | Sequence[str] = ("fvd", "fid", "oracle"),
                    protocol: EvalProtocol | None = None, i3d: nn.Module | None = None,
                    inception: nn.Module | None = None, oracle: Oracle | None = None,
                    real_stats: dict[str, FeatureStats] | None = None, batch_size: int = 8,
                    progress: Callable[[Iterable], Iterable] | None = None,
                    c2st: C2STConfig | None = None) -> dict:
    """Score ``fake`` videos against ``real`` ones; returns the JSON-ready result dict.

    Items are ``VideoSource`` objects or zero-argument openers (``sources.list_sources``).
    ``real_stats`` (cached FVD/FID statistics) skips those real features. ``progress`` wraps
    the iterables (e.g. ``tqdm``). For a validation callback: build sources with
    ``VideoSource.from_tensor`` and pass a small protocol (the report records it).
    """
    fake, real = list(fake), list(real)   # the counts resolve clip_sampling="auto"
    ev = Evaluator(metrics, protocol=protocol, i3d=i3d, inception=inception, oracle=oracle,
                   real_stats=real_stats, batch_size=batch_size,
                   num_videos={True: len(real), False: len(fake)}, c2st=c2st)
    wrap = progress or (lambda it: it)
    for src in wrap(_iter_sources(real)):
        ev.add(src, real=True)
    for src in wrap(_iter_sources(fake)):
        ev.add(src, real=False)
    result = ev.result()
    result["protocol"] = ev.protocol.to_dict()
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """Scalar view for loggers (TensorBoard, Lightning ``log_dict``): ``name -> float``."""
    out = {}
    for name in ("fvd", "fid"):
        if name in result and result[name]["value"] is not None:
            out[name] = result[name]["value"]
    if result.get("temporal", {}).get("w1") is not None:
        out["temporal/w1"] = result["temporal"]["w1"]
    if "oracle" in result:
        for key, value in result["oracle"]["box_fidelity"]["fake"].items():
            if key in ("recall", "precision", "mean_iou") and value is not None:
                out[f"oracle/box_{key}"] = value
        if result["oracle"]["daynight"]["fake"]["accuracy"] is not None:
            out["oracle/daynight_accuracy"] = result["oracle"]["daynight"]["fake"]["accuracy"]
    for variant in ("frame", "clip"):
        value = result.get("c2st", {}).get(variant, {}).get("accuracy")
        if value is not None:
            out[f"c2st/{variant}"] = value
    return {k: float(v) for k, v in out.items()}
