"""Classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017): a weight-free realism metric.

A small conv net learns to tell real from generated samples on one part of the data; its
accuracy on the part it never saw estimates how distinguishable the two sets are. 0.5 means
indistinguishable, 1.0 means every held-out sample is told apart. Two variants:

- ``frame``: single frames at ``C2STConfig.frame_size`` (appearance: blur, noise, colour);
- ``clip``: ``clip_frames`` consecutive frames at ``clip_size``, stacked with their
  differences (motion: frozen, shuffled or flickering frames).

No weights are needed, so it works on any footage, synthetic or real. The split is by group,
never by frame (neighbouring frames are near-duplicates and would leak): a group is a video,
or, on a side with fewer than ``min_groups`` videos (a few long rollouts), a
``group_seconds`` segment of one (the report says which). Cross-fitting over ``folds`` folds
gives every sample one held-out prediction; the sides are balanced by a seeded subsample, so
a constant classifier scores exactly 0.5. The report gives a Wilson interval (samples taken
as independent), an interval that accounts for the correlation within groups, and an exact
one-sided binomial p-value against 0.5. Deterministic for a given ``seed`` and ``threads``
on one machine (randomness from ``torch.Generator``s; CPU).
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from drivesim.utils.io import DriveSimInputError

VARIANTS = ("frame", "clip")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class C2STConfig:
    """Classifier and split recipe (recorded in every report)."""

    frame_size: tuple[int, int] = (64, 128)  # H, W of the frame variant's input
    clip_size: tuple[int, int] = (32, 64)    # H, W of the clip variant's input
    width: int = 16                          # channels of the first conv (then x2, x4, x4)
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    folds: int = 2
    min_groups: int = 6
    group_seconds: float = 10.0
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "steps", "batch_size", "min_groups", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise DriveSimInputError("expected a positive integer", field=f"c2st.{name}",
                                         value=getattr(self, name))
        if not isinstance(self.folds, int) or self.folds < 2:
            raise DriveSimInputError("expected an integer >= 2", field="c2st.folds", value=self.folds)
        for name in ("lr", "group_seconds"):
            if not getattr(self, name) > 0:
                raise DriveSimInputError("expected > 0", field=f"c2st.{name}", value=getattr(self, name))
        for name in ("frame_size", "clip_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 16:
                raise DriveSimInputError("expected (H, W) with both sides >= 16", field=f"c2st.{name}",
                                         value=size)


# ---------------------------------------------------------------------------- statistics
def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``total`` is 0)."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_p_above_half(correct: int, total: int) -> float:
    """Exact one-sided p-value P(X >= correct) for X ~ Binomial(total, 1/2)."""
    if total == 0:
        return 1.0
    logs = [math.lgamma(total + 1) - math.lgamma(k + 1) - math.lgamma(total - k + 1)
            for k in range(correct, total + 1)]
    top = max(logs)
    return min(1.0, math.exp(top + math.log(sum(math.exp(v - top) for v in logs)) - total * math.log(2)))


def clustered_interval(correct: np.ndarray, groups: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Normal interval of the accuracy with a cluster-robust variance: held-out samples of one
    group (video or segment) are correlated, so their errors are summed per group first."""
    n = len(correct)
    if n == 0:
        return 0.0, 1.0
    acc = float(correct.mean())
    _, inverse = np.unique(groups, return_inverse=True)
    resid = np.bincount(inverse, weights=correct - acc)                     # [G]
    g = len(resid)
    var = float((resid ** 2).sum()) / n ** 2 * (g / (g - 1) if g > 1 else 1.0)
    half = z * math.sqrt(var)
    return max(0.0, acc - half), min(1.0, acc + half)


