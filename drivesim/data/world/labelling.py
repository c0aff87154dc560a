"""2D box labels: projected 3D box extents, clipped to the image, with a visibility estimate.

A box is the axis-aligned extent of the projection of the part of the 3D box in front of
the near plane. Visibility = (fraction of that extent inside the image) x (fraction of
the silhouette not covered by nearer vehicles, trees or buildings). Coverage is measured
by painting silhouettes far to near (the renderer's painter's order) into a fixed 64x128
id grid in normalised image coordinates, so it does not depend on the render size and
needs no pixels (``render=False`` gives the same labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .camera import clip_box_to_near, project, project_clipped, transform
from .scene import Scene
from .scenery import BUILDING, TREE

GRID_H, GRID_W = 64, 128
_SHIFT = 4  # sub-pixel bits for OpenCV polygon fills
_ANG = np.linspace(0, 2 * np.pi, 20, endpoint=False)
_RING = np.stack([np.cos(_ANG), np.sin(_ANG)], -1)  # [20, 2] unit circle of a tree crown


@dataclass
class Labels:
    boxes: np.ndarray       # float32 [N, 4] normalised x1, y1, x2, y2
    classes: np.ndarray     # int64 [N]
    track_ids: np.ndarray   # int64 [N]
    visibility: np.ndarray  # float32 [N]
    boxes3d: np.ndarray     # float32 [N, 7]


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.rint(points * (1 << _SHIFT)).astype(np.int32)  # rint == round(decimals=0)


def _hull(points_uv: np.ndarray, sx: float, sy: float) -> np.ndarray | None:
    pts = points_uv[np.isfinite(points_uv[:, 0])] * np.array([sx, sy])
    if len(pts) < 3:
        return None
    return _fixed(cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2))


def occluders(scene: Scene, near: float, max_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette points of buildings and tree crowns [M, 20, 2] (NaN = unused) and depths [M]."""
    obj = scene.objects
    depth = np.linalg.norm(scene.obj_centre_cam, axis=-1)
    c = scene.obj_centre_cam
    reach = obj.reach()
    tan_half = scene.K[0, 2] / scene.K[0, 0]
    # only objects that can reach into the view frustum and are nearer than ``max_depth``
    cand = (c[:, 2] > -reach) & (np.abs(c[:, 0]) < c[:, 2] * tan_half + reach) & (depth < max_depth)
    b = np.flatnonzero((obj.kind == BUILDING) & cand)
    pts, mask = clip_box_to_near(transform(scene.cam_from_world, scene.obj_corners_world[b]), near)
    uv_b = project_clipped(scene.K, pts, mask)                       # [nb, 20, 2]
    t = np.flatnonzero((obj.kind == TREE) & cand & (c[:, 2] > near + 0.5 * obj.size[:, 1]))
    r = scene.K[0, 0] * 0.5 * obj.size[t, 1] / c[t, 2]
    uv_t = project(scene.K, c[t])[:, None, :] + r[:, None, None] * _RING  # [nt, 20, 2]
    return np.concatenate([uv_b, uv_t]), np.concatenate([depth[b], depth[t]])


