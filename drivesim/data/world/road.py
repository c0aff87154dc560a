"""Procedural, infinite road: a centreline of straights and curves with clothoid joins.

The road is described by its curvature kappa(s) over arc length s, sampled every metre and
generated segment by segment from one seeded stream, so the same seed always gives the
same road however far one drives. With a commanded ego the road ahead is laid out from the
ego's command instead (``plan``: ``ego_control.CurvaturePlan``), straight up to the ego's
start, and its zones are still drawn from the seed. Heading and position are integrated from kappa
(theta' = kappa, x' = cos theta, y' = sin theta). A point on the road is addressed in
Frenet coordinates (s along the centreline, d to the left of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

STEP = 1.0          # metres between centreline samples
_TRANSITION = 40.0  # clothoid ramp length between straight and curve (m)
ZONES: tuple[str, ...] = ("rural", "suburban", "urban")
_PLANNED_PIECE = 250  # samples of planned road added at a time (a commanded ego)


class CurvatureSource(Protocol):
    """Where a commanded ego's road comes from (``ego_control.CurvaturePlan``)."""

    start: float

    def curvature(self, s_from: float, count: int) -> np.ndarray: ...


@dataclass(frozen=True)
class LaneLayout:
    """Lateral layout: lane centres and markings (d offsets, left positive)."""

    lanes_forward: int
    lanes_oncoming: int
    lane_width: float

    def lane_centres(self) -> np.ndarray:
        """Centres of all lanes, forward lanes (right of d = 0) first, innermost first."""
        fwd = [-(i + 0.5) * self.lane_width for i in range(self.lanes_forward)]
        onc = [(i + 0.5) * self.lane_width for i in range(self.lanes_oncoming)]
        return np.array(fwd + onc)

    def lane_directions(self) -> np.ndarray:
        """+1 for lanes driven with increasing s, -1 for oncoming lanes."""
        return np.array([1] * self.lanes_forward + [-1] * self.lanes_oncoming)

    @property
    def right_edge(self) -> float:
        return -self.lanes_forward * self.lane_width

    @property
    def left_edge(self) -> float:
        return self.lanes_oncoming * self.lane_width

    def markings(self) -> list[tuple[float, str, str]]:
        """(d, style, colour) of every painted line; style is 'solid' or 'dashed'."""
        out = [(self.right_edge + 0.25, "solid", "white")]
        out += [(-k * self.lane_width, "dashed", "white") for k in range(1, self.lanes_forward)]
        if self.lanes_oncoming:
            out += [(-0.12, "solid", "yellow"), (0.12, "solid", "yellow")]
            out += [(k * self.lane_width, "dashed", "white") for k in range(1, self.lanes_oncoming)]
            out.append((self.left_edge - 0.25, "solid", "white"))
        else:
            out.append((-0.25, "solid", "white"))
        return out


class Road:
    """Centreline sampled every ``STEP`` metres, extended lazily as far as asked."""

    def __init__(self, seed: int, plan: CurvatureSource | None = None) -> None:
        self._rng = np.random.default_rng([seed, 0x520AD])
        self._plan = plan  # a commanded ego lays out the road ahead (ego_control.CurvaturePlan)
        self._kappa: list[np.ndarray] = []
        self._kappa_all = np.zeros(0)  # the samples' curvature, concatenated (local_frame)
        self._zones: list[tuple[float, int]] = []  # (start s, zone index)
        self._length = 0.0
        self._x = np.zeros(1)
        self._y = np.zeros(1)
        self._theta = np.zeros(1)
        self._zone_starts = np.zeros(0)
        self._zone_ids = np.zeros(0, dtype=np.int64)
        self.extend_to(600.0)

    @property
    def length(self) -> float:
        return self._length

    def extend_to(self, s: float) -> None:
        """Generate segments until the road is at least ``s`` metres long."""
        if s <= self._length - 1.0:
            return
        while self._length < s + 1.0:
            self._add_segment()
        kappa = np.concatenate(self._kappa)
        self._kappa_all = kappa
        theta = np.concatenate([[0.0], np.cumsum(kappa) * STEP])
        # midpoint rule for the position integral keeps curves closed-form accurate
        mid = 0.5 * (theta[1:] + theta[:-1])
        self._x = np.concatenate([[0.0], np.cumsum(np.cos(mid)) * STEP])
        self._y = np.concatenate([[0.0], np.cumsum(np.sin(mid)) * STEP])
        self._theta = theta
        self._zone_starts = np.array([z[0] for z in self._zones])
        self._zone_ids = np.array([z[1] for z in self._zones], dtype=np.int64)

    def _add_segment(self) -> None:
        if self._plan is not None:
            self._add_planned()
            return
        rng = self._rng
        straight = int(rng.integers(60, 260))
        radius = float(rng.uniform(140.0, 600.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        arc = int(rng.integers(60, 240))
        ramp = np.linspace(0.0, 1.0 / radius, int(_TRANSITION), endpoint=False)
        curve = np.concatenate([ramp, np.full(arc, 1.0 / radius), ramp[::-1]])
        zone = int(rng.integers(0, len(ZONES)))
        self._zones.append((self._length, zone))
        self._kappa.extend([np.zeros(straight), curve])
        self._length += (straight + len(curve)) * STEP

    def _add_planned(self) -> None:
        """Road laid out by a curvature plan: straight up to the plan's start, then planned
        curvature in pieces of ``_PLANNED_PIECE`` metres, each in a zone drawn from the seed."""
        if self._length == 0.0:
            n = max(int(round(self._plan.start / STEP)), 1)
            self._kappa.append(np.zeros(n))
        else:
            n = _PLANNED_PIECE
            self._kappa.append(self._plan.curvature(self._length, n))
        self._zones.append((self._length, int(self._rng.integers(0, len(ZONES)))))
        self._length += n * STEP

    def local_frame(self, s: float) -> tuple[float, float, float]:
        """At arc length ``s``: the centreline heading, the heading of the sample's chord (the
        direction ``pose`` moves along) and the curvature d(heading)/ds, as ``pose`` sees them."""
        if s > self._length - 2.0:
            self.extend_to(s + 200.0)
        pos = max(s, 0.0) / STEP
        i = min(int(pos), len(self._x) - 2)
        f = pos - i
        th0, th1 = self._theta[i], self._theta[i + 1]
        return float(th0 + f * (th1 - th0)), float(0.5 * (th0 + th1)), float(self._kappa_all[i])

    def pose(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, heading) of the centreline at arc length ``s`` (linear interpolation)."""
        s = np.asarray(s, dtype=np.float64)
        if s.size and float(s.max()) > self._length - 2.0:
            self.extend_to(float(s.max()) + 200.0)
        s = np.maximum(s, 0.0) / STEP  # == np.clip(s, 0.0, None), without its dispatch
        i = np.minimum(s.astype(np.int64), len(self._x) - 2)
        f = s - i
        x = self._x[i] + f * (self._x[i + 1] - self._x[i])
        y = self._y[i] + f * (self._y[i + 1] - self._y[i])
        th = self._theta[i] + f * (self._theta[i + 1] - self._theta[i])
        return x, y, th

    def to_world(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frenet (s, d) -> world (x, y) and the road heading there."""
        x, y, th = self.pose(s)
        return x - np.sin(th) * d, y + np.cos(th) * d, th

    def zone(self, s: float) -> int:
        """Index into ``ZONES`` of the scenery type at arc length ``s``."""
        self.pose(s)
        k = int(np.searchsorted(self._zone_starts, s, side="right")) - 1
        return int(self._zone_ids[max(k, 0)])
