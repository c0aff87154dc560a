"""Precomputed image layers: sky and terrain, distant hills, ground fog, headlight glow, rain.

Everything here depends only on the camera, the palette and the seed, so it is computed
once per world; per frame the renderer copies, slices (hills pan with the ego's yaw) or
adds (glow, rain) these layers, which keeps rendering free of per-pixel Python work.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .palette import Palette, fog_factor


class Backdrop:
    def __init__(self, height: int, width: int, K: np.ndarray, cam_from_ego: np.ndarray,
                 pal: Palette, weather: str, seed: int) -> None:
        self.h, self.w, self.pal = height, width, pal
        self.f = float(K[0, 0])
        rot = cam_from_ego[:3, :3]
        cam_pos = -rot.T @ cam_from_ego[:3, 3]
        # horizon: the image row of the direction (1, 0, 0) in the ego frame
        fwd = rot @ np.array([1.0, 0.0, 0.0])
        self.horizon = float(K[1, 1] * fwd[1] / fwd[2] + K[1, 2])
        rows = np.arange(height) + 0.5
        self.ground_rows = rows > self.horizon
        self.first_ground = int(np.argmax(self.ground_rows)) if self.ground_rows.any() else height
        self.ground_dist = self._ground_distance(K, rot, cam_pos[2], rows)
        self.sky = self._sky(rows, seed)
        self.pano = self._hills(seed)
        self.pano_rows = (max(self.first_ground - self.pano.shape[0], 0), self.first_ground)
        fog = fog_factor(pal, self.ground_dist)[self.first_ground:]
        self.fog_a = np.round(256 * (1.0 - fog)).astype(np.uint16)[:, None, None]
        self.fog_b = np.round(256 * fog[:, None] * np.array(pal.fog)).astype(np.uint16)[:, None, :]
        self._fog_buf: np.ndarray | None = None
        self.glow = self._headlight_glow(K, rot, cam_pos) if pal.night else None
        self.rain = self._rain_layers(seed) if weather == "rain" else None

    def _ground_distance(self, K: np.ndarray, rot: np.ndarray, cam_h: float, rows: np.ndarray) -> np.ndarray:
        """Distance from the camera to the road seen along the centre column of each row."""
        ray_cam = np.stack([np.zeros_like(rows), (rows - K[1, 2]) / K[1, 1], np.ones_like(rows)], -1)
        ray_ego = ray_cam @ rot  # rot.T applied to each row vector
        down = -ray_ego[:, 2]
        t = np.where(down > 1e-6, cam_h / np.maximum(down, 1e-6), np.inf)
        return t * np.linalg.norm(ray_ego, axis=-1)

    def _sky(self, rows: np.ndarray, seed: int) -> np.ndarray:
        pal, h, w = self.pal, self.h, self.w
        t = np.clip((self.horizon - rows) / max(self.horizon, 1.0), 0.0, 1.0) ** 0.6  # 0 at horizon
        sky = (1 - t)[:, None] * np.array(pal.fog) + t[:, None] * np.array(pal.sky_top)
        img = np.repeat(sky[:, None, :], w, axis=1)
        img[self.ground_rows] = pal.ground
        if pal.night and pal.fog_distance > 200:  # a few stars on clear nights
            rng = np.random.default_rng([seed, 0x57A2])
            n = int(h * w / 400)
            ys = rng.integers(0, max(self.first_ground - 4, 1), n)
            xs = rng.integers(0, w, n)
            img[ys, xs] = rng.uniform(70, 170, (n, 1))
        return np.clip(img, 0, 255).astype(np.uint8)

    def _hills(self, seed: int) -> np.ndarray:
        """A 360-degree strip of distant hills/tree line above the horizon, sliced by yaw."""
        rng = np.random.default_rng([seed, 0x4111])
        width = max(int(round(2 * math.pi * self.f)), self.w + 1)
        az = np.arange(width) / width * 2 * math.pi
        prof = np.full(width, 0.012)
        for k, amp in ((1, 0.012), (2, 0.010), (5, 0.006), (11, 0.004), (37, 0.0025), (91, 0.0015)):
            prof += amp * (1 + np.sin(k * az + rng.uniform(0, 2 * math.pi)))
        heights = np.tan(prof) * self.f  # pixels above the horizon
        band = max(int(math.ceil(heights.max())) + 1, 1)
        band = min(band, self.first_ground)
        strip = np.repeat(self.sky[self.first_ground - band:self.first_ground][:, None, 0, :], width, axis=1)
        top = self.first_ground - heights  # rows (absolute) where the hill starts
        rows_abs = np.arange(self.first_ground - band, self.first_ground)[:, None] + 0.5
        hill = rows_abs >= top[None, :]
        f = float(fog_factor(self.pal, 600.0))  # the hills are far: mostly fog colour
        colour = (1 - f) * np.array(self.pal.hills) + f * np.array(self.pal.fog)
        strip[hill] = colour.astype(np.uint8)
        return np.concatenate([strip, strip[:, : self.w]], axis=1)

    def base(self, yaw: float) -> np.ndarray:
        """A fresh frame: sky, hills at the ego's yaw, bare terrain."""
        img = self.sky.copy()
        r0, r1 = self.pano_rows
        if r1 > r0:
            period = self.pano.shape[1] - self.w
            # a direction at azimuth a shows at column cx - f (a - yaw): the strip runs with -a
            start = int(round((-yaw / (2 * math.pi)) * period - self.w / 2.0)) % period
            img[r0:r1] = self.pano[-(r1 - r0):, start:start + self.w]
        return img

    def apply_ground_fog(self, img: np.ndarray) -> None:
        """Blend terrain rows towards the fog colour by their ground distance (in place)."""
        g = img[self.first_ground:]
        if self._fog_buf is None or self._fog_buf.shape != g.shape:
            self._fog_buf = np.empty(g.shape, np.uint16)
        buf = self._fog_buf  # (g * a + b) >> 8 in uint16, without temporaries
        np.multiply(g, self.fog_a, out=buf)
        buf += self.fog_b
        buf >>= 8
        np.copyto(g, buf, casting="unsafe")

    def _headlight_glow(self, K: np.ndarray, rot: np.ndarray, cam_pos: np.ndarray) -> np.ndarray:
        """Additive light of the ego's low beams on the road ahead (night)."""
        v, u = np.mgrid[0:self.h, 0:self.w] + 0.5
        ray = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ rot
        down = -ray[..., 2]
        t = np.where(down > 1e-6, cam_pos[2] / np.maximum(down, 1e-6), 0.0)
        x, y = cam_pos[0] + t * ray[..., 0], t * ray[..., 1]
        beam = np.exp(-((y / (0.25 * x + 1.0)) ** 2)) * np.exp(-x / 30.0) * (x > 1.5)
        glow = 80.0 * beam[..., None] * np.array([1.0, 0.95, 0.78])
        return np.clip(glow, 0, 255).astype(np.uint8)

    def _rain_layers(self, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 0x4A17])
        layers = []
        length = max(int(0.07 * self.h), 2)
        level = 30 if self.pal.night else 45
        for _ in range(4):
            layer = np.zeros((self.h, self.w, 3), np.uint8)
            for _ in range(int(self.h * self.w / 420)):
                x, y = int(rng.integers(0, self.w)), int(rng.integers(-length, self.h))
                cv2.line(layer, (x, y), (x - length // 4, y + length), (level,) * 3, 1)
            layers.append(layer)
        return layers
