"""The oracle: a tiny vehicle segmenter plus a day/night brightness classifier, trained on
synthetic-world renders (their ground-truth boxes are the labels), cached after first training.

Recipe (``OracleConfig``): ``num_drives`` drives (alternating day/night, 2..12 vehicles,
all weathers), ``frames_per_drive`` frames each at ``fps`` rendered at ``height x width``
(the drives of ``calibrate`` use other seeds);
the target of a frame is the union of its vehicle boxes (``scores.boxes_to_mask``); binary
cross-entropy, Adam, fixed seed. The day/night threshold is the mean luma that best
separates the same renders.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drivesim.metrics.oracle.scores import (
    BoxFidelity,
    box_fidelity_frame,
    boxes_to_mask,
    grey_small,
    vehicle_boxes,
)
from drivesim.utils.io import DriveSimInputError, atomic_path

CACHE_ENV = "DRIVESIM_CACHE"
FORMAT = "drivesim.oracle/1"


@dataclass(frozen=True)
class OracleConfig:
    seed: int = 0
    height: int = 64
    width: int = 128
    num_drives: int = 16
    frames_per_drive: int = 30
    fps: float = 2.0
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    channels: int = 16
    calibration_drives: int = 4

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # BatchNorm: a tiny CNN trained for a few hundred steps converges much faster with it
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice: Dice balances the minority vehicle pixels without a tuned weight."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


class VehicleSegmenter(nn.Module):
    """float ``[B, 3, h, w]`` in [0, 1] -> vehicle logits ``[B, 1, h, w]``.

    Two stride-2 stages then dilated convolutions (receptive field ~60 px at 1/4 scale, so a
    near vehicle is seen whole), upsampled and fused with full-resolution features.
    """

    def __init__(self, channels: int = 24) -> None:
        super().__init__()
        c = channels
        self.stem = _block(3, c, stride=1)
        self.down = nn.Sequential(_block(c, 2 * c, stride=2), _block(2 * c, 2 * c, stride=2),
                                  *(_block(2 * c, 2 * c, dilation=d) for d in (2, 4, 8)))
        # 1x1 head: the context comes from the coarse path; full resolution only sharpens edges
        self.head = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.stem(x)                                      # [B, c, h, w]
        coarse = self.down(full)                                 # [B, 2c, h/4, w/4]
        up = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([full, up], dim=1))           # [B, 1, h, w]


class Oracle:
    """Segmenter + day/night threshold at a fixed working resolution."""

    def __init__(self, config: OracleConfig, segmenter: VehicleSegmenter, luma_threshold: float,
                 calibration: dict | None = None) -> None:
        self.config, self.segmenter = config, segmenter.eval()
        self.luma_threshold, self.calibration = float(luma_threshold), calibration or {}

    def prepare(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[n, H, W, 3]`` -> float ``[n, 3, h, w]`` in [0, 1] at the oracle resolution."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        return F.interpolate(x, size=(self.config.height, self.config.width), mode="area")

    @torch.no_grad()
    def vehicle_prob(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[n, H, W, 3]`` -> vehicle probability ``[n, h, w]``."""
        return torch.sigmoid(self.segmenter(self.prepare(frames)))[:, 0].numpy()

    def luma(self, frames: np.ndarray) -> np.ndarray:
        """Mean BT.601 luma per frame in [0, 1], ``[n]``."""
        return grey_small(frames, self.config.height, self.config.width).mean(dim=(1, 2)).numpy()

    def is_night(self, mean_luma: float) -> bool:
        return mean_luma < self.luma_threshold

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        payload = {"format": FORMAT, "config": asdict(self.config), "luma_threshold": self.luma_threshold,
                   "calibration": json.dumps(self.calibration), "state_dict": self.segmenter.state_dict()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Oracle:
        p = Path(path)
        try:
            payload = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt / foreign files
            raise DriveSimInputError(f"cannot load oracle checkpoint: {err}", path=p) from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DriveSimInputError(f"not an oracle checkpoint (expected format {FORMAT})", path=p,
                                     field="format", value=payload.get("format") if isinstance(payload, dict) else None)
        config = OracleConfig(**payload["config"])
        segmenter = VehicleSegmenter(config.channels)
        segmenter.load_state_dict(payload["state_dict"])
        return cls(config, segmenter, payload["luma_threshold"], json.loads(payload["calibration"]))


def render_drives(cfg: OracleConfig, seeds: range) -> dict[str, np.ndarray]:
    """World renders: ``frames`` uint8 ``[n, h, w, 3]``, ``masks`` bool ``[n, h, w]`` (union of
    vehicle boxes), ``night`` bool ``[n]``, ``boxes`` (list of ``[k, 4]`` vehicle boxes)."""
    from drivesim.data.world import DrivingWorld, WorldConfig  # lazy: only training needs it

    out: dict[str, list] = {"frames": [], "masks": [], "night": [], "boxes": []}
    weathers = ("clear", "rain", "fog")
    for d in seeds:
        world = DrivingWorld(WorldConfig(
            seed=d, height=cfg.height, width=cfg.width, fps=cfg.fps, night=bool(d % 2),
            num_vehicles=2 + (d * 5) % 11, weather=weathers[(d // 2) % 3]))
        for _ in range(cfg.frames_per_drive):
            frame = world.step()
            boxes = vehicle_boxes(frame.boxes, frame.classes)
            out["frames"].append(frame.rgb)
            out["masks"].append(boxes_to_mask(boxes, cfg.height, cfg.width))
            out["night"].append(bool(d % 2))
            out["boxes"].append(boxes)
    return {"frames": np.stack(out["frames"]), "masks": np.stack(out["masks"]),
            "night": np.asarray(out["night"]), "boxes": out["boxes"]}


def train_seeds(cfg: OracleConfig) -> range:
    return range(cfg.seed * 1000, cfg.seed * 1000 + cfg.num_drives)


def calibration_seeds(cfg: OracleConfig) -> range:
    start = cfg.seed * 1000 + 500  # disjoint from the training drives
    return range(start, start + cfg.calibration_drives)


def fit_luma_threshold(luma: np.ndarray, night: np.ndarray) -> float:
    """Threshold t (night iff luma < t) with the best accuracy; midpoint between neighbours."""
    order = np.sort(luma)
    candidates = np.concatenate([[order[0] - 1e-3], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-3]])
    accuracy = [((luma < t) == night).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def train_oracle(cfg: OracleConfig, *, renders: dict | None = None,
                 calibration_renders: dict | None = None) -> Oracle:
    """Train the oracle from scratch on CPU (deterministic for a given ``cfg.seed``), then
    calibrate it on held-out drives (``Oracle.calibration``: its scores on ground truth).

    ``renders`` / ``calibration_renders`` (``render_drives`` output) skip re-rendering when the
    caller already has them.
    """
    data = renders if renders is not None else render_drives(cfg, train_seeds(cfg))
    generator = torch.Generator().manual_seed(cfg.seed)
    segmenter = VehicleSegmenter(cfg.channels)
    with torch.no_grad():  # seeded He init without touching the global RNG
        for module in segmenter.modules():
            if isinstance(module, nn.Conv2d):
                w = module.weight
                w.copy_(torch.randn(w.shape, generator=generator) * (2.0 / w[0].numel()) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
    oracle = Oracle(cfg, segmenter, 0.0)
    x = oracle.prepare(data["frames"])                           # [n, 3, h, w]
    y = torch.from_numpy(data["masks"]).float()[:, None]         # [n, 1, h, w]
    opt = torch.optim.Adam(segmenter.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    segmenter.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=generator)
        loss = segmentation_loss(segmenter(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    segmenter.eval()
    oracle.luma_threshold = fit_luma_threshold(oracle.luma(data["frames"]), data["night"])
    if calibration_renders is None:
        calibration_renders = render_drives(cfg, calibration_seeds(cfg))
    oracle.calibration = calibrate(oracle, calibration_renders)
    return oracle


def calibrate(oracle: Oracle, data: dict[str, np.ndarray]) -> dict:
    """The oracle's scores on ground-truth renders: the ceiling generated videos can reach."""
    total = BoxFidelity()
    for start in range(0, len(data["frames"]), 64):
        prob = oracle.vehicle_prob(data["frames"][start:start + 64])
        for k, p in enumerate(prob):
            total.add(box_fidelity_frame(p, data["boxes"][start + k]))
    night_pred = np.array([oracle.is_night(v) for v in oracle.luma(data["frames"])])
    return {"box_fidelity": total.summary(),
            "daynight_frame_accuracy": float((night_pred == data["night"]).mean()),
            "frames": int(len(data["frames"]))}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "drivesim"))


def load_or_train_oracle(cfg: OracleConfig | None = None, *, path: str | os.PathLike | None = None,
                         cache_dir: str | os.PathLike | None = None) -> Oracle:
    """Load ``path`` if given, else ``<cache_dir>/oracle-<hash of cfg>.pt``, training it first
    if absent (the file appears atomically, so concurrent first runs cannot corrupt it)."""
    if path is not None:
        return Oracle.load(path)
    cfg = cfg or OracleConfig()
    cached = Path(cache_dir or default_cache_dir()) / f"oracle-{cfg.key()}.pt"
    if cached.is_file():
        return Oracle.load(cached)
    oracle = train_oracle(cfg)
    oracle.save(cached, overwrite=True)
    return oracle
