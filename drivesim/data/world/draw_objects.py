"""Vehicles and roadside objects as a depth-sorted display list (painter's algorithm).

Geometry is computed for all objects at once with numpy (box corners, back-face culling,
shading, projection); what remains per primitive is one OpenCV call. Each vehicle is a
few boxes in its own frame (x forward, z up): dark running gear, the body, a glass cabin
(cars), a cab and a cargo box (trucks), a window band (buses), plus tail/head lights that
glow at night. Faces are lit by a fixed sun by day and by the ego's low beams at night,
then fogged with distance (palette.shade_array).
"""

from __future__ import annotations

import math
from operator import itemgetter

import cv2
import numpy as np

from drivesim.data.labels import CLASS_IDS

from .camera import (
    BOX_FACE_NORMALS,
    BOX_FACES,
    box_corners,
    clip_polygon_to_near,
    project,
    transform,
)
from .palette import (
    BUS_COLOURS,
    CARGO_COLOURS,
    FACADE_COLOURS,
    TREE_COLOURS,
    VEHICLE_COLOURS,
    Palette,
    shade_array,
)
from .scene import Scene
from .scenery import BUILDING, LAMP, POLE, TREE, Objects

SHIFT = 4
_ONE = 1 << SHIFT
_SUN = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
_TAIL, _HEAD, _LAMP = np.array([255.0, 36, 28]), np.array([255.0, 250, 226]), np.array([255.0, 226, 160])
POLY, CIRCLE, LINE, POLYS = 0, 1, 2, 3
_VEHICLE, _CARGO, _BUS = (tuple(map(tuple, c.tolist())) for c in (VEHICLE_COLOURS, CARGO_COLOURS, BUS_COLOURS))
_TROUSERS = ((40, 44, 70), (30, 30, 32), (90, 80, 64), (70, 90, 120))
_SKIN = ((224, 180, 150), (180, 130, 96), (120, 80, 56))


def fixed(uv: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rint(uv * _ONE), dtype=np.int32)  # rint == round(decimals=0)


_depth_key, _seq_key = itemgetter(0), itemgetter(1)


def execute(img: np.ndarray, cmds: list) -> None:
    """Run draw commands far to near; each is (depth, seq, op, a, b, c)."""
    cmds.sort(key=_seq_key)                  # stable: equal depths keep seq order
    cmds.sort(key=_depth_key, reverse=True)  # far to near (reverse keeps stability)
    for _, _, op, a, b, c in cmds:
        if op == POLY:
            cv2.fillConvexPoly(img, a, b, cv2.LINE_AA, SHIFT)
        elif op == CIRCLE:
            cv2.circle(img, a, b, c, -1, cv2.LINE_AA, SHIFT)
        elif op == LINE:
            cv2.line(img, a[0], a[1], c, b, cv2.LINE_AA, SHIFT)
        else:
            cv2.fillPoly(img, a, b, cv2.LINE_8, SHIFT)


