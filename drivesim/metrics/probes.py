"""Quality probes of the image LDM and the video LDM; docs/probes.md.

The probes measure, on trained model files:

- image LDM: box fidelity (oracle vehicle presence inside vs. outside the conditioned boxes)
  of samples WITH boxes vs. the same noise with the boxes dropped, both scored against the
  same conditioned boxes, with real renders of the scenarios as the ceiling; and whether
  night samples are darker than their paired day samples (same noise, same boxes);
- video LDM: temporal consistency (W1 of frame-difference statistics against real clips,
  and the optical-flow warp residual: change not explained by motion) of prediction-mode
  samples vs. the same network with alpha forced to 1, calibrated by real-vs-real and by
  the same real windows with their frames shuffled; context continuation (first predicted frame vs. last context frame); oracle
  box recall per frame index.

Sampling is injected (``ImageSampleFn`` / the scripts' samplers) so this module holds only
pairing, scoring and aggregation; the benchmark scripts wire in the real models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from drivesim.data.boxes import draw_boxes, pad_boxes
from drivesim.data.clip_format import mean_visible_vehicles
from drivesim.data.labels import PAD_CLASS, crowd_bucket
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE
from drivesim.metrics.evaluate import evaluate_videos
from drivesim.metrics.oracle.scores import (
    BoxFidelity,
    box_fidelity_frame,
    grey_small,
    vehicle_boxes,
    warp_residuals,
)
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sources import VideoSource

IMAGE_VARIANTS = ("boxes", "no_boxes")  # sampled with the conditioned boxes / with them dropped
VIDEO_VARIANTS = ("normal", "alpha1")   # the video UNet as trained / with alpha forced to 1


class OracleLike(Protocol):
    """What the probes use of ``drivesim.metrics.oracle.Oracle`` (tests inject a stub)."""

    luma_threshold: float
    calibration: dict

    def vehicle_prob(self, frames: np.ndarray) -> np.ndarray: ...  # uint8 [n,H,W,3] -> [n,h,w]

    def luma(self, frames: np.ndarray) -> np.ndarray: ...          # uint8 [n,H,W,3] -> [n]

    def is_night(self, mean_luma: float) -> bool: ...


# ---------------------------------------------------------------------------- shared helpers
def frames_uint8(video: torch.Tensor) -> np.ndarray:
    """float ``[B, T, 3, H, W]`` in [-1, 1] -> uint8 ``[B, T, H, W, 3]``."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2).cpu().numpy()


def score_frames(oracle: OracleLike, frames: np.ndarray, boxes: Sequence[np.ndarray]) -> BoxFidelity:
    """Summed oracle box fidelity of uint8 ``frames [n, H, W, 3]`` against vehicle ``boxes``
    (one ``[k, 4]`` normalised array per frame)."""
    if len(frames) != len(boxes):
        raise ValueError(f"score_frames: {len(frames)} frames but {len(boxes)} box sets")
    total = BoxFidelity()
    if len(frames) == 0:
        return total
    for k, prob in enumerate(oracle.vehicle_prob(frames)):
        total.add(box_fidelity_frame(prob, np.asarray(boxes[k], dtype=np.float64).reshape(-1, 4)))
    return total