# ---------------------------------------------------------------------------- network
class C2STNet(nn.Module):
    """Four stride-2 3x3 convs (ReLU, no normalisation: global brightness and contrast stay
    visible), global average pooling, a linear logit. ``[B, C, H, W]`` in [-1, 1] -> ``[B]``."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], 1)

    def reset(self, generator: torch.Generator) -> C2STNet:
        """Kaiming-normal weights and zero biases drawn from ``generator``."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                    m.bias.zero_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def train_classifier(x: torch.Tensor, y: torch.Tensor, cfg: C2STConfig,
                     generator: torch.Generator) -> C2STNet:
    """Fit on uint8 ``x [N, C, H, W]`` with labels ``y [N]`` (1 = generated) for ``cfg.steps``
    Adam steps; every batch holds half of each class (sampled with ``generator``), and each
    sample is mirrored left-right with probability 1/2."""
    net = C2STNet(x.shape[1], cfg.width).reset(generator)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    pos, neg = torch.nonzero(y == 1).squeeze(1), torch.nonzero(y == 0).squeeze(1)
    half = max(1, cfg.batch_size // 2)
    for _ in range(cfg.steps):
        idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=generator)],
                         neg[torch.randint(len(neg), (half,), generator=generator)]])
        xb = _as_input(x[idx])
        flip = torch.rand(len(idx), generator=generator) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.binary_cross_entropy_with_logits(net(xb), y[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: C2STNet, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Held-out predictions ``[N]`` (1 = generated) of uint8 ``x [N, C, H, W]``."""
    return torch.cat([(net(_as_input(x[i:i + batch])) > 0).long() for i in range(0, len(x), batch)]) \
        if len(x) else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------------------- the test
@dataclass
class C2STSamples:
    """One variant's samples: uint8 ``inputs [N, C, H, W]``, ``labels [N]`` (1 = generated),
    ``groups [N]`` (split units, ids unique across sides) and ``windows [N]`` (drift window)."""

    inputs: torch.Tensor
    labels: np.ndarray
    groups: np.ndarray
    windows: np.ndarray
    grouping: dict[str, str] = field(default_factory=dict)


def assign_folds(groups: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold ``[N]`` of every sample: each side's groups are shuffled (seeded) and dealt round-robin."""
    out = np.zeros(len(groups), np.int64)
    for side in (0, 1):
        ids = np.unique(groups[labels == side])
        order = np.random.default_rng([seed, side]).permutation(len(ids))
        fold_of = {int(ids[k]): rank % folds for rank, k in enumerate(order)}
        mask = labels == side
        out[mask] = [fold_of[int(g)] for g in groups[mask]]
    return out


def balance(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices keeping an equal number of each class (seeded subsample of the larger one)."""
    pos, neg = np.nonzero(labels == 1)[0], np.nonzero(labels == 0)[0]
    n = min(len(pos), len(neg))
    rng = np.random.default_rng([seed, 2])
    return np.sort(np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]))


def run_test(samples: C2STSamples, cfg: C2STConfig, window_bounds: Callable[[int], dict]) -> dict:
    """Cross-fitted held-out accuracy of one variant with its intervals and per-window rows."""
    keep = balance(samples.labels, cfg.seed)
    labels, groups, windows = samples.labels[keep], samples.groups[keep], samples.windows[keep]
    inputs = samples.inputs[torch.from_numpy(keep)]
    folds = assign_folds(groups, labels, cfg.folds, cfg.seed)
    for side, name in ((0, "real"), (1, "fake")):
        if len(np.unique(groups[labels == side])) < cfg.folds:
            raise DriveSimInputError(f"the C2ST needs at least {cfg.folds} groups (videos or segments) "
                                     f"per side", field=f"c2st.{name}_groups",
                                     value=len(np.unique(groups[labels == side])))
    pred = np.zeros(len(labels), np.int64)
    y = torch.from_numpy(labels)
    with _threads(cfg.threads):
        for f in range(cfg.folds):
            test = folds == f
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + f)
            net = train_classifier(inputs[torch.from_numpy(~test)], y[torch.from_numpy(~test)], cfg, gen)
            pred[test] = predict(net, inputs[torch.from_numpy(test)]).numpy()
    return summarise(pred == labels, labels, groups, windows, window_bounds) | {"grouping": samples.grouping}


def summarise(correct: np.ndarray, labels: np.ndarray, groups: np.ndarray, windows: np.ndarray,
              window_bounds: Callable[[int], dict]) -> dict:
    """Accuracy, intervals, p-value and per-window rows from held-out correctness ``[N]``."""
    k, n = int(correct.sum()), len(correct)
    real_tnr = float(correct[labels == 0].mean()) if (labels == 0).any() else None
    rows = []
    for w in np.unique(windows[labels == 1]):
        hit = correct[(labels == 1) & (windows == w)]
        rows.append({**window_bounds(int(w)), "samples": len(hit), "detected": float(hit.mean()),
                     "accuracy": None if real_tnr is None else 0.5 * (float(hit.mean()) + real_tnr)})
    return {"accuracy": k / n if n else None, "held_out": n, "correct": k,
            "ci95": list(wilson_interval(k, n)), "ci95_clustered": list(clustered_interval(correct, groups)),
            "p_value": binomial_p_above_half(k, n), "groups": len(np.unique(groups)),
            "real_correct": real_tnr,
            "fake_detected": float(correct[labels == 1].mean()) if (labels == 1).any() else None,
            "windows": rows}


# ---------------------------------------------------------------------------- collection
def clip_starts(num_sampled: int, clip_frames: int, per_video: int) -> np.ndarray:
    """Starts (in sampled-frame units) of up to ``per_video`` non-overlapping clips spread
    evenly over a video of ``num_sampled`` frames (at the evaluation stride)."""
    n = min(per_video, num_sampled // clip_frames)
    if n <= 0:
        return np.zeros(0, np.int64)
    return np.linspace(0, num_sampled - clip_frames, n).round().astype(np.int64)


def clip_input(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[K, H, W, 3]`` -> uint8 ``[3K + 3(K-1), h, w]``: the frames and their halved,
    re-centred differences (so motion is one conv away)."""
    small = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in clip])
    diffs = ((small[1:].astype(np.int16) - small[:-1]) // 2 + 128).astype(np.uint8)   # [K-1, h, w, 3]
    return np.concatenate([rearrange(small, "k h w c -> (k c) h w"),
                           rearrange(diffs, "k h w c -> (k c) h w")])


class C2STCollector:
    """Gathers the C2ST clips while the evaluator streams videos, then runs both variants.

    Per video: ``plan`` names the frame indices to read, ``add`` receives them (any order,
    in blocks), ``end_video`` cuts them into clips at ``frame_size``.
    """

    def __init__(self, clip_frames: int, clips_per_video: int, max_clips: int,
                 config: C2STConfig | None = None) -> None:
        self.cfg = config or C2STConfig()
        self.clip_frames, self.per_video, self.max_clips = clip_frames, clips_per_video, max_clips
        self.clips: list[np.ndarray] = []   # uint8 [K, H, W, 3] at frame_size
        self.meta: list[tuple[int, str, float, int]] = []  # (label, video, start seconds, window)
        self.videos: dict[int, dict[str, float]] = {0: {}, 1: {}}  # video -> duration (s)
        self._frames: dict[int, np.ndarray] = {}
        self._starts = np.zeros(0, np.int64)
        self._stride = 1

    def count(self, real: bool) -> int:
        return sum(1 for m in self.meta if m[0] == int(not real))

    def plan(self, num_frames: int, stride: int, real: bool, num_videos: int | None = None) -> np.ndarray:
        """Frame indices to read for this video. With the side's ``num_videos`` known, the
        ``max_clips`` are spread over all videos (more groups) instead of filling up on the first."""
        per_video = self.per_video if not num_videos else min(self.per_video, -(-self.max_clips // num_videos))
        left = self.max_clips - self.count(real)
        starts = clip_starts(len(range(0, num_frames, stride)), self.clip_frames, min(per_video, left))
        self._starts, self._stride, self._frames = starts, stride, {}
        return np.unique((starts[:, None] + np.arange(self.clip_frames)) * stride).astype(np.int64)

    def add(self, indices: np.ndarray, frames: np.ndarray) -> None:
        h, w = self.cfg.frame_size
        for i, frame in zip(indices.tolist(), frames):
            self._frames[i] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)

    def end_video(self, name: str, real: bool, fps: float, num_frames: int, window: Callable[[int], int]) -> None:
        label = int(not real)
        for s in self._starts.tolist():
            idx = (s + np.arange(self.clip_frames)) * self._stride
            self.clips.append(np.stack([self._frames[int(i)] for i in idx]))
            self.meta.append((label, name, idx[0] / fps, window(int(idx[0]))))
        if len(self._starts):
            self.videos[label][name] = num_frames / fps
        self._frames = {}

    def samples(self, variant: str) -> C2STSamples:
        """Inputs of one variant with the split groups of :func:`group_ids`."""
        if variant not in VARIANTS:
            raise DriveSimInputError(f"expected one of {VARIANTS}", field="c2st.variant", value=variant)
        groups, grouping = group_ids(self.meta, self.videos, self.cfg)
        labels = np.array([m[0] for m in self.meta], np.int64)
        windows = np.array([m[3] for m in self.meta], np.int64)
        if variant == "frame":  # every frame of every clip: [N * K, 3, H, W]
            x = torch.from_numpy(rearrange(np.stack(self.clips), "n k h w c -> (n k) c h w").copy())
            rep = self.clip_frames
            return C2STSamples(x, labels.repeat(rep), groups.repeat(rep), windows.repeat(rep), grouping)
        x = torch.from_numpy(np.stack([clip_input(c, self.cfg.clip_size) for c in self.clips]))
        return C2STSamples(x, labels, groups, windows, grouping)

    def result(self, window_bounds: Callable[[int], dict]) -> dict:
        out = {"config": asdict(self.cfg), "clip_frames": self.clip_frames,
               "real_clips": self.count(True), "fake_clips": self.count(False), "real_level": 0.5}
        for variant in VARIANTS:
            try:
                out[variant] = run_test(self.samples(variant), self.cfg, window_bounds)
            except DriveSimInputError as err:   # too few videos: say so in the report
                out[variant] = {"accuracy": None, "note": str(err), "windows": []}
        return out


def group_ids(meta: list[tuple[int, str, float, int]], videos: dict[int, dict[str, float]],
              cfg: C2STConfig) -> tuple[np.ndarray, dict[str, str]]:
    """Split unit ``[N]`` of every clip: its video, or on a side with fewer than
    ``cfg.min_groups`` videos its ``cfg.group_seconds`` segment of the video."""
    by_segment = {label: len(videos[label]) < cfg.min_groups for label in (0, 1)}
    keys = [(label, name, int(start // cfg.group_seconds) if by_segment[label] else 0)
            for label, name, start, _ in meta]
    ids = np.array([zlib.crc32(repr(k).encode()) for k in keys], np.int64)
    grouping = {("fake" if label else "real"): ("segment" if by_segment[label] else "video")
                for label in (0, 1)}
    return ids, grouping
