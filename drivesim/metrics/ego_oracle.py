"""The ego-motion oracle: speed and yaw rate estimated from consecutive frames.

A small CNN trained on synthetic-world renders with the world's exact ego motion as labels
(like the box oracle, ``drivesim.metrics.oracle``), cached by config hash. It scores whether
generated video moves the way its ego-motion conditioning says.

Recipe (``EgoOracleConfig``): ``num_drives`` drives at ``fps`` rendered at ``height x width``
(alternating day/night, 2-12 vehicles, all weathers, near and far traffic), a share
``program_fraction`` of them with a random ego program of stops, speed changes and curves
(``drivesim.data.ego_presets.random_track``), the others with the world's own driver. An
input is the ``stack - 1`` differences of ``stack`` consecutive grey frames
(``[stack - 1, h, w]``, see ``stacks``); the target is the mean speed and yaw rate over the first
``stack - 1`` frames (the motion between the frames), scaled by 10 m/s and 0.1 rad/s;
Smooth-L1 loss, Adam, fixed seed, horizontal flips (which negate the yaw rate) half the time.
``EgoOracle.calibration`` holds its scores on held-out drives (Pearson correlation, mean
absolute error, and the error of always answering the training mean): the ceiling a
generated video can reach.
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

from drivesim.metrics.oracle.model import default_cache_dir
from drivesim.utils.io import DriveSimInputError, atomic_path

FORMAT = "drivesim.ego_oracle/1"
SPEED_SCALE, YAW_SCALE = 10.0, 0.1  # m/s, rad/s: the network's output units
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class EgoOracleConfig:
    seed: int = 0
    height: int = 64
    width: int = 128
    fps: float = 10.0
    stack: int = 3
    num_drives: int = 64
    frames_per_drive: int = 40
    program_fraction: float = 0.75
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    channels: int = 24
    calibration_drives: int = 12

    def __post_init__(self) -> None:
        checks = (("stack", self.stack >= 2, "at least 2 frames (one difference)"),
                  ("fps", self.fps > 0, "> 0"), ("height", self.height >= 16, ">= 16"),
                  ("width", self.width >= 16, ">= 16"), ("steps", self.steps >= 0, ">= 0"))
        for name, ok, want in checks:
            if not ok:
                raise DriveSimInputError(f"must be {want}", path="EgoOracleConfig", field=name,
                                         value=getattr(self, name))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MotionNet(nn.Module):
    """``[B, k - 1, h, w]`` (the differences of k grey frames) -> ``[B, 2]`` (speed / SPEED_SCALE,
    yaw rate / YAW_SCALE). Four stride-2 stages, then a 2 x 4 grid of pooled features: where in
    the image the motion is (road below, horizon above, left or right) matters."""

    def __init__(self, stack: int, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(_block(stack - 1, c), _block(c, 2 * c), _block(2 * c, 2 * c),
                                      _block(2 * c, 4 * c), nn.AdaptiveAvgPool2d((2, 4)))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * 8, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                       # [B, 4c, 2, 4] -> [B, 2]


def grey(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` -> BT.601 luma ``[n, h, w]`` in [0, 1] at the oracle resolution."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)            # [n, H, W, 3]
    y = (x @ _LUMA)[:, None]                                                          # [n, 1, H, W]
    return F.interpolate(y, size=(height, width), mode="area")[:, 0]


def stacks(luma: torch.Tensor, k: int) -> torch.Tensor:
    """Luma ``[n, h, w]`` of consecutive frames -> network inputs ``[n - k + 1, k - 1, h, w]``: the
    differences of each window's consecutive frames (times 4). Motion only: with the frames
    themselves as input, a small network learns the look of its training drives (day, night,
    a drive's usual speed) and generalises worse to new ones (held-out speed error 2.1 vs
    1.7 m/s, yaw rate 0.015 vs 0.012 rad/s at the default config; docs/benchmarks.md)."""
    windows = luma.unfold(0, k, 1).permute(0, 3, 1, 2)                                # [m, k, h, w]
    return 4.0 * (windows[:, 1:] - windows[:, :-1])


def window_targets(speed: np.ndarray, yaw: np.ndarray, k: int) -> np.ndarray:
    """Per window of ``k`` frames: the mean label over its first ``k - 1`` frames, ``[n - k + 1, 2]``
    in network units."""
    n = len(speed) - k + 1
    s = np.array([speed[i:i + k - 1].mean() for i in range(n)]) / SPEED_SCALE
    y = np.array([yaw[i:i + k - 1].mean() for i in range(n)]) / YAW_SCALE
    return np.stack([s, y], axis=1).astype(np.float32)


class EgoOracle:
    """The trained network at its working resolution and frame rate."""

    def __init__(self, config: EgoOracleConfig, net: MotionNet, calibration: dict | None = None) -> None:
        self.config, self.net, self.calibration = config, net.eval(), calibration or {}

    @torch.no_grad()
    def estimate(self, frames: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive uint8 frames ``[n, H, W, 3]`` at ``config.fps`` -> speed (m/s) and yaw rate
        (rad/s) ``[n - stack + 1]``, one per window of ``stack`` frames (the motion from its first
        to its last frame)."""
        k = self.config.stack
        if len(frames) < k:
            raise DriveSimInputError(f"needs at least {k} consecutive frames", field="frames", value=len(frames))
        x = stacks(grey(frames, self.config.height, self.config.width), k)
        out = torch.cat([self.net(x[i:i + batch]) for i in range(0, len(x), batch)])
        return (out[:, 0] * SPEED_SCALE).numpy(), (out[:, 1] * YAW_SCALE).numpy()

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        payload = {"format": FORMAT, "config": asdict(self.config), "calibration": json.dumps(self.calibration),
                   "state_dict": self.net.state_dict()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EgoOracle:
        p = Path(path)
        try:
            payload = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt / foreign files
            raise DriveSimInputError(f"cannot load ego oracle: {err}", path=p) from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DriveSimInputError(f"not an ego oracle (expected format {FORMAT})", path=p, field="format",
                                     value=payload.get("format") if isinstance(payload, dict) else None)
        config = EgoOracleConfig(**payload["config"])
        net = MotionNet(config.stack, config.channels)
        net.load_state_dict(payload["state_dict"])
        return cls(config, net, json.loads(payload["calibration"]))


def render_drives(cfg: EgoOracleConfig, seeds: range) -> dict[str, np.ndarray]:
    """World renders at ``cfg.fps``: ``frames`` uint8 ``[D, F, h, w, 3]``, ``speed`` / ``yaw``
    float ``[D, F]`` (the world's exact labels), F = ``frames_per_drive + stack - 1``."""
    from drivesim.data.ego_presets import program_track  # lazy: only training renders
    from drivesim.data.world import DrivingWorld, WorldConfig

    n = cfg.frames_per_drive + cfg.stack - 1
    frames, speed, yaw = [], [], []
    for d in seeds:
        rng = np.random.default_rng([d, 0xE60C])
        track = program_track(int(rng.integers(2**31 - 1))) if rng.random() < cfg.program_fraction else None
        world = DrivingWorld(WorldConfig(
            seed=d, height=cfg.height, width=cfg.width, fps=cfg.fps, night=bool(d % 2),
            num_vehicles=2 + (d * 5) % 11, weather=("clear", "rain", "fog")[(d // 2) % 3],
            traffic_range=(60.0, 185.0)[(d // 6) % 2], ego_track=track))
        world.skip(int(rng.integers(0, int(20 * cfg.fps) + 1)))  # anywhere in the first 20 s
        drive = [world.step() for _ in range(n)]
        frames.append(np.stack([f.rgb for f in drive]))
        speed.append([f.ego_speed for f in drive])
        yaw.append([f.ego_yaw_rate for f in drive])
    return {"frames": np.stack(frames), "speed": np.asarray(speed), "yaw": np.asarray(yaw)}


def _dataset(cfg: EgoOracleConfig, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs ``[N, k - 1, h, w]`` and targets ``[N, 2]`` of every window of every drive."""
    xs, ys = [], []
    for frames, speed, yaw in zip(data["frames"], data["speed"], data["yaw"]):
        xs.append(stacks(grey(frames, cfg.height, cfg.width), cfg.stack))
        ys.append(torch.from_numpy(window_targets(speed, yaw, cfg.stack)))
    return torch.cat(xs), torch.cat(ys)


def _seeded_net(cfg: EgoOracleConfig, generator: torch.Generator) -> MotionNet:
    net = MotionNet(cfg.stack, cfg.channels)
    with torch.no_grad():  # seeded He init without touching the global RNG
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                w.copy_(torch.randn(w.shape, generator=generator) * (2.0 / w[0].numel()) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
    return net


def train_ego_oracle(cfg: EgoOracleConfig, *, renders: dict | None = None,
                     calibration_renders: dict | None = None) -> EgoOracle:
    """Train from scratch on CPU (deterministic for ``cfg.seed``), then calibrate on held-out drives."""
    x, y = _dataset(cfg, renders if renders is not None else render_drives(cfg, train_seeds(cfg)))
    generator = torch.Generator().manual_seed(cfg.seed)
    net = _seeded_net(cfg, generator)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    net.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=generator)
        xb, yb = x[idx], y[idx].clone()
        flip = torch.rand(cfg.batch_size, generator=generator) < 0.5   # mirror image: mirrored turn
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        yb[flip, 1] = -yb[flip, 1]
        loss = F.smooth_l1_loss(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    oracle = EgoOracle(cfg, net.eval())
    train_mean = y.mean(dim=0) * torch.tensor([SPEED_SCALE, YAW_SCALE])
    if calibration_renders is None:
        calibration_renders = render_drives(cfg, calibration_seeds(cfg))
    oracle.calibration = calibrate(oracle, calibration_renders, (float(train_mean[0]), float(train_mean[1])))
    return oracle


def motion_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pearson correlation and mean absolute error of estimates against labels ([n] each)."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    r = float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 and truth.std() > 0 else 0.0
    return {"pearson": r, "mae": float(np.abs(pred - truth).mean())}


def calibrate(oracle: EgoOracle, data: dict, constant: tuple[float, float]) -> dict:
    """The oracle's scores on ground-truth renders (its ceiling) and those of always answering
    ``constant`` (speed, yaw rate), the floor it must beat."""
    k = oracle.config.stack
    preds, truths = [], []
    for frames, speed, yaw in zip(data["frames"], data["speed"], data["yaw"]):
        preds.append(np.stack(oracle.estimate(frames), axis=1))
        truths.append(window_targets(speed, yaw, k) * [SPEED_SCALE, YAW_SCALE])
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    out = {"windows": int(len(pred)), "constant": [float(constant[0]), float(constant[1])]}
    for j, name in enumerate(("speed", "yaw_rate")):
        out[name] = {**motion_scores(pred[:, j], truth[:, j]),
                     "constant_mae": float(np.abs(constant[j] - truth[:, j]).mean())}
    return out


def follow_scores(oracle: EgoOracle, frames: np.ndarray, fps: float, ego) -> dict:
    """How well a video moves as its ego motion says: uint8 ``frames [n, H, W, 3]`` at ``fps`` and
    their ``ego`` (``drivesim.data.ego.EgoSeries``, e.g. a scenario's ``ego_at``) are resampled to
    the oracle's rate (nearest frame), estimated window by window and compared, over the windows
    whose frames all have known motion, with :func:`motion_scores` per quantity (``None`` when
    fewer than two windows qualify)."""
    cfg = oracle.config
    idx = np.floor(np.arange(0.0, len(frames) / fps, 1.0 / cfg.fps) * fps + 1e-6).astype(np.int64)
    idx = idx[idx < len(frames)]                                       # source frame of each oracle frame
    k = cfg.stack
    if len(idx) < k:
        return {"windows": 0, "speed": None, "yaw_rate": None}
    speed, yaw = oracle.estimate(frames[idx])
    truth = window_targets(ego.speed[idx].astype(np.float64), ego.yaw_rate[idx].astype(np.float64), k)
    known = np.array([ego.known[idx[i:i + k]].all() for i in range(len(idx) - k + 1)])
    out: dict = {"windows": int(known.sum())}
    for j, (name, est, scale) in enumerate((("speed", speed, SPEED_SCALE), ("yaw_rate", yaw, YAW_SCALE))):
        out[name] = motion_scores(est[known], truth[known, j] * scale) if known.sum() >= 2 else None
    return out


def train_seeds(cfg: EgoOracleConfig) -> range:
    return range(cfg.seed * 1000 + 100, cfg.seed * 1000 + 100 + cfg.num_drives)


def calibration_seeds(cfg: EgoOracleConfig) -> range:
    start = cfg.seed * 1000 + 700  # disjoint from the training drives
    return range(start, start + cfg.calibration_drives)


def load_or_train_ego_oracle(cfg: EgoOracleConfig | None = None, *, path: str | os.PathLike | None = None,
                             cache_dir: str | os.PathLike | None = None) -> EgoOracle:
    """Load ``path`` if given, else ``<cache_dir>/ego-oracle-<hash of cfg>.pt``, training it first
    if absent (the file appears atomically, so concurrent first runs cannot corrupt it)."""
    if path is not None:
        return EgoOracle.load(path)
    cfg = cfg or EgoOracleConfig()
    cached = Path(cache_dir or default_cache_dir()) / f"ego-oracle-{cfg.key()}.pt"
    if cached.is_file():
        return EgoOracle.load(cached)
    oracle = train_ego_oracle(cfg)
    oracle.save(cached, overwrite=True)
    return oracle