def nonfinite_fields(obj: Any, path: str = "") -> list[str]:
    """Paths of the NaN / inf numbers in a JSON-like object (``None`` is allowed: 'no data')."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_fields(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in nonfinite_fields(v, f"{path}[{i}]")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    return []


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """uint8 grid from rows of uint8 ``[H, W, 3]`` tiles (all one size), white gaps of ``pad``."""
    if not rows or not all(rows):
        raise ValueError("image_grid: needs at least one tile per row")
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if tile.shape[:2] != (h, w):
                raise ValueError(f"image_grid: tile ({i}, {j}) is {tile.shape[:2]}, expected {(h, w)}")
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = tile
    return grid


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` RGB -> PNG file bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else None


# ---------------------------------------------------------------------------- image probe
@dataclass
class ImageScenario:
    """One held-out world scenario: its conditioned boxes (as given to the model, padding
    removed) and its real day / night renders at the model resolution."""

    seed: int
    boxes: np.ndarray       # float32 [k, 4] normalised x1, y1, x2, y2
    classes: np.ndarray     # int64 [k]
    track_ids: np.ndarray   # int64 [k]
    crowd: int
    real_day: np.ndarray    # uint8 [H, W, 3]
    real_night: np.ndarray  # uint8 [H, W, 3]

    @property
    def vehicles(self) -> np.ndarray:
        """Vehicle boxes ``[v, 4]`` (what the oracle scores)."""
        return vehicle_boxes(self.boxes, self.classes)


def world_scenarios(base_seed: int, count: int, height: int, width: int, fps: float = 10.0,
                    max_boxes: int = 16, min_vehicles: int = 0, max_vehicles: int = 12,
                    traffic_range: float = DEFAULT_TRAFFIC_RANGE) -> list[ImageScenario]:
    """``count`` scenarios drawn like the training data (``SyntheticDataset(seed=base_seed)
    .scenario(i)``: world seed, vehicle count, weather, warm-up), rendered day and night.

    The drive depends only on the world seed, so day and night share their boxes; boxes come
    from the render at ``height x width`` (what a training sample at that size holds),
    truncated to the ``max_boxes`` largest like the model's input.
    """
    from drivesim.data.datasets import SyntheticDataset, world_config
    from drivesim.data.world import DrivingWorld

    source = SyntheticDataset(frames=1, fps=fps, height=height, width=width, seed=base_seed,
                              min_vehicles=min_vehicles, max_vehicles=max_vehicles, traffic_range=traffic_range)
    out = []
    for i in range(count):
        sc = source.scenario(i)
        frames = {}
        for night in (False, True):
            world = DrivingWorld(world_config(sc, height=height, width=width, fps=fps, night=night))
            world.skip(sc["warmup"])
            frames[night] = world.step()
        day = frames[False]
        padded = pad_boxes(day.boxes, day.classes, day.track_ids, max_boxes, warn=False)
        keep = padded.classes != PAD_CLASS
        crowd = crowd_bucket(mean_visible_vehicles([day.classes], [day.visibility]))
        out.append(ImageScenario(sc["seed"], padded.boxes[keep], padded.classes[keep], padded.ids[keep],
                                 crowd, day.rgb, frames[True].rgb))
    return out


# sample_fn(scenarios, night, with_boxes, seed) -> uint8 [B, H, W, 3]; the same seed must give
# the same initial noise whatever night / with_boxes are (that is what pairs the samples)
ImageSampleFn = Callable[[Sequence[ImageScenario], bool, bool, int], np.ndarray]


def sample_paired_images(sample_fn: ImageSampleFn, scenarios: Sequence[ImageScenario], batch_size: int,
                         seed: int) -> dict[str, dict[str, np.ndarray]]:
    """``{variant: {"day"|"night": uint8 [n, H, W, 3]}}`` for ``IMAGE_VARIANTS``.

    Batch k (scenarios ``k*batch_size ...``) is sampled with noise seed ``seed + k`` in all
    four (variant, day/night) combinations, so sample i of every combination starts from the
    same noise: day/night and boxes/no-boxes differ only by their conditioning.
    """
    if batch_size < 1 or not scenarios:
        raise ValueError(f"sample_paired_images: need scenarios and batch_size >= 1, got "
                         f"{len(scenarios)} / {batch_size}")
    parts: dict[str, dict[str, list[np.ndarray]]] = {v: {"day": [], "night": []} for v in IMAGE_VARIANTS}
    for k, start in enumerate(range(0, len(scenarios), batch_size)):
        batch = scenarios[start:start + batch_size]
        for variant in IMAGE_VARIANTS:
            for name, night in (("day", False), ("night", True)):
                frames = np.asarray(sample_fn(batch, night, variant == "boxes", seed + k))
                if frames.dtype != np.uint8 or frames.ndim != 4 or len(frames) != len(batch):
                    raise ValueError(f"sample_fn must return uint8 [{len(batch)}, H, W, 3], got "
                                     f"{frames.dtype} {frames.shape}")
                parts[variant][name].append(frames)
    return {v: {d: np.concatenate(f) for d, f in by.items()} for v, by in parts.items()}


def night_darker_fraction(luma_day: np.ndarray, luma_night: np.ndarray) -> float:
    """Fraction of pairs with mean luma(night) < mean luma(day)."""
    luma_day, luma_night = np.asarray(luma_day), np.asarray(luma_night)
    if luma_day.shape != luma_night.shape or luma_day.size == 0:
        raise ValueError(f"night_darker_fraction: paired non-empty arrays needed, got "
                         f"{luma_day.shape} / {luma_night.shape}")
    return float((luma_night < luma_day).mean())


def _daynight_block(oracle: OracleLike, day: np.ndarray, night: np.ndarray) -> dict:
    luma_day, luma_night = oracle.luma(day), oracle.luma(night)
    correct = [not oracle.is_night(float(v)) for v in luma_day] + [oracle.is_night(float(v)) for v in luma_night]
    return {"night_darker_fraction": night_darker_fraction(luma_day, luma_night),
            "daynight_accuracy": float(np.mean(correct)),
            "mean_luma_day": float(np.mean(luma_day)), "mean_luma_night": float(np.mean(luma_night))}


def image_probe_report(oracle: OracleLike, scenarios: Sequence[ImageScenario],
                       samples: dict[str, dict[str, np.ndarray]]) -> dict:
    """Scores of ``samples`` (``sample_paired_images``) and of the real renders (the ceiling).

    Every variant is scored against the SAME conditioned vehicle boxes, over its day and
    night frames together.
    """
    boxes = [s.vehicles for s in scenarios]
    real = {"day": np.stack([s.real_day for s in scenarios]), "night": np.stack([s.real_night for s in scenarios])}
    out: dict = {"pairs": len(scenarios), "box_fidelity": {}, "daynight": {}}
    for name, frames in [*((v, samples[v]) for v in IMAGE_VARIANTS), ("real", real)]:
        total = score_frames(oracle, frames["day"], boxes)
        total.add(score_frames(oracle, frames["night"], boxes))
        out["box_fidelity"][name] = total.summary()
        out["daynight"][name] = _daynight_block(oracle, frames["day"], frames["night"])
    fid = out["box_fidelity"]
    out["recall_gain"] = (fid["boxes"]["recall"] - fid["no_boxes"]["recall"]
                          if fid["boxes"]["recall"] is not None and fid["no_boxes"]["recall"] is not None else None)
    out["oracle"] = {"luma_threshold": float(oracle.luma_threshold), "calibration": oracle.calibration}
    return out


def image_probe_rows(scenarios: Sequence[ImageScenario], samples: dict[str, dict[str, np.ndarray]],
                     limit: int = 8) -> list[list[np.ndarray]]:
    """Grid rows (one per scenario): real day, boxes day, boxes night, no-boxes day, no-boxes
    night, each with the conditioned boxes drawn."""
    rows = []
    for i, s in enumerate(scenarios[:limit]):
        tiles = [s.real_day] + [samples[v][d][i] for v in IMAGE_VARIANTS for d in ("day", "night")]
        rows.append([draw_boxes(t, s.boxes, s.classes, s.track_ids) for t in tiles])
    return rows


def image_probe_table(report: dict) -> str:
    """Short text table of an ``image_probe_report``."""
    def f(v: float | None) -> str:
        return "  -  " if v is None else f"{v:5.3f}"

    lines = [f"image LDM probe: {report['pairs']} scenario pairs (day + night each)",
             f"{'variant':10s} {'recall':>6s} {'prec':>6s} {'IoU':>6s} {'night<day':>9s} {'d/n acc':>7s}"]
    for name in (*IMAGE_VARIANTS, "real"):
        b, d = report["box_fidelity"][name], report["daynight"][name]
        lines.append(f"{name:10s} {f(b['recall']):>6s} {f(b['precision']):>6s} {f(b['mean_iou']):>6s} "
                     f"{f(d['night_darker_fraction']):>9s} {f(d['daynight_accuracy']):>7s}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- video probe
class ImageOnlyNetwork(torch.nn.Module):
    """The video UNet with alpha forced to 1 (``UNet.image_only``): every temporal layer and
    the context encoder are skipped, so frames are denoised independently by the spatial
    layers. A copy of the UNet is flagged; the original is left as it is. The UNet ignores the
    context frames in this mode; the sampler still re-imposes them on the first S frames."""

    def __init__(self, unet: torch.nn.Module) -> None:
        if not getattr(unet, "temporal", False):
            raise ValueError("ImageOnlyNetwork: the UNet has no temporal layers (alpha is already 1)")
        super().__init__()
        self.unet = copy.deepcopy(unet).eval()
        self.unet.image_only = True
        self.in_channels = self.unet.in_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.unet(x, t, cond)


@dataclass
class RealWindows:
    """Real clip windows: uint8 ``frames [B, T, H, W, 3]``, ``boxes [B, T, N, 4]``,
    ``classes [B, T, N]`` (0 = padding), at ``fps``."""

    frames: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    fps: float


def frame_gaps(frames: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference (RGB in [0, 1]) of consecutive frames:
    uint8 ``[B, T, H, W, 3]`` -> ``[B, T - 1]``."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    return np.abs(x[:, 1:] - x[:, :-1]).mean(axis=(2, 3, 4))


def per_frame_box_fidelity(oracle: OracleLike, frames: np.ndarray, boxes: np.ndarray,
                           classes: np.ndarray) -> list[BoxFidelity]:
    """Oracle box fidelity per frame index t (summed over the batch), ``[T]`` entries, of
    uint8 ``frames [B, T, H, W, 3]`` against ``boxes [B, T, N, 4]`` / ``classes [B, T, N]``."""
    b, t = frames.shape[:2]
    out = []
    for i in range(t):
        per = [vehicle_boxes(boxes[j, i], classes[j, i]) for j in range(b)]
        out.append(score_frames(oracle, frames[:, i], per))
    return out


def temporal_scores(fake: Sequence[np.ndarray], real: Sequence[np.ndarray], fps: float) -> dict:
    """``evaluate_videos(..., metrics="temporal")`` of uint8 ``[T, H, W, 3]`` videos (one
    window, every frame): W1 between the fake and real frame-difference distributions."""
    protocol = EvalProtocol(window_seconds=None, oracle_real_frames=1 << 30, real_set="probe")
    res = evaluate_videos([VideoSource.from_array(f"fake{i}", v, fps) for i, v in enumerate(fake)],
                          [VideoSource.from_array(f"real{i}", v, fps) for i, v in enumerate(real)],
                          metrics="temporal", protocol=protocol)["temporal"]
    return {k: res[k] for k in ("w1", "fake_mean_diff", "real_mean_diff", "fake_pairs", "real_pairs")}


WARP_SIZE = (64, 128)  # grey frames for the warp residual (as the temporal statistics)


def warp_scores(videos: Sequence[np.ndarray]) -> dict:
    """Warp residual of uint8 ``[T, H, W, 3]`` videos at ``WARP_SIZE`` grey, pooled over
    every consecutive pair: ``residual`` (mean flow-compensated change, lower = more
    coherent), ``raw`` (mean plain change) and ``explained`` = 1 - residual / raw (the share
    of the change that motion accounts for; None for static videos)."""
    res, raw = [], []
    for v in videos:
        r, d = warp_residuals(grey_small(np.asarray(v), *WARP_SIZE))
        res.append(r)
        raw.append(d)
    r, d = np.concatenate(res) if res else np.zeros(0), np.concatenate(raw) if raw else np.zeros(0)
    total = float(d.sum())
    return {"residual": _mean(r), "raw": _mean(d), "pairs": int(len(r)),
            "explained": 1.0 - float(r.sum()) / total if total > 0 else None}


def shuffled_frames(videos: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Each video with its frames in a random order (a derangement where T > 1): real
    content, no temporal coherence; the incoherent end of the warp-residual calibration."""
    rng = np.random.default_rng(seed)
    out = []
    for v in videos:
        t = len(v)
        order = np.arange(t)
        while t > 1 and (order == np.arange(t)).any():
            order = rng.permutation(t)
        out.append(np.asarray(v)[order])
    return out


