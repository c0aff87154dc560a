"""Pinhole camera: intrinsics, extrinsics, projection and near-plane clipping.

Frames (see docs/world.md):
- world / ego: x forward, y left, z up (right-handed, ISO 8855); the ego origin is on the
  road under the centre of the ego vehicle.
- camera: OpenCV, x right, y down, z along the optical axis.
Pixels: u to the right, v down; the centre of pixel (i, j) is at (j + 0.5, i + 0.5), so
``cx = W / 2`` puts the optical axis at the middle of the image.
"""

from __future__ import annotations

import math

import numpy as np

# ego axes -> camera axes at zero pitch: cam_x = -ego_y, cam_y = -ego_z, cam_z = ego_x
_EGO_TO_CAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])

# the 12 edges of a box whose corners come from ``box_corners`` (bottom 0-3, top 4-7)
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7]])
# faces as corner indices (counter-clockwise seen from outside) and outward normals in the
# box frame: +x front, -x back, +y left, -y right, +z top
BOX_FACES = np.array([[1, 2, 6, 5], [3, 0, 4, 7], [2, 3, 7, 6], [0, 1, 5, 4], [4, 5, 6, 7]])
BOX_FACE_NORMALS = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0]])


def intrinsics(height: int, width: int, hfov_deg: float) -> np.ndarray:
    """K [3, 3] for square pixels with the given horizontal field of view.

    fx = fy = (W / 2) / tan(hfov / 2); the vertical field of view follows from the aspect.
    """
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def cam_from_ego(height: float, pitch_deg: float, forward: float) -> np.ndarray:
    """Extrinsics [4, 4]: camera at (forward, 0, height) in the ego frame, pitched down.

    A positive pitch tilts the optical axis below the horizon, so the horizon appears at
    v = cy - fy * tan(pitch).
    """
    p = math.radians(pitch_deg)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)],
                      [0.0, math.sin(p), math.cos(p)]])
    rot = rot_x @ _EGO_TO_CAM
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = -rot @ np.array([forward, 0.0, height])
    return out


def pose_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """world_from_ego [4, 4] for a planar pose (ego on the ground, z = 0)."""
    c, s = math.cos(yaw), math.sin(yaw)
    out = np.eye(4)
    out[:2, :2] = [[c, -s], [s, c]]
    out[0, 3], out[1, 3] = x, y
    return out


def transform(mat: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a [4, 4] rigid transform to points [..., 3]."""
    out = points @ mat[:3, :3].T
    out += mat[:3, 3]
    return out


def project(K: np.ndarray, points_cam: np.ndarray) -> np.ndarray:
    """Pinhole projection [..., 3] -> [..., 2]: u = fx X / Z + cx, v = fy Y / Z + cy."""
    # same operations in the same order as fx * X / Z + cx, but on both columns at once
    uv = points_cam[..., :2] * K.diagonal()[:2]
    uv /= points_cam[..., 2:3]
    uv += K[:2, 2]
    return uv


_CORNER_SX = np.array([-1, 1, 1, -1, -1, 1, 1, -1], dtype=np.float64) * 0.5
_CORNER_SY = np.array([-1, -1, 1, 1, -1, -1, 1, 1], dtype=np.float64) * 0.5
_CORNER_SZ = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64) * 0.5


def box_corners(centre: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Corners [N, 8, 3] of boxes with centre [N, 3], size (l, w, h) [N, 3], yaw [N].

    Bottom corners 0-3 then top corners 4-7, each ring: rear-right, front-right,
    front-left, rear-left.
    """
    lx = size[:, None, 0] * _CORNER_SX  # [N, 8] in the box frame
    ly = size[:, None, 1] * _CORNER_SY
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    out = np.empty(lx.shape + (3,))
    out[..., 0] = centre[:, None, 0] + c * lx - s * ly
    out[..., 1] = centre[:, None, 1] + s * lx + c * ly
    out[..., 2] = centre[:, None, 2] + size[:, None, 2] * _CORNER_SZ
    return out


def clip_box_to_near(corners_cam: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of each box that lie in front of the near plane [N, 20, 3] and their mask [N, 20].

    The visible part of a box is the convex hull of its corners with z >= near plus the
    points where its 12 edges cross z = near; projecting these gives the exact image
    extent of the box in front of the camera (a box straddling the camera does not blow
    up to infinity).
    """
    a = corners_cam[:, BOX_EDGES[:, 0]]  # [N, 12, 3]
    b = corners_cam[:, BOX_EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - near) * (zb - near) < 0
    denom = np.where(crosses, zb - za, 1.0)
    t = np.where(crosses, (near - za) / denom, 0.0)
    cross_pts = a + t[..., None] * (b - a)
    points = np.concatenate([corners_cam, cross_pts], axis=1)
    mask = np.concatenate([corners_cam[..., 2] >= near, crosses], axis=1)
    return points, mask


def project_clipped(K: np.ndarray, points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Project masked points [N, P, 3]; masked-out points become NaN."""
    safe = np.where(mask[..., None], points, np.array([0.0, 0.0, 1.0]))
    uv = project(K, safe)
    return np.where(mask[..., None], uv, np.nan)


def clip_polygon_to_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of one polygon [P, 3] (camera frame) against z >= near."""
    out = []
    n = len(poly)
    for i in range(n):
        cur, nxt = poly[i], poly[(i + 1) % n]
        cur_in, nxt_in = cur[2] >= near, nxt[2] >= near
        if cur_in:
            out.append(cur)
        if cur_in != nxt_in:
            t = (near - cur[2]) / (nxt[2] - cur[2])
            out.append(cur + t * (nxt - cur))
    return np.array(out).reshape(-1, 3)