class ObjectPainter:
    def __init__(self, K: np.ndarray, near: float, pal: Palette, height: int, width: int) -> None:
        self.K, self.near, self.pal, self.h, self.w = K, near, pal, height, width
        self._static: tuple[Objects, dict[str, np.ndarray]] | None = None  # per-Objects arrays

    # ------------------------------------------------------------ boxes
    def boxes(self, cmds: list, cam_from_world: np.ndarray, corners_world: np.ndarray,
              yaw: np.ndarray, colours: np.ndarray, light: np.ndarray, dist: np.ndarray,
              depth: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """Emit the camera-facing faces of B boxes; returns the visible-face mask [B, 5].

        corners_world [B, 8, 3] (``box_corners``), yaw [B]; colours [B, 5, 3] base RGB per
        face (front, back, left, right, top); light, dist, depth, seq [B]: light multiplier,
        fog distance, painter depth and order key.
        """
        corners = transform(cam_from_world, corners_world)                  # [B, 8, 3]
        quads = corners[:, BOX_FACES]                                        # [B, 5, 4, 3]
        c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
        nx, ny = BOX_FACE_NORMALS[None, :, 0], BOX_FACE_NORMALS[None, :, 1]
        nz = np.broadcast_to(BOX_FACE_NORMALS[None, :, 2], (len(yaw), 5))
        normals_w = np.stack([c * nx - s * ny, s * nx + c * ny, nz], axis=-1)  # [B, 5, 3]
        normals_c = normals_w @ cam_from_world[:3, :3].T
        facing = (normals_c * quads.mean(axis=2)).sum(-1) < 0.0
        ahead = quads[..., 2] >= self.near                                   # [B, 5, 4]
        sun = 1.0 if self.pal.night else 0.62 + 0.38 * np.maximum(normals_w @ _SUN, 0.0)
        cols = shade_array(self.pal, colours, dist[:, None], light[:, None] * sun).tolist()
        uv = project(self.K, np.where(ahead[..., None], quads, np.array([0.0, 0.0, 1.0])))
        pts = fixed(uv)
        lo, hi = uv.min(axis=2), uv.max(axis=2)
        on_screen = (hi[..., 0] > 0) & (lo[..., 0] < self.w) & (hi[..., 1] > 0) & (lo[..., 1] < self.h)
        all_ahead = ahead.all(-1)
        draw = facing & ahead.any(-1) & (on_screen | ~all_ahead)
        depth_l, seq_l, all_ahead_l = depth.tolist(), seq.tolist(), all_ahead.tolist()
        bi, fi = np.nonzero(draw)
        for b, f in zip(bi.tolist(), fi.tolist()):
            if all_ahead_l[b][f]:
                poly = pts[b, f]
            else:
                clipped = clip_polygon_to_near(quads[b, f], self.near)
                if len(clipped) < 3:
                    continue
                poly = fixed(project(self.K, clipped))
            cmds.append((depth_l[b], seq_l[b], POLY, poly, cols[b][f], None))
        return draw

    def lights(self, cmds: list, points_cam: np.ndarray, radius_m: float, colours: np.ndarray,
               halo: float | np.ndarray, depth: np.ndarray, seq: np.ndarray) -> None:
        """Light sources [L]: a bright core and, where ``halo`` > 1, a dimmer glow that many
        times wider."""
        ok = points_cam[:, 2] > self.near
        if not ok.any():
            return
        uv = project(self.K, np.where(ok[:, None], points_cam, [0.0, 0.0, 1.0]))
        r = self.K[0, 0] * radius_m / np.maximum(points_cam[:, 2], self.near)
        centres = fixed(uv).tolist()
        halo = np.broadcast_to(np.asarray(halo, dtype=np.float64), r.shape)
        glow = np.asarray(colours * 0.45).astype(np.int64).tolist()  # int() truncates like astype
        core = np.asarray(colours).astype(np.int64).tolist()
        halo_l, r_l, depth_l, seq_l = halo.tolist(), r.tolist(), depth.tolist(), seq.tolist()
        for k in np.flatnonzero(ok).tolist():
            centre = tuple(centres[k])
            if halo_l[k] > 1.0:
                cmds.append((depth_l[k], seq_l[k], CIRCLE, centre, int(max(r_l[k] * halo_l[k], 1.5) * _ONE),
                             tuple(glow[k])))
            cmds.append((depth_l[k], seq_l[k] + 0.01, CIRCLE, centre, int(max(r_l[k], 0.7) * _ONE),
                         tuple(core[k])))

    # ------------------------------------------------------------ vehicles
    def vehicles(self, cmds: list, scene: Scene, which: np.ndarray) -> tuple | None:
        """Emit the lights of the vehicles ``which`` and return their part boxes as the
        arguments of ``boxes`` (drawn together with the buildings: one numpy pass)."""
        if not len(which):
            return None
        pal = self.pal
        cam_x, cam_y = np.linalg.inv(scene.cam_from_world)[:2, 3].tolist()
        rows, cols, lights = [], [], []
        for i, (x, y, _, ln, wd, ht, yaw), cls, tint, depth in zip(
                which.tolist(), scene.boxes3d[which].tolist(), scene.classes[which].tolist(),
                scene.tints[which].tolist(), scene.distance[which].tolist()):
            fx, fy = math.cos(yaw), math.sin(yaw)
            along = (cam_x - x) * fx + (cam_y - y) * fy  # camera ahead (+) or behind (-) the vehicle
            for k, (dx, z0, z1, pl, pw, part_cols) in enumerate(_parts(cls, tint, ln, wd, ht, along, pal)):
                rows.append((x + fx * dx, y + fy * dx, 0.5 * (z0 + z1), pl, pw, z1 - z0, yaw, depth, k, i))
                cols.append(part_cols)
            if cls == CLASS_IDS["pedestrian"]:
                continue  # no lights
            zl = 0.62 * min(ht, 1.6) if ht < 2.0 else 0.9
            for sign, show in ((-1.0, along < -0.5 * ln), (1.0, along > 0.5 * ln)):
                if show:
                    for side in (-1.0, 1.0):
                        a, b = sign * (0.5 * ln + 0.03), side * (0.5 * wd - 0.25)
                        lights.append((x + fx * a - fy * b, y + fy * a + fx * b, zl, sign, depth))
        arr = np.array(rows)
        light = _night_light(scene)[arr[:, 9].astype(int)] if pal.night else np.ones(len(arr))
        batch = (box_corners(arr[:, 0:3], arr[:, 3:6], arr[:, 6]), arr[:, 6], np.array(cols, dtype=np.float64), light,
                 arr[:, 7], arr[:, 7], arr[:, 8])
        if lights:
            la = np.array(lights)
            pc = transform(scene.cam_from_world, la[:, 0:3])
            tail = la[:, 3] < 0
            base = np.where(tail[:, None], _TAIL, _HEAD)
            if pal.night:
                self.lights(cmds, pc, 0.13, base, np.where(tail, 3.2, 4.5), la[:, 4], np.full(len(la), 9.0))
            else:
                cols = shade_array(pal, base * np.where(tail, 0.78, 0.95)[:, None], la[:, 4], 1.0)
                self.lights(cmds, pc, 0.11, cols, 0.0, la[:, 4], np.full(len(la), 9.0))
        return batch

    # ------------------------------------------------------------ roadside
    def roadside(self, cmds: list, scene: Scene, which: np.ndarray, seed: int,
                 vehicle_boxes: tuple | None = None) -> None:
        """Buildings (plus ``vehicle_boxes`` in the same pass), trees, poles and lamps."""
        obj = scene.objects
        depth = np.linalg.norm(scene.obj_centre_cam, axis=-1)
        b = which[obj.kind[which] == BUILDING]
        batch = [scene.obj_corners_world[b], scene.obj_yaw[b], self._facades(obj)[b],
                 np.ones(len(b)), depth[b], depth[b], np.zeros(len(b))]
        if vehicle_boxes is not None:
            batch = [np.concatenate([x, y]) for x, y in zip(batch, vehicle_boxes)]
        if len(batch[0]):
            drawn = self.boxes(cmds, scene.cam_from_world, *batch)
            self._windows(cmds, scene, b, drawn[:len(b)], depth[b], seed)
        kind = obj.kind[which]
        self._trees_and_poles(cmds, scene, which[kind == TREE], which[(kind == POLE) | (kind == LAMP)], depth)

    def lines(self, cmds: list, a_cam: np.ndarray, b_cam: np.ndarray, width_m: float | np.ndarray,
              colours: list, depth: np.ndarray, seq: float) -> None:
        """Segments [n] between camera points, as thick as ``width_m`` (scalar or [n]) at
        their nearer end."""
        ok = (a_cam[:, 2] >= self.near) & (b_cam[:, 2] >= self.near)
        if not ok.any():
            return
        uv = fixed(project(self.K, np.stack([a_cam, b_cam], axis=1)[ok])).tolist()  # [m, 2, 2]
        width = np.broadcast_to(np.asarray(width_m, dtype=np.float64), ok.shape)[ok]
        t = np.clip(np.round(self.K[0, 0] * width / np.minimum(a_cam[ok, 2], b_cam[ok, 2])), 1, 64)
        depth_l = depth.tolist()
        for (p, q), w, j in zip(uv, t.astype(np.int64).tolist(), np.flatnonzero(ok).tolist()):
            cmds.append((depth_l[j], seq, LINE, (tuple(p), tuple(q)), w, colours[j]))

    def _trees_and_poles(self, cmds: list, scene: Scene, trees: np.ndarray, poles: np.ndarray,
                         depth: np.ndarray) -> None:
        """Trees (trunk and crown), utility poles (with a cross bar) and street lights (arm
        over the road, lamp head) in one pass: one transform, one shading and one line pass
        for trunks and poles."""
        if not len(trees) and not len(poles):
            return
        n, pal = len(trees), self.pal
        c_w, h = scene.obj_centre_world[trees], scene.objects.size[trees, 2]
        heights = np.stack([0 * h, 0.6 * h, h], -1)                                     # [n, 3]
        tree_pts = np.concatenate([np.repeat(c_w[:, None, :2], 3, 1), heights[..., None]], -1)
        pole_pts, lamp = self._pole_points(scene, poles)                                # [m, 5, 3]
        cam = transform(scene.cam_from_world, np.concatenate([tree_pts.reshape(-1, 3), pole_pts.reshape(-1, 3)]))
        cam_t, cam_p = cam[:3 * n].reshape(n, 3, 3), cam[3 * n:].reshape(-1, 5, 3)  # ground, trunk top, top
        d = depth[np.concatenate([trees, poles])]
        base = np.concatenate([np.repeat(np.array(pal.trunk, np.float64)[None], n, 0),
                               np.repeat(np.array(pal.pole, np.float64)[None], len(poles), 0)])
        colours = [tuple(c) for c in shade_array(pal, base, d, 1.0).tolist()]
        width = np.concatenate([np.full(n, 0.3), np.full(len(poles), 0.22)])
        self.lines(cmds, np.concatenate([cam_t[:, 0], cam_p[:, 0]]), np.concatenate([cam_t[:, 1], cam_p[:, 1]]),
                   width, colours, d, 0)
        if n:
            self._crowns(cmds, scene, trees, cam_t[:, 2], d[:n])
        if len(poles):
            self.lines(cmds, cam_p[:, 2], cam_p[:, 3], 0.13, colours[n:], d[n:], 1)
            self._lamp_heads(cmds, cam_p[lamp, 4], d[n:][lamp])

    def _crowns(self, cmds: list, scene: Scene, idx: np.ndarray, top_cam: np.ndarray, d: np.ndarray) -> None:
        """Tree crowns: a tall triangle (conifers) or a disc, around the object centre."""
        obj = scene.objects
        r, tint = 0.5 * obj.size[idx, 1], obj.tint[idx]
        crown = scene.obj_centre_cam[idx]
        ok = crown[:, 2] >= self.near + r
        z = np.where(ok, crown[:, 2], 1.0)
        uv = project(self.K, np.where(ok[:, None], crown, [0.0, 0.0, 1.0]))
        top = project(self.K, np.where(ok[:, None], top_cam, [0.0, 0.0, 1.0]))
        rp = self.K[0, 0] * r / z
        tri = fixed(np.stack([top, uv + np.stack([-rp, 1.6 * rp], -1), uv + np.stack([rp, 1.6 * rp], -1)], 1))
        centres, radii = fixed(uv).tolist(), (np.maximum(rp, 0.6) * _ONE).astype(int).tolist()
        crown_col = shade_array(self.pal, TREE_COLOURS[(tint * 97).astype(int) % len(TREE_COLOURS)], d, 1.0).tolist()
        d_l, conifer = d.tolist(), (tint < 0.3).tolist()
        for k in np.flatnonzero(ok).tolist():
            if conifer[k]:  # a tall triangle
                cmds.append((d_l[k], 1, POLY, tri[k], tuple(crown_col[k]), None))
            else:
                cmds.append((d_l[k], 1, CIRCLE, tuple(centres[k]), radii[k], tuple(crown_col[k])))

    @staticmethod
    def _pole_points(scene: Scene, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [m, 5, 3] of poles/lamps (ground, top, bar or arm ends, lamp head)
        and the street-light mask [m]."""
        obj = scene.objects
        c_w, h, yaw = scene.obj_centre_world[idx], obj.size[idx, 2], scene.obj_yaw[idx]
        across = np.stack([-np.sin(yaw), np.cos(yaw), 0 * yaw], -1)
        ground = np.stack([c_w[:, 0], c_w[:, 1], 0 * h], -1)
        top = ground + np.stack([0 * h, 0 * h, h], -1)
        lamp = obj.kind[idx] == LAMP
        head = top - (np.sign(obj.d[idx])[:, None] * across * 2.2)
        down = np.array([0.0, 0.0, 0.6])
        a = np.where(lamp[:, None], top, top - 0.9 * across - down)  # arm or cross bar
        b = np.where(lamp[:, None], head, top + 0.9 * across - down)
        return np.stack([ground, top, a, b, head - 0.25 * down], 1), lamp

    def _lamp_heads(self, cmds: list, head_cam: np.ndarray, d: np.ndarray) -> None:
        if not len(d):
            return
        if self.pal.night:
            glow = np.repeat(_LAMP[None], len(d), 0)
        else:
            glow = shade_array(self.pal, np.array([[200.0, 200, 190]]), d, 1.0).astype(np.float64)
        self.lights(cmds, head_cam, 0.3 if self.pal.night else 0.22, glow, 3.0 if self.pal.night else 0.0,
                    d, np.full(len(d), 2.0))

    def _windows(self, cmds: list, scene: Scene, b: np.ndarray, drawn: np.ndarray, depth: np.ndarray,
                 seed: int) -> None:
        """Windows on the visible facades of buildings ``b``: a 3 m grid placed bilinearly on
        each projected facade (all faces at once), one fill command per facade."""
        obj = scene.objects
        near_b = depth < 70.0
        faces = np.argwhere(drawn[:, :4] & near_b[:, None])  # [F, 2] (building row, face)
        if not len(faces):
            return
        rows, f = faces[:, 0], faces[:, 1]
        j = b[rows]
        corners = transform(scene.cam_from_world, scene.obj_corners_world[j])
        quad = corners[np.arange(len(j))[:, None], BOX_FACES[f]]              # [F, 4, 3]
        ok = (quad[..., 2] >= self.near).all(axis=1)
        q = project(self.K, np.where(ok[:, None, None], quad, [0.0, 0.0, 1.0]))  # [F, 4, 2]
        ok &= (np.ptp(q[..., 0], axis=1) >= 12) & (np.ptp(q[..., 1], axis=1) >= 10)
        if not ok.any():
            return
        grid = self._window_layout(obj, seed)
        polys = _window_grid(q, grid["nx"][j, f], grid["ny"][j])  # [F, floors, cols, 4, 2]
        day_col = tuple(shade_array(self.pal, np.array(self.pal.glass)[None], depth[rows], 1.3).tolist())
        face_depth = depth[rows].tolist()
        # an [m, 4, 2] int32 array is a list of m quads to cv2.fillPoly (no per-quad views)
        if self.pal.night:
            dark, bright = grid["dark"][j, f], grid["bright"][j, f]
            has_dark, has_bright = grid["has_dark"][j, f].tolist(), grid["has_bright"][j, f].tolist()
            for k in np.flatnonzero(ok).tolist():
                if has_dark[k]:
                    cmds.append((face_depth[k], 0.5, POLYS, polys[k][dark[k]], (14, 15, 20), None))
                if has_bright[k]:
                    cmds.append((face_depth[k], 0.5, POLYS, polys[k][bright[k]], (250, 204, 120), None))
        else:
            mask = grid["mask"][j, f]
            for k in np.flatnonzero(ok).tolist():
                cmds.append((face_depth[k], 0.5, POLYS, polys[k][mask[k]], tuple(day_col[k]), None))


    def _window_layout(self, obj: Objects, seed: int) -> dict[str, np.ndarray]:
        """Window grid of every object as a building, per wall face (front, back, left,
        right): columns ``nx`` [N, 4], floors ``ny`` [N], ``mask`` [N, 4, floors, cols] of the
        windows that exist and, at night, which are ``dark`` or ``bright`` (a stable
        pseudo-random third is lit, a hash of place) and whether a face has any of each."""
        store = self._store(obj)
        if "mask" in store:
            return store
        f = np.arange(4)[None, :]
        span = np.where(f < 2, obj.size[:, 1:2], obj.size[:, 0:1])  # front/back faces span the width
        nx = np.clip((span / 3.2).astype(int), 1, _MAX_COLS)
        ny = np.clip((obj.size[:, 2] / 3.2).astype(int), 1, _MAX_FLOORS)
        mask = (np.arange(_MAX_FLOORS)[:, None] < ny[:, None, None, None]) & (
            np.arange(_MAX_COLS) < nx[..., None, None])
        store.update(nx=nx, ny=ny, mask=mask)
        if self.pal.night:
            key = (obj.s[:, None] * 12.9898 + obj.d[:, None] * 78.233 + f * 37.719 + seed * 0.618)[..., None, None]
            key = key + np.arange(_MAX_FLOORS)[:, None] * 4.581 + np.arange(_MAX_COLS) * 9.173
            lit = np.modf(np.abs(np.sin(key)) * 43758.5453)[0] < 0.35
            dark, bright = mask & ~lit, mask & lit
            store.update(dark=dark, bright=bright, has_dark=dark.any(axis=(2, 3)), has_bright=bright.any(axis=(2, 3)))
        return store

    def _facades(self, obj: Objects) -> np.ndarray:
        """Base face colours [N, 5, 3] of every object as a building (walls, darker roof)."""
        store = self._store(obj)
        if "facade" not in store:
            facade = FACADE_COLOURS[(obj.tint * 61).astype(int) % len(FACADE_COLOURS)]
            cols = np.concatenate([np.repeat(facade[:, None], 4, 1), 0.7 * facade[:, None]], axis=1)
            store["facade"] = cols.reshape(-1, 5, 3)
        return store["facade"]

    def _store(self, obj: Objects) -> dict[str, np.ndarray]:
        """Arrays derived from ``obj`` alone. Objects never move and Scenery hands out the same
        ``Objects`` while the same cells are in range, so they are computed once per set."""
        if self._static is None or self._static[0] is not obj:
            self._static = (obj, {})
        return self._static[1]


_MAX_COLS, _MAX_FLOORS = 5, 9


def _window_grid(q: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """Fixed-point window quads [F, floors, cols, 4, 2] on projected facades q [F, 4, 2]."""
    a, b, c, d = (q[:, None, None, None, k] for k in range(4))             # [F, 1, 1, 1, 2]
    col = np.arange(_MAX_COLS)[None, :, None] + np.array([0.28, 0.72, 0.72, 0.28])  # [1, cols, 4]
    row = np.arange(_MAX_FLOORS)[None, :, None] + np.array([0.3, 0.3, 0.75, 0.75])  # [1, floors, 4]
    sx = (col / nx[:, None, None])[:, None, :, :, None]                     # [F, 1, cols, 4, 1]
    sy = (row / ny[:, None, None])[:, :, None, :, None]                     # [F, floors, 1, 4, 1]
    bottom = a + sx * (b - a)
    top = d + sx * (c - d)
    return fixed(bottom + sy * (top - bottom))


def _parts(cls: int, tint: int, ln: float, wd: float, ht: float, along: float, pal: Palette) -> list:
    """Boxes of one vehicle: (offset along heading, z bottom, z top, length, width, 5 colours)."""
    glass = pal.glass
    if cls == CLASS_IDS["pedestrian"]:  # legs, torso, head
        shirt = _VEHICLE[tint % len(_VEHICLE)]
        legs, skin = _TROUSERS[tint % len(_TROUSERS)], _SKIN[(tint // 5) % len(_SKIN)]
        return [(0.0, 0.0, 0.48 * ht, 0.3, 0.36, [legs] * 5),
                (0.0, 0.48 * ht, 0.84 * ht, ln, wd, [shirt] * 5),
                (0.0, 0.85 * ht, ht, 0.22, 0.2, [skin] * 5)]
    gear = (0.0, 0.05, 0.42, 0.84 * ln, 0.96 * wd, [pal.tyre] * 5)
    if cls == CLASS_IDS["car"]:
        body = _VEHICLE[tint % len(_VEHICLE)]
        return [gear, (0.0, 0.3, 0.6 * ht, ln, wd, [body] * 5),
                (-0.06 * ln, 0.6 * ht, ht, 0.5 * ln, 0.84 * wd, [glass] * 4 + [body])]
    if cls == CLASS_IDS["truck"]:
        cab = _VEHICLE[tint % len(_VEHICLE)]
        cargo = _CARGO[(tint // 7) % len(_CARGO)]
        front = [(0.5 * ln - 1.15, 0.35, 0.5 * ht, 2.3, wd, [cab] * 5),
                 (0.5 * ln - 1.15, 0.5 * ht, 0.78 * ht, 2.32, wd * 0.98, [glass] * 4 + [cab])]
        box = [(-1.25, 0.4, ht, ln - 2.5, wd, [cargo] * 5)]
        # painter's order inside the truck: the part nearer the camera last
        return [gear] + (front + box if along < 0 else box + front)
    body = _BUS[tint % len(_BUS)]
    return [gear, (0.0, 0.3, ht, ln, wd, [body] * 5),
            (0.0, 0.5 * ht, 0.82 * ht, ln + 0.04, wd + 0.04, [glass] * 4 + [body])]


def _night_light(scene: Scene) -> np.ndarray:
    """Ego low beams light vehicles ahead: brighter when near and near the image centre [N]."""
    c = transform(scene.cam_from_world, scene.boxes3d[:, :3])
    z = np.maximum(c[:, 2], 1e-3)
    off = np.abs(c[:, 0]) / (0.32 * z + 1.3)
    return np.where(c[:, 2] > 0, 1.0 + 2.5 * np.exp(-off * off) * np.exp(-z / 30.0), 1.0)