def split_halves(items: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(even-indexed, odd-indexed) items: two disjoint halves for real-vs-real calibration."""
    if len(items) < 2:
        raise ValueError(f"split_halves: need at least 2 items, got {len(items)}")
    return list(items[0::2]), list(items[1::2])


def video_probe_report(oracle: OracleLike, real: RealWindows, samples: dict[str, np.ndarray],
                       num_context: int, reference: Sequence[np.ndarray],
                       reference_decoded: Sequence[np.ndarray] | None = None) -> dict:
    """Scores of prediction-mode ``samples`` (``{variant: uint8 [B, T, H, W, 3]}``, frames
    ``< num_context`` are the decoded context) conditioned on ``real``'s context and boxes.

    ``reference``: real windows ``[T, H, W, 3]`` for the temporal metric, split in two
    halves A / B: samples are compared with A, and B with A is the real-vs-real calibration.
    ``reference_decoded`` (optional): the same windows passed through the autoencoder
    (encode, decode). A latent model can be no sharper than its decoder, and blur lowers the
    frame differences of thin structures that move further than their width between frames
    (lane dashes at 2 fps) even when the motion is coherent; the decoded
    B half against A (``"real_decoded"``) is the level a latent model can reach.
    """
    b, t = real.frames.shape[:2]
    if not 1 <= num_context < t:
        raise ValueError(f"video_probe_report: num_context must be in [1, T={t}), got {num_context}")
    for name, frames in samples.items():
        if frames.shape != real.frames.shape:
            raise ValueError(f"samples[{name!r}]: shape {frames.shape} != real {real.frames.shape}")
    half_a, half_b = split_halves(reference)
    s = num_context
    out: dict = {"clips": b, "frames": t, "num_context": s, "fps": real.fps,
                 "reference_windows": len(reference), "temporal": {}, "warp": {}, "continuation": {},
                 "box_recall_per_frame": {}, "box_fidelity_predicted": {}}
    out["temporal"]["real_vs_real"] = temporal_scores(half_b, half_a, real.fps)
    out["warp"]["real"] = warp_scores(reference)
    out["warp"]["real_shuffled"] = warp_scores(shuffled_frames(reference))
    if reference_decoded is not None:
        if len(reference_decoded) != len(reference):
            raise ValueError(f"video_probe_report: {len(reference_decoded)} decoded reference windows for "
                             f"{len(reference)} real ones")
        _, decoded_b = split_halves(reference_decoded)
        out["temporal"]["real_decoded"] = temporal_scores(decoded_b, half_a, real.fps)
        out["warp"]["real_decoded"] = warp_scores(reference_decoded)
    real_gaps = frame_gaps(real.frames)
    out["continuation"]["real_next_frame"] = _mean(real_gaps[:, s - 1])
    out["continuation"]["real_consecutive"] = _mean(real_gaps)
    for name, frames in [*samples.items(), ("real", real.frames)]:
        if name != "real":
            out["temporal"][name] = temporal_scores(list(frames), half_a, real.fps)
            out["warp"][name] = warp_scores(list(frames))
            out["continuation"][name] = _mean(frame_gaps(frames)[:, s - 1])
        scores = per_frame_box_fidelity(oracle, frames[:, s:], real.boxes[:, s:], real.classes[:, s:])
        out["box_recall_per_frame"][name] = [sc.summary()["recall"] for sc in scores]
        total = BoxFidelity()
        for sc in scores:
            total.add(sc)
        out["box_fidelity_predicted"][name] = total.summary()
    return out


def video_probe_rows(real: RealWindows, samples: dict[str, np.ndarray], limit: int = 4) -> list[list[np.ndarray]]:
    """Grid rows: per clip (up to ``limit``) the real window, then each variant; one column
    per frame, the clip's boxes drawn on every frame."""
    rows = []
    for j in range(min(limit, real.frames.shape[0])):
        for frames in [real.frames, *samples.values()]:
            rows.append([draw_boxes(frames[j, i], real.boxes[j, i], real.classes[j, i])
                         for i in range(frames.shape[1])])
    return rows


def video_probe_table(report: dict) -> str:
    """Short text table of a ``video_probe_report``."""
    def f(v: float | None) -> str:
        return "  -  " if v is None else f"{v:6.4f}"

    lines = [f"video LDM probe: {report['clips']} clips x {report['frames']} frames @ {report['fps']:g} fps, "
             f"S = {report['num_context']} context frames",
             f"{'variant':13s} {'temporal W1':>11s} {'mean diff':>9s} {'warp res':>9s} {'explained':>9s} "
             f"{'ctx->pred':>9s} {'recall/frame'}"]
    warp = report.get("warp", {})
    names = [k for k in report["temporal"] if k not in ("real_vs_real", "real_decoded")]
    for name in names:
        tmp, wp = report["temporal"][name], warp.get(name, {})
        recall = " ".join(f(r)[:5] for r in report["box_recall_per_frame"][name])
        lines.append(f"{name:13s} {f(tmp['w1']):>11s} {f(tmp['fake_mean_diff']):>9s} "
                     f"{f(wp.get('residual')):>9s} {f(wp.get('explained')):>9s} "
                     f"{f(report['continuation'][name]):>9s} {recall}")
    cal, cont, wp = report["temporal"]["real_vs_real"], report["continuation"], warp.get("real", {})
    recall = " ".join(f(r)[:5] for r in report["box_recall_per_frame"]["real"])
    lines.append(f"{'real vs real':13s} {f(cal['w1']):>11s} {f(cal['fake_mean_diff']):>9s} "
                 f"{f(wp.get('residual')):>9s} {f(wp.get('explained')):>9s} "
                 f"{f(cont['real_next_frame']):>9s} {recall}")
    if "real_decoded" in report["temporal"]:
        dec, wp = report["temporal"]["real_decoded"], warp.get("real_decoded", {})
        lines.append(f"{'real via AE':13s} {f(dec['w1']):>11s} {f(dec['fake_mean_diff']):>9s} "
                     f"{f(wp.get('residual')):>9s} {f(wp.get('explained')):>9s}")
    if "real_shuffled" in warp:
        sh = warp["real_shuffled"]
        lines.append(f"{'real shuffled':13s} {'':>11s} {f(sh['raw']):>9s} {f(sh['residual']):>9s} "
                     f"{f(sh['explained']):>9s}")
    return "\n".join(lines)
