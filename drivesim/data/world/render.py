"""Frame renderer: backdrop, road surface and markings, then objects far to near (painter's).

All geometry goes through the same pinhole camera as the labels. Road surfaces are a
handful of polygons built from centreline samples (dense near the camera, sparse far
away), lane dashes are placed at fixed arc lengths so they stream past as the ego drives,
and each polygon is filled once with OpenCV; no per-pixel Python runs per frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .backdrop import Backdrop
from .camera import box_corners, clip_polygon_to_near, project, transform
from .config import WorldConfig
from .draw_objects import SHIFT, ObjectPainter, execute, fixed
from .palette import make_palette
from .road import LaneLayout, Road
from .scene import Scene
from .scenery import LAMP

_S_AHEAD = np.concatenate([np.arange(0.6, 20.0, 1.0), np.arange(20.0, 60.0, 2.5),
                           np.arange(60.0, 200.0, 7.0), [200.0]])
_MARK_W = 0.2       # painted line width (m), a little wide so lines survive low resolutions
_DASH, _PERIOD = 3.0, 12.0
_ASPHALT_MARGIN, _SHOULDER_W = 0.5, 1.6


class Renderer:
    def __init__(self, cfg: WorldConfig, K: np.ndarray, cam_from_ego: np.ndarray, road: Road,
                 layout: LaneLayout) -> None:
        self.cfg, self.K, self.road, self.layout = cfg, K, road, layout
        self.near = cfg.near
        self.pal = make_palette(cfg.night, cfg.weather)
        self.backdrop = Backdrop(cfg.height, cfg.width, K, cam_from_ego, self.pal, cfg.weather, cfg.seed)
        self.painter = ObjectPainter(K, cfg.near, self.pal, cfg.height, cfg.width)
        self.tan_half = (cfg.width / 2.0) / K[0, 0]
        marks = layout.markings()
        self.solid = [(d, c) for d, style, c in marks if style == "solid"]
        self.dashed = [d for d, style, _ in marks if style == "dashed"]
        r, left = layout.right_edge, layout.left_edge
        self.strips = [  # (d_lo, d_hi, colour), drawn in order
            (r - _ASPHALT_MARGIN - _SHOULDER_W, r - _ASPHALT_MARGIN, self.pal.shoulder),
            (left + _ASPHALT_MARGIN, left + _ASPHALT_MARGIN + _SHOULDER_W, self.pal.shoulder),
            (r - _ASPHALT_MARGIN, left + _ASPHALT_MARGIN, self.pal.asphalt),
        ]
        # per-frame constants of the road pass
        offsets = [v for lo, hi, _ in self.strips for v in (lo, hi)]
        offsets += [v for d, _ in self.solid for v in (d - _MARK_W / 2, d + _MARK_W / 2)]
        self._offsets = np.array(offsets)
        n_strip = len(self.strips)
        pairs = [(2 * k, 2 * k + 1) for k in range(n_strip + len(self.solid))]
        self._strip_pairs, self._mark_pairs = pairs[:n_strip], pairs[n_strip:]
        self._all_rows, self._mark_rows = np.ones(len(_S_AHEAD), dtype=bool), _S_AHEAD <= 130.0
        self._strip_colours = [tuple(int(c) for c in colour) for _, _, colour in self.strips]
        self._white, self._yellow = (tuple(int(c) for c in self.pal.white), tuple(int(c) for c in self.pal.yellow))
        self._dash_offs = np.array([v for d in self.dashed for v in (d - _MARK_W / 2, d + _MARK_W / 2)])

    def render(self, scene: Scene, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3] of ``scene``; ``index`` picks the rain layer."""
        yaw = math.atan2(scene.world_from_ego[1, 0], scene.world_from_ego[0, 0])
        img = self.backdrop.base(yaw)
        self._road(img, scene)
        self.backdrop.apply_ground_fog(img)
        if self.backdrop.glow is not None:
            cv2.add(img, self.backdrop.glow, dst=img)
        cmds: list = []
        vehicle_boxes = self.painter.vehicles(cmds, scene, self._vehicles_in_view(scene))
        self.painter.roadside(cmds, scene, self._roadside_in_view(scene), self.cfg.seed, vehicle_boxes)
        execute(img, cmds)
        if self.backdrop.rain is not None:
            cv2.add(img, self.backdrop.rain[index % len(self.backdrop.rain)], dst=img)
        return img

    def _roadside_in_view(self, scene: Scene) -> np.ndarray:
        """Objects that can reach into the view frustum, within 140 m."""
        c = scene.obj_centre_cam
        reach = scene.objects.reach()
        ok = (c[:, 2] > -reach) & (np.abs(c[:, 0]) < c[:, 2] * self.tan_half + reach) & (c[:, 2] < 140.0)
        return np.flatnonzero(ok)

    def _vehicles_in_view(self, scene: Scene) -> np.ndarray:
        valid, lo, hi = scene.hull_valid, scene.hull_lo, scene.hull_hi
        ok = valid & (hi[:, 0] > 0) & (lo[:, 0] < self.cfg.width) & (hi[:, 1] > 0) & (lo[:, 1] < self.cfg.height)
        return np.flatnonzero(ok)

    # ------------------------------------------------------------------ road
    def _ground_points(self, scene: Scene, s: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Camera-frame points [S, D, 3] of the road surface at arc lengths s and offsets d."""
        x, y, th = self.road.pose(s)
        px = x[:, None] - np.sin(th)[:, None] * offsets[None, :]
        py = y[:, None] + np.cos(th)[:, None] * offsets[None, :]
        pts = np.stack([px, py, np.zeros_like(px)], axis=-1)
        return transform(scene.cam_from_world, pts)

    def _project_ground(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """In-front mask [S, D] and fixed-point image points [S, D, 2] of pts [S, D, 3]."""
        ok = pts[..., 2] >= self.near
        return ok, fixed(project(self.K, np.where(ok[..., None], pts, [0.0, 0.0, 1.0])))

    @staticmethod
    def _strips(ok: np.ndarray, uv: np.ndarray, pairs: list[tuple[int, int]], rows: np.ndarray) -> list:
        """Polygons between offset columns (i, j) over sample ``rows``, keeping rows in front
        of the near plane (``ok``); None where fewer than two rows remain. uv [S, D, 2]."""
        out = []
        for i, j in pairs:
            keep = ok[:, i] & ok[:, j] & rows
            if np.count_nonzero(keep) < 2:
                out.append(None)
            else:
                out.append(np.ascontiguousarray(np.concatenate([uv[keep, i], uv[keep, j][::-1]])))
        return out

    def _road(self, img: np.ndarray, scene: Scene) -> None:
        """Shoulders, asphalt, (night) lamp pools, painted lines, (day) contact shadows."""
        s = scene.ego_s + _S_AHEAD
        pts = self._ground_points(scene, s, self._offsets)
        n_strip = len(self.strips)
        ok, uv = self._project_ground(pts)
        polys = self._strips(ok, uv, self._strip_pairs, self._all_rows)
        polys += self._strips(ok, uv, self._mark_pairs, self._mark_rows)
        by_colour: dict[tuple, list] = {}
        for colour, poly in zip(self._strip_colours, polys[:n_strip]):
            if poly is not None:
                by_colour.setdefault(colour, []).append(poly)
        for colour, group in by_colour.items():
            cv2.fillPoly(img, group, colour, cv2.LINE_AA, SHIFT)
        if self.pal.night:
            self._lamp_pools(img, scene)
        white, yellow = self._dashes(scene), []
        for (_, colour), poly in zip(self.solid, polys[n_strip:]):
            if poly is not None:
                (yellow if colour == "yellow" else white).append(poly)
        for polys, colour in ((white, self._white), (yellow, self._yellow)):
            if polys:
                cv2.fillPoly(img, polys, colour, cv2.LINE_AA, SHIFT)
        if not self.pal.night:
            self._shadows(img, scene)

    def _ground_polys(self, polys_cam: np.ndarray) -> list[np.ndarray]:
        """Fixed-point image polygons of camera-space ground polygons [Q, P, 3], near-clipped."""
        ahead = polys_cam[..., 2] >= self.near
        full = ahead.all(axis=1)
        out = list(fixed(project(self.K, polys_cam[full])))
        for poly in polys_cam[ahead.any(axis=1) & ~full]:  # straddling the near plane
            out.append(fixed(project(self.K, clip_polygon_to_near(poly, self.near))))
        return out

    def _dashes(self, scene: Scene) -> list[np.ndarray]:
        """Dashed lane lines: 3 m dashes every 12 m of absolute arc length (they stream past)."""
        if not self.dashed:
            return []
        first = math.floor((scene.ego_s - _DASH) / _PERIOD)
        starts = (first + np.arange(int(120.0 / _PERIOD) + 2)) * _PERIOD
        s = np.stack([starts, starts + _DASH], axis=1).ravel()          # [2K]
        pts = self._ground_points(scene, s, self._dash_offs).reshape(len(starts), 2, len(self.dashed), 2, 3)
        # quad corners: (start, left), (end, left), (end, right), (start, right) -> [K, M, 4, 3]
        quads = np.stack([pts[:, 0, :, 0], pts[:, 1, :, 0], pts[:, 1, :, 1], pts[:, 0, :, 1]], axis=2)
        return self._ground_polys(quads.reshape(-1, 4, 3))

    def _shadows(self, img: np.ndarray, scene: Scene) -> None:
        """Contact shadows under vehicles (day): a darker footprint on the road."""
        if not len(scene.boxes3d):
            return
        b = scene.boxes3d
        size = b[:, 3:6] + np.array([0.3, 0.3, 0.0])
        corners = box_corners(np.concatenate([b[:, :2], np.zeros((len(b), 1))], 1), size, b[:, 6])[:, :4]
        corners[..., 2] = 0.0
        polys = self._ground_polys(transform(scene.cam_from_world, corners))
        if polys:
            cv2.fillPoly(img, polys, tuple(int(0.45 * c) for c in self.pal.asphalt), cv2.LINE_AA, SHIFT)

    def _lamp_pools(self, img: np.ndarray, scene: Scene) -> None:
        """Warm pools of light on the road under street lights (night), one fill for all."""
        obj = scene.objects
        j = np.flatnonzero(obj.kind == LAMP)
        if not len(j):
            return
        yaw = scene.obj_yaw[j]
        towards = -np.sign(obj.d[j])[:, None] * np.stack([-np.sin(yaw), np.cos(yaw)], -1)  # [L, 2]
        centre = scene.obj_centre_world[j, :2] + 2.2 * towards
        ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
        ring = np.stack([np.cos(ang), np.sin(ang)], -1) * 4.0                          # [12, 2]
        pts = np.concatenate([centre[:, None, :] + ring, np.zeros((len(j), 12, 1))], -1)  # [L, 12, 3]
        polys = self._ground_polys(transform(scene.cam_from_world, pts))
        if polys:
            colour = tuple(int(min(255, 1.3 * c + d)) for c, d in zip(self.pal.asphalt, (22, 18, 8)))
            cv2.fillPoly(img, polys, colour, cv2.LINE_AA, SHIFT)
