"""The geometry of one frame: camera pose, vehicles and roadside objects in camera space.

Built once per frame and shared by the labeller (2D boxes, visibility) and the renderer,
so ``step(render=False)`` produces exactly the boxes that ``step(render=True)`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actors import Snapshot
from .camera import box_corners, clip_box_to_near, pose_matrix, project_clipped, transform
from .road import Road
from .scenery import Objects, Scenery

SCENERY_AHEAD = 150.0  # metres of road searched for roadside objects


@dataclass
class Scene:
    """Everything in view at one instant. Vehicles exclude the ego."""

    K: np.ndarray
    cam_from_world: np.ndarray      # [4, 4]
    world_from_ego: np.ndarray      # [4, 4]
    ego_s: float
    ego_d: float
    ego_yaw_rel: float              # ego heading minus road heading (rad)
    # vehicles [N, ...]
    track_ids: np.ndarray
    classes: np.ndarray
    boxes3d: np.ndarray             # [N, 7] x, y, z, l, w, h, yaw (world)
    tints: np.ndarray               # [N] int colour seeds
    direction: np.ndarray           # [N] +1 same way as the ego, -1 oncoming
    corners_cam: np.ndarray         # [N, 8, 3]
    hull_uv: np.ndarray             # [N, 20, 2] projected near-clipped points (NaN = unused)
    distance: np.ndarray            # [N] metres from the camera to the box centre
    hull_valid: np.ndarray          # [N] bool: some hull point is in front of the near plane
    hull_lo: np.ndarray             # [N, 2] min u, v of the hull points (0 where not valid)
    hull_hi: np.ndarray             # [N, 2] max u, v of the hull points (0 where not valid)
    # roadside objects
    objects: Objects
    obj_centre_world: np.ndarray    # [M, 3] world-frame centre of each object
    obj_centre_cam: np.ndarray      # [M, 3] camera-frame centre of each object
    obj_yaw: np.ndarray             # [M] road heading at each object (world)
    obj_corners_world: np.ndarray   # [M, 8, 3] box_corners(obj_centre_world, size, obj_yaw)


def build_scene(snap: Snapshot, attrs: dict[int, tuple[int, np.ndarray, int]], road: Road,
                scenery: Scenery, K: np.ndarray, cam_from_ego: np.ndarray, near: float) -> Scene:
    """Turn a traffic snapshot (Frenet) into camera-space geometry."""
    x, y, th = road.to_world(snap.s, snap.d)
    speed = np.maximum(snap.v, 0.5)
    # heading of travel: road heading + angle of the velocity (lateral, along-road)
    yaw = th + np.arctan2(snap.vd, snap.direction * speed)
    world_from_ego = pose_matrix(float(x[0]), float(y[0]), float(yaw[0]))
    ego_from_world = np.linalg.inv(world_from_ego)
    cam_from_world = cam_from_ego @ ego_from_world

    ids = snap.track_id[1:]
    cls = np.array([attrs[int(i)][0] for i in ids], dtype=np.int64)
    size = np.array([attrs[int(i)][1] for i in ids]).reshape(-1, 3)
    tints = np.array([attrs[int(i)][2] for i in ids], dtype=np.int64)
    centre = np.stack([x[1:], y[1:], size[:, 2] / 2.0], axis=-1)
    boxes3d = np.concatenate([centre, size, yaw[1:, None]], axis=-1)
    corners_cam = transform(cam_from_world, box_corners(centre, size, yaw[1:]))
    points, mask = clip_box_to_near(corners_cam, near=near)
    hull_uv = project_clipped(K, points, mask)
    distance = np.linalg.norm(transform(cam_from_world, centre), axis=-1)
    valid, lo, hi = _extents(hull_uv)

    objects = scenery.between(float(snap.s[0]) - 10.0, float(snap.s[0]) + SCENERY_AHEAD)
    obj_world, oth, obj_corners = objects.placed_on(road)
    return Scene(K, cam_from_world, world_from_ego, float(snap.s[0]), float(snap.d[0]),
                 float(yaw[0] - th[0]), ids.copy(), cls, boxes3d, tints, snap.direction[1:].copy(),
                 corners_cam, hull_uv, distance, valid, lo, hi, objects, obj_world,
                 transform(cam_from_world, obj_world), oth, obj_corners)


def _extents(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image extents of the projected hulls uv [N, 20, 2], shared by labels and renderer."""
    valid = np.isfinite(uv[..., 0]).any(axis=1)
    # np.fmin/fmax.reduce skip NaN exactly as np.nanmin/nanmax (which call them), minus the overhead
    with np.errstate(all="ignore"):
        lo = np.where(valid[:, None], np.fmin.reduce(np.where(valid[:, None, None], uv, 0.0), axis=1), 0.0)
        hi = np.where(valid[:, None], np.fmax.reduce(np.where(valid[:, None, None], uv, 0.0), axis=1), 0.0)
    return valid, lo, hi
