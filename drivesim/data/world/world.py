"""DrivingWorld: a deterministic, endless front-camera drive with exact box labels.

Time: the traffic advances on a fixed clock of ``sim_hz`` ticks per second, and the k-th
call to ``step`` returns the world at t = k / fps, linearly interpolated between the two
ticks around t. The drive is therefore a function of the seed alone: the same seed at
10 and 20 fps gives the same drive sampled differently (frame k at 10 fps equals frame
2k at 20 fps exactly), and rendering never touches the simulation state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drivesim.utils.io import DriveSimInputError

from .actors import Snapshot, Traffic
from .camera import cam_from_ego, intrinsics
from .config import WorldConfig
from .ego_control import CurvaturePlan, EgoController, ego_motion
from .labelling import label_scene
from .render import Renderer
from .road import LaneLayout, Road
from .scene import Scene, build_scene
from .scenery import Scenery


@dataclass
class WorldFrame:
    """One frame. Boxes are normalised x1, y1, x2, y2 in [0, 1], sorted by track id."""

    rgb: np.ndarray | None      # uint8 [H, W, 3] RGB, None when not rendered
    boxes: np.ndarray           # float32 [N, 4]
    classes: np.ndarray         # int64 [N] (drivesim.data.labels)
    track_ids: np.ndarray       # int64 [N], >= 1, stable over the drive
    visibility: np.ndarray      # float32 [N] in [0, 1]
    boxes3d: np.ndarray         # float32 [N, 7] x, y, z centre (world), length, width, height, yaw
    ego_pose: np.ndarray        # float64 [4, 4] world_from_ego
    intrinsics: np.ndarray      # float64 [3, 3]
    cam_from_ego: np.ndarray    # float64 [4, 4]
    time: float                 # seconds since the start of the drive
    index: int                  # frame number, from 0
    ego_speed: float = 0.0      # m/s over the ground (exact: the derivative of ego_pose)
    ego_yaw_rate: float = 0.0   # rad/s, left positive (exact)


class DrivingWorld:
    """Procedural driving world; see docs/world.md for the model and conventions."""

    def __init__(self, cfg: WorldConfig) -> None:
        if not isinstance(cfg, WorldConfig):
            raise DriveSimInputError("expected a WorldConfig", path="DrivingWorld", field="cfg",
                                     value=type(cfg).__name__)
        self.cfg = cfg
        self.layout = LaneLayout(cfg.lanes_forward, cfg.lanes_oncoming, cfg.lane_width)
        self.traffic = Traffic(cfg.seed, cfg.num_vehicles, self.layout, cfg.ego_speed,
                               cfg.num_pedestrians, cfg.traffic_range)
        track = cfg.ego_track
        plan = None if track is None else CurvaturePlan(track, float(self.traffic.s[0]),
                                                        float(self.traffic.d[0]), 1.0 / cfg.sim_hz)
        self.road = Road(cfg.seed, plan=plan)
        self.scenery = Scenery(cfg.seed, self.road, self.layout)
        if track is not None:
            self.traffic.command_ego(EgoController(track, self.road))
        self.K = intrinsics(cfg.height, cfg.width, cfg.hfov_deg)
        self.cam_from_ego = cam_from_ego(cfg.camera_height, cfg.camera_pitch_deg, cfg.camera_forward)
        self.index = 0
        self._tick = 0
        self._snaps: dict[int, Snapshot] = {0: self.traffic.snapshot()}
        self._renderer: Renderer | None = None  # built on the first rendered frame

    def step(self, render: bool = True) -> WorldFrame:
        """The next frame (the k-th call returns time k / fps); ``render=False`` skips pixels."""
        k = self.index
        scene = self.scene_at(k)
        cfg = self.cfg
        labels = label_scene(scene, cfg.height, cfg.width, cfg.near, cfg.min_box_pixels,
                             cfg.min_visibility, cfg.max_distance)
        rgb = None
        if render:
            if self._renderer is None:
                self._renderer = Renderer(cfg, self.K, self.cam_from_ego, self.road, self.layout)
            rgb = self._renderer.render(scene, k)
        speed, yaw_rate = self.ego_motion_at(k)
        self.index += 1
        return WorldFrame(rgb, labels.boxes, labels.classes, labels.track_ids, labels.visibility,
                          labels.boxes3d, scene.world_from_ego.copy(), self.K.copy(),
                          self.cam_from_ego.copy(), k / cfg.fps, k, speed, yaw_rate)

    def ego_motion_at(self, k: int) -> tuple[float, float]:
        """Exact speed (m/s) and yaw rate (rad/s) of the ego at frame ``k``: the derivative of its
        pose over the tick interval the frame lies in (the one starting at it, on a tick)."""
        a, alpha = self._tick_of(k)
        self._advance_to(a + 1)
        return ego_motion(self._snaps[a], self._snaps[a + 1], alpha, self.road, 1.0 / self.cfg.sim_hz)

    def skip(self, frames: int) -> None:
        """Advance ``frames`` frames without building their scenes or labels: the world ends where
        ``frames`` calls of ``step(render=False)`` leave it (tested), at a fraction of the cost
        (warm-ups of the synthetic datasets: camera geometry and labelling were ~55% of a frame's
        data time)."""
        if frames < 0:
            raise DriveSimInputError("cannot skip a negative number of frames", path="DrivingWorld",
                                     field="frames", value=frames)
        if frames:  # ticks are monotone in k: the last skipped frame's ticks cover all the others
            a, alpha = self._tick_of(self.index + frames - 1)
            self._advance_to(a + 1 if alpha > 0 else a)
        self.index += frames

    def _tick_of(self, k: int) -> tuple[int, float]:
        """Simulation tick at or before frame ``k`` and the fraction of the way to the next one."""
        pos = k * self.cfg.sim_hz / self.cfg.fps
        a = int(math.floor(pos + 1e-9))
        return a, (pos - a if pos - a > 1e-9 else 0.0)

    def scene_at(self, k: int) -> Scene:
        """Geometry of frame ``k`` (k must not go back further than the current tick)."""
        a, alpha = self._tick_of(k)
        self._advance_to(a + 1 if alpha > 0 else a)
        snap = self._snaps[a] if alpha == 0 else _interpolate(self._snaps[a], self._snaps[a + 1], alpha)
        return build_scene(snap, self.traffic.attrs, self.road, self.scenery, self.K,
                           self.cam_from_ego, self.cfg.near)

    def _advance_to(self, tick: int) -> None:
        if tick < self._tick - 1:
            raise DriveSimInputError("cannot go back in time", path="DrivingWorld", field="tick",
                                     value=tick)
        while self._tick < tick:
            self.traffic.tick(1.0 / self.cfg.sim_hz)
            self._tick += 1
            self._snaps[self._tick] = self.traffic.snapshot()
            self._snaps.pop(self._tick - 2, None)
            if self._tick % 200 == 0:  # forget attributes of vehicles long gone
                live = {int(i) for snap in self._snaps.values() for i in snap.track_id}
                self.traffic.attrs = {i: v for i, v in self.traffic.attrs.items() if i in live}


def _interpolate(a: Snapshot, b: Snapshot, alpha: float) -> Snapshot:
    """Traffic at a fraction ``alpha`` between two ticks, matched by track id.

    A vehicle present in only one tick (it was respawned in between, far from the camera)
    is taken from the nearer tick.
    """
    common, ia, ib = np.intersect1d(a.track_id, b.track_id, return_indices=True)
    only_a = np.setdiff1d(np.arange(len(a.track_id)), ia) if alpha < 0.5 else np.zeros(0, np.int64)
    only_b = np.setdiff1d(np.arange(len(b.track_id)), ib) if alpha >= 0.5 else np.zeros(0, np.int64)

    def mix(name: str) -> np.ndarray:
        va, vb = getattr(a, name), getattr(b, name)
        both = (1.0 - alpha) * va[ia] + alpha * vb[ib]
        return np.concatenate([both, va[only_a], vb[only_b]])

    ids = np.concatenate([common, a.track_id[only_a], b.track_id[only_b]])
    order = np.argsort(ids, kind="stable")  # ego (id 0) first
    return Snapshot((1.0 - alpha) * a.time + alpha * b.time, ids[order],
                    *(mix(n)[order] for n in ("s", "d", "v", "vd")), np.concatenate(
                        [b.direction[ib], a.direction[only_a], b.direction[only_b]])[order])
