"""Roadside objects: trees, utility poles, street lights and buildings.

Objects are generated per 10 m cell of road from a generator seeded by (seed, cell), so a
cell looks the same whenever it is visited and generation never depends on the order in
which cells are asked for. What a cell holds depends on the road's zone (rural: trees and
poles; suburban: houses, trees and street lights; urban: a continuous facade of taller
buildings and street lights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .camera import box_corners
from .road import LaneLayout, Road

CELL = 10.0
TREE, POLE, LAMP, BUILDING = 0, 1, 2, 3
_SHOULDER = 1.6  # metres of shoulder beyond each edge line


@dataclass
class Objects:
    """Roadside objects in Frenet coordinates; all arrays have length N."""

    kind: np.ndarray   # int64, TREE / POLE / LAMP / BUILDING
    s: np.ndarray
    d: np.ndarray      # lateral offset of the object's centre
    size: np.ndarray   # [N, 3]: along road, across road, height (m)
    tint: np.ndarray   # [N] float in [0, 1): colour variation
    _placed: tuple | None = field(default=None, repr=False, compare=False)
    _reach: np.ndarray | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def empty() -> Objects:
        return Objects(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros(0))

    def reach(self) -> np.ndarray:
        """Half the diagonal plus a metre [N]: how far each object can reach from its centre."""
        if self._reach is None:
            self._reach = 0.5 * np.linalg.norm(self.size, axis=-1) + 1.0
        return self._reach

    def placed_on(self, road: Road) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World-frame centres [N, 3] (trees: at crown height), road headings [N] and box
        corners [N, 8, 3] (``camera.box_corners`` of centre, size, heading).

        Objects never move: the result is kept and reused while the road has not grown (the
        same inputs give the same arrays). Treat the returned arrays as read-only.
        """
        cached = self._placed
        if cached is not None and cached[0] is road and cached[1] == road.length:
            return cached[2:]
        ox, oy, oth = road.to_world(self.s, self.d)
        oz = np.where(self.kind == TREE, self.size[:, 2] * 0.6, self.size[:, 2] / 2.0)
        world = np.stack([ox, oy, oz], axis=-1).reshape(-1, 3)
        corners = box_corners(world, self.size, oth)
        self._placed = (road, road.length, world, oth, corners)  # length after to_world grew the road
        return world, oth, corners


class Scenery:
    """Deterministic roadside objects, cached per cell."""

    def __init__(self, seed: int, road: Road, layout: LaneLayout) -> None:
        self.seed = seed
        self.road = road
        self.layout = layout
        self._cache: dict[int, list[tuple[int, float, float, float, float, float, float]]] = {}
        self._last: tuple[tuple[int, int], Objects] | None = None

    def between(self, s_lo: float, s_hi: float) -> Objects:
        """All objects whose cell overlaps [s_lo, s_hi]; asked for the same cells again, the
        same ``Objects`` (its arrays read-only) is returned, with its cached placement."""
        first, last = max(int(s_lo // CELL), 0), int(s_hi // CELL)
        if self._last is not None and self._last[0] == (first, last):
            return self._last[1]
        objects = self._collect(first, last)
        self._last = ((first, last), objects)
        return objects

    def _collect(self, first: int, last: int) -> Objects:
        rows: list[tuple[int, float, float, float, float, float, float]] = []
        for c in range(first, last + 1):
            if c not in self._cache:
                self._cache[c] = self._cell(c)
            rows.extend(self._cache[c])
        for c in [k for k in self._cache if k < first - 5]:
            del self._cache[c]  # drives of any length: forget cells left behind
        if not rows:
            return Objects.empty()
        arr = np.array(rows)
        return Objects(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3:6], arr[:, 6])

    def _cell(self, c: int) -> list[tuple[int, float, float, float, float, float, float]]:
        rng = np.random.default_rng([self.seed, 0x5CE7E, c])
        zone = self.road.zone(c * CELL)
        s0 = c * CELL
        out = []
        for side in (-1.0, 1.0):
            edge = (self.layout.right_edge if side < 0 else self.layout.left_edge) + side * _SHOULDER
            if zone == 2:  # urban: facade of buildings, lamps every 30 m
                depth = float(rng.uniform(8.0, 14.0))
                if rng.random() < 0.85:
                    out.append((BUILDING, s0 + 5.0, edge + side * (float(rng.uniform(3.0, 6.0)) + depth / 2),
                                9.6, depth, float(rng.uniform(8.0, 28.0)), float(rng.random())))
            elif zone == 1 and rng.random() < 0.45:  # suburban houses, set back
                depth = float(rng.uniform(7.0, 10.0))
                out.append((BUILDING, s0 + 5.0, edge + side * (float(rng.uniform(6.0, 12.0)) + depth / 2),
                            float(rng.uniform(7.0, 9.5)), depth, float(rng.uniform(4.5, 7.5)), float(rng.random())))
            p_tree = (0.55, 0.35, 0.1)[zone]
            if rng.random() < p_tree:
                out.append((TREE, s0 + float(rng.uniform(0, CELL)), edge + side * float(rng.uniform(1.5, 9.0)),
                            0.0, float(rng.uniform(1.6, 3.2)), float(rng.uniform(5.0, 10.0)), float(rng.random())))
            if zone > 0 and c % 3 == (0 if side < 0 else 1):
                out.append((LAMP, s0 + 2.0, edge + side * 0.6, 0.0, 0.25, 8.0, 0.0))
            elif zone == 0 and side < 0 and c % 4 == 0:
                out.append((POLE, s0 + 2.0, edge + side * 1.5, 0.0, 0.28, 9.0, float(rng.random())))
        return out
