"""One streaming pass over real and fake videos computing every requested metric.

Each video is read once, in blocks of consecutive needed frames; the frames are dispatched to
FVD clips, FID frames and the oracle. Fake-side results are also kept per time window
(``protocol.window_seconds``) for drift curves over long rollouts. ``evaluate_videos`` is the
plain entry point for scripts and for a validation callback (training/ wraps it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn

from drivesim.data.labels import DAYNIGHT_UNKNOWN, NIGHT
from drivesim.metrics.extractors import I3DFeatures, InceptionFeatures
from drivesim.metrics.fid import build_fid, compute_fid, fid_stats, set_fid_real_stats
from drivesim.metrics.frechet import FeatureStats, frechet_distance_stats
from drivesim.metrics.fvd import FrechetVideoDistance
from drivesim.metrics.oracle.model import Oracle
from drivesim.metrics.oracle.scores import (
    BoxFidelity,
    box_fidelity_frame,
    frame_differences,
    grey_small,
    vehicle_boxes,
    wasserstein_1d,
)
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sources import VideoSource

METRICS = ("fvd", "fid", "oracle", "temporal")
TEMPORAL_SIZE = (64, 128)  # grey frames for temporal statistics: resolution-independent
READ_BLOCK = 64


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"metrics: expected a subset of {METRICS}, got {names!r}")
    if "oracle" in names and "temporal" not in names:
        names.append("temporal")  # the oracle group includes temporal consistency
    return tuple(dict.fromkeys(names))


class Evaluator:
    """Feed videos with ``add(source, real)``, then ``result()``; ``real_stats`` after that."""

    def __init__(self, metrics: str | Sequence[str] = ("fvd", "fid", "oracle"), *,
                 protocol: EvalProtocol | None = None, i3d: nn.Module | None = None,
                 inception: nn.Module | None = None, oracle: Oracle | None = None,
                 real_stats: dict[str, FeatureStats] | None = None, batch_size: int = 8) -> None:
        self.metrics, self.protocol = parse_metrics(metrics), protocol or EvalProtocol()
        self.batch_size, real_stats = batch_size, real_stats or {}
        self.fvd = self.fid = None
        if "fvd" in self.metrics:
            if i3d is None:
                raise ValueError("metric fvd needs an I3D detector (extractors.load_torchscript('i3d', path))")
            ext = i3d if isinstance(i3d, I3DFeatures) else I3DFeatures(i3d, self.protocol.resize)
            probe = torch.zeros(1, self.protocol.frames_per_clip, 3, 64, 64, dtype=torch.uint8)
            self.fvd = FrechetVideoDistance(ext, num_features=ext(probe).shape[1], reset_real=False)
            if "fvd" in real_stats:
                self.fvd.set_real_stats(real_stats["fvd"])
        if "fid" in self.metrics:
            if inception is None:
                raise ValueError("metric fid needs an Inception detector (extractors.load_torchscript('inception', path))")
            ext = inception if isinstance(inception, InceptionFeatures) else InceptionFeatures(inception, self.protocol.resize)
            self.fid = build_fid(ext, reset_real=False)
            if "fid" in real_stats:
                set_fid_real_stats(self.fid, real_stats["fid"])
        if "oracle" in self.metrics and oracle is None:
            raise ValueError("metric oracle needs an Oracle (oracle.load_or_train_oracle())")
        self.oracle = oracle
        self.cached = set(real_stats)
        self.quota = {(side, m): n for side in (True, False) for m, n in (
            ("fvd", self.protocol.num_clips), ("fid", self.protocol.fid_num_frames))}
        self.quota[(True, "oracle")] = self.protocol.oracle_real_frames
        for m in self.cached:
            self.quota[(True, m)] = 0
        self._clips: list[tuple[np.ndarray, int, bool]] = []   # (uint8 [T, H, W, 3], window, real)
        self._frames: list[tuple[np.ndarray, int, bool]] = []  # (uint8 [H, W, 3], window, real)
        self.win_fvd: dict[int, FeatureStats] = {}
        self.win_fid: dict[int, FeatureStats] = {}
        self.box = {True: BoxFidelity(), False: BoxFidelity()}
        self.win_box: dict[int, BoxFidelity] = defaultdict(BoxFidelity)
        self.diffs: dict[bool, list[np.ndarray]] = {True: [], False: []}
        self.win_diffs: dict[int, list[np.ndarray]] = defaultdict(list)
        self.daynight = {True: [0, 0], False: [0, 0]}        # [correct, scored]
        self.win_daynight: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.counts: dict[str, int] = defaultdict(int)
        self.timings: dict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------ planning
    def window(self, frame: int, fps: float) -> int:
        w = self.protocol.window_seconds
        return 0 if w is None else int(frame / fps // w)

    def _plan(self, src: VideoSource, real: bool) -> dict[str, np.ndarray | list[np.ndarray]]:
        p, stride = self.protocol, self.protocol.stride_for(src.fps)
        plan: dict = {"clips": [], "fid": np.zeros(0, np.int64), "oracle": np.zeros(0, np.int64)}
        if self.fvd is not None and self.quota[(real, "fvd")] > 0:
            span = p.frames_per_clip * stride
            n = min(src.num_frames // span, self.quota[(real, "fvd")], p.max_clips_per_video or 1 << 30)
            plan["clips"] = [k * span + np.arange(p.frames_per_clip) * stride for k in range(n)]
            self.quota[(real, "fvd")] -= n
        if self.fid is not None and self.quota[(real, "fid")] > 0:
            plan["fid"] = np.arange(0, src.num_frames, p.fid_frame_stride)[: self.quota[(real, "fid")]]
            self.quota[(real, "fid")] -= len(plan["fid"])
        if "temporal" in self.metrics:
            idx = np.arange(0, src.num_frames, stride)
            if real:
                idx = idx[: self.quota[(True, "oracle")]]
                self.quota[(True, "oracle")] -= len(idx)
            plan["oracle"] = idx
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
        fid_set, oracle_set = set(plan["fid"].tolist()), set(plan["oracle"].tolist())
        needed = np.array(sorted(set(clip_of) | fid_set | oracle_set), dtype=np.int64)
        if len(needed) == 0:
            return
        self.counts[f"{'real' if real else 'fake'}_videos"] += 1
        pending: list[np.ndarray] = []
        oracle_state: dict = {"prev": None, "luma": defaultdict(list)}
        for start in range(0, len(needed), READ_BLOCK):
            block = needed[start:start + READ_BLOCK]
            t0 = time.perf_counter()
            frames = src.read(block)
            self.timings["read"] += time.perf_counter() - t0
            for i, frame in zip(block.tolist(), frames):
                if i in clip_of:
                    pending.append(frame)
                    if len(pending) == self.protocol.frames_per_clip:
                        self._push_clip(np.stack(pending), self.window(i - len(pending) + 1, src.fps), real)
                        pending = []
                if i in fid_set:
                    self._push_frame(frame, self.window(i, src.fps), real)
            in_oracle = np.array([i in oracle_set for i in block.tolist()])
            if in_oracle.any():
                self._oracle_block(src, block[in_oracle], frames[in_oracle], real, oracle_state)
        self._finish_daynight(src, real, oracle_state["luma"])

    def _push_clip(self, clip: np.ndarray, window: int, real: bool) -> None:
        if self._clips and self._clips[0][0].shape != clip.shape:
            self._flush_clips()
        self._clips.append((clip, window, real))
        if len(self._clips) >= self.batch_size:
            self._flush_clips()

    def _flush_clips(self) -> None:
        if not self._clips:
            return
        t0 = time.perf_counter()
        video = torch.from_numpy(np.stack([c for c, _, _ in self._clips]))   # [B, T, H, W, 3]
        feats = self.fvd.extractor(rearrange(video, "b t h w c -> b t c h w"))  # [B, 400]
        self._route(feats, self._clips, self.fvd.update_features, self.win_fvd, "clips")
        self._clips = []
        self.timings["fvd"] += time.perf_counter() - t0

    def _push_frame(self, frame: np.ndarray, window: int, real: bool) -> None:
        if self._frames and self._frames[0][0].shape != frame.shape:
            self._flush_frames()
        self._frames.append((frame, window, real))
        if len(self._frames) >= 4 * self.batch_size:
            self._flush_frames()

    def _flush_frames(self) -> None:
        if not self._frames:
            return
        t0 = time.perf_counter()
        images = torch.from_numpy(np.stack([f for f, _, _ in self._frames]))  # [B, H, W, 3]
        feats = self.fid.inception(rearrange(images, "b h w c -> b c h w"))    # [B, 2048]
        self._route(feats, self._frames, self._fid_update, self.win_fid, "fid_frames")
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

    def _route(self, feats: torch.Tensor, items: list, update: Callable, windows: dict, name: str) -> None:
        for real in (True, False):
            rows = [k for k, (_, _, r) in enumerate(items) if r == real]
            if not rows:
                continue
            update(feats[rows], real)
            self.counts[f"{'real' if real else 'fake'}_{name}"] += len(rows)
            if not real:
                for k in rows:
                    w = items[k][1]
                    windows.setdefault(w, FeatureStats.empty(feats.shape[1])).update(feats[k:k + 1])

    def _oracle_block(self, src: VideoSource, idx: np.ndarray, frames: np.ndarray, real: bool,
                      state: dict) -> None:
        t0 = time.perf_counter()
        grey = grey_small(frames, *TEMPORAL_SIZE)                       # [n, 64, 128]
        if state["prev"] is not None:
            grey = torch.cat([state["prev"], grey])
        diffs = frame_differences(grey)              # [n] (or [n - 1] for a video's first block)
        state["prev"] = grey[-1:]
        self.diffs[real].append(diffs)
        windows = np.array([self.window(int(i), src.fps) for i in idx])
        if not real:
            diff_windows = windows[len(idx) - len(diffs):]  # a pair belongs to its later frame
            for w in np.unique(diff_windows):
                self.win_diffs[int(w)].append(diffs[diff_windows == w])
        self.counts[f"{'real' if real else 'fake'}_temporal_frames"] += len(idx)
        if self.oracle is not None:
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
        self.timings["oracle"] += time.perf_counter() - t0

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
        if self.fvd is not None:
            out["fvd"] = self._frechet_result("fvd", float(self.fvd.compute()), self.fvd.stats(True),
                                              self.win_fvd, "clips")
        if self.fid is not None:
            out["fid"] = self._frechet_result("fid", compute_fid(self.fid), fid_stats(self.fid, True),
                                              self.win_fid, "frames")
        if "temporal" in self.metrics:
            out["temporal"] = self._temporal_result()
        if self.oracle is not None:
            out["oracle"] = self._oracle_result()
        out["timings_s"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out

    def _window_bounds(self, w: int) -> dict:
        ws = self.protocol.window_seconds
        return {"window": w, "start_s": None if ws is None else w * ws,
                "end_s": None if ws is None else (w + 1) * ws}

    def _frechet_result(self, metric: str, value: float, real: FeatureStats, windows: dict,
                        unit: str) -> dict:
        rows = []
        for w in sorted(windows):
            st = windows[w]
            score = frechet_distance_stats(real, st) if st.count >= 2 else None
            rows.append({**self._window_bounds(w), "value": score, unit: st.count})
        fake = sum(st.count for st in windows.values())
        return {"value": value, f"real_{unit}": real.count, f"fake_{unit}": fake,
                "real_from_cache": metric in self.cached, "windows": rows}

    def _temporal_result(self) -> dict:
        real, fake = np.concatenate(self.diffs[True] or [np.zeros(0)]), np.concatenate(self.diffs[False] or [np.zeros(0)])
        out = {"real_pairs": len(real), "fake_pairs": len(fake),
               "real_mean_diff": float(real.mean()) if len(real) else None,
               "fake_mean_diff": float(fake.mean()) if len(fake) else None,
               "w1": wasserstein_1d(real, fake) if len(real) and len(fake) else None, "windows": []}
        for w in sorted(self.win_diffs):
            d = np.concatenate(self.win_diffs[w])
            out["windows"].append({**self._window_bounds(w), "pairs": len(d), "mean_diff": float(d.mean()),
                                   "w1": wasserstein_1d(real, d) if len(real) else None})
        return out

    def _oracle_result(self) -> dict:
        def acc(c: list[int]) -> dict:
            return {"accuracy": c[0] / c[1] if c[1] else None, "scored": c[1]}

        windows = sorted(set(self.win_box) | set(self.win_daynight))
        return {"box_fidelity": {"fake": self.box[False].summary(), "real": self.box[True].summary()},
                "daynight": {"fake": acc(self.daynight[False]), "real": acc(self.daynight[True]),
                             "luma_threshold": self.oracle.luma_threshold},
                "calibration": self.oracle.calibration,
                "windows": [{**self._window_bounds(w), "box_fidelity": self.win_box[w].summary(),
                             "daynight": acc(self.win_daynight[w])} for w in windows]}


VideoLike = VideoSource | Callable[[], VideoSource]


def _iter_sources(items: Iterable[VideoLike]) -> Iterable[VideoSource]:
    for item in items:
        yield item if isinstance(item, VideoSource) else item()


def evaluate_videos(fake: Iterable[VideoLike], real: Iterable[VideoLike], *,
                    metrics: str | Sequence[str] = ("fvd", "fid", "oracle"),
                    protocol: EvalProtocol | None = None, i3d: nn.Module | None = None,
                    inception: nn.Module | None = None, oracle: Oracle | None = None,
                    real_stats: dict[str, FeatureStats] | None = None, batch_size: int = 8,
                    progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Score ``fake`` videos against ``real`` ones; returns the JSON-ready result dict.

    Items are ``VideoSource`` objects or zero-argument openers (``sources.list_sources``).
    ``real_stats`` (cached FVD/FID statistics) skips those real features. ``progress`` wraps
    the iterables (e.g. ``tqdm``). For a validation callback: build sources with
    ``VideoSource.from_tensor`` and pass a small protocol (the report records it).
    """
    ev = Evaluator(metrics, protocol=protocol, i3d=i3d, inception=inception, oracle=oracle,
                   real_stats=real_stats, batch_size=batch_size)
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
        if name in result:
            out[name] = result[name]["value"]
    if result.get("temporal", {}).get("w1") is not None:
        out["temporal/w1"] = result["temporal"]["w1"]
    if "oracle" in result:
        for key, value in result["oracle"]["box_fidelity"]["fake"].items():
            if key in ("recall", "precision", "mean_iou") and value is not None:
                out[f"oracle/box_{key}"] = value
        if result["oracle"]["daynight"]["fake"]["accuracy"] is not None:
            out["oracle/daynight_accuracy"] = result["oracle"]["daynight"]["fake"]["accuracy"]
    return {k: float(v) for k, v in out.items()}