def label_scene(scene: Scene, height: int, width: int, near: float, min_box_pixels: float,
                min_visibility: float, max_distance: float) -> Labels:
    """The labelled 2D boxes of the vehicles in ``scene``, sorted by track id."""
    n = len(scene.hull_uv)
    valid, lo, hi = scene.hull_valid, scene.hull_lo, scene.hull_hi  # extents of hull_uv [N, 20, 2]
    lo_c = np.clip(lo, 0.0, [width, height])
    hi_c = np.clip(hi, 0.0, [width, height])
    size_c = hi_c - lo_c
    # the full extent is measured within half an image beyond each border: a box reaching
    # behind the camera projects to an unbounded extent, which would make any fraction ~0
    margin = 0.5 * np.array([width, height])
    ext = np.clip(hi, -margin, [width, height] + margin) - np.clip(lo, -margin, [width, height] + margin)
    full_area = np.maximum(np.prod(ext, axis=1), 1e-9)
    in_image = np.clip(np.prod(size_c, axis=1) / full_area, 0.0, 1.0)
    keep = valid & (size_c[:, 0] >= max(min_box_pixels, 1e-6)) & (size_c[:, 1] >= max(min_box_pixels, 1e-6))
    keep &= scene.distance <= max_distance
    unoccluded = _unoccluded_fraction(scene, keep, lo, hi, width, height, near)
    vis = in_image * unoccluded
    keep &= vis >= max(min_visibility, 1e-6)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(scene.track_ids[idx], kind="stable")]
    boxes = np.concatenate([lo_c[idx] / [width, height], hi_c[idx] / [width, height]], axis=1)
    return Labels(np.clip(boxes, 0.0, 1.0).astype(np.float32).reshape(-1, 4),
                  scene.classes[idx].astype(np.int64), scene.track_ids[idx].astype(np.int64),
                  vis[idx].astype(np.float32), scene.boxes3d[idx].astype(np.float32).reshape(-1, 7)
                  ) if n else Labels(np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                     np.zeros(0, np.int64), np.zeros(0, np.float32),
                                     np.zeros((0, 7), np.float32))


def _unoccluded_fraction(scene: Scene, keep: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                         width: int, height: int, near: float) -> np.ndarray:
    """Per vehicle: share of its silhouette cells still showing after nearer things are painted.

    A kept vehicle whose box no nearer vehicle or object overlaps is fully unoccluded; only
    the contested ones, and what overlaps them, are painted into the grid.
    """
    n = len(keep)
    out = np.where(keep, 1.0, 0.0)
    if not keep.any():
        return out
    occ_uv, occ_depth = occluders(scene, near, float(scene.distance[keep].max()))
    uv = np.concatenate([scene.hull_uv, occ_uv])                    # [N + M, 20, 2]
    depth = np.concatenate([scene.distance, occ_depth])
    valid = np.isfinite(uv[..., 0]).sum(axis=1) >= 3
    with np.errstate(all="ignore"):
        a_lo = np.fmin.reduce(np.where(valid[:, None, None], uv, 0.0), axis=1)
        a_hi = np.fmax.reduce(np.where(valid[:, None, None], uv, 0.0), axis=1)
    # overlap[i, j]: item j is nearer than kept vehicle i and their boxes intersect
    overlap = (depth[None, :] < depth[:n, None]) & valid[None, :] & keep[:, None]
    overlap &= (a_hi[None, :, 0] > lo[:, None, 0]) & (a_lo[None, :, 0] < hi[:, None, 0])
    overlap &= (a_hi[None, :, 1] > lo[:, None, 1]) & (a_lo[None, :, 1] < hi[:, None, 1])
    contested = overlap.any(axis=1)
    if not contested.any():
        return out
    paint = np.flatnonzero(overlap[contested].any(axis=0) | np.pad(contested, (0, len(uv) - n)))
    paint = paint[np.argsort(-depth[paint], kind="stable")]         # painter's order: far to near
    sx, sy = GRID_W / width, GRID_H / height
    grid = np.zeros((GRID_H, GRID_W), np.int32)
    scratch = np.zeros((GRID_H, GRID_W), np.uint8)
    own = np.zeros(n)
    for j in paint:
        hull = _hull(uv[j], sx, sy)
        if hull is None:
            continue
        if j < n:
            scratch.fill(0)
            cv2.fillConvexPoly(scratch, hull, 1, shift=_SHIFT)
            own[j] = np.count_nonzero(scratch)
        cv2.fillConvexPoly(grid, hull, int(min(j, n)) + 1, shift=_SHIFT)
    shown = np.bincount(grid.ravel(), minlength=n + 2)[1:n + 1]
    frac = np.where(own > 0, np.minimum(shown / np.maximum(own, 1), 1.0), 0.0)
    return np.where(contested, frac, out)
