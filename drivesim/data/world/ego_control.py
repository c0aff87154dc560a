"""The ego under command, and the ego's exact motion labels.

A commanded ego (``WorldConfig.ego_track``) drives its track's speed and yaw rate. The road
model has no junctions: the ego always drives along its lane, so it turns by the road
turning under it. :class:`CurvaturePlan` therefore lays the road out ahead of the ego from
the command: integrating the track in time, a path curvature ``k = yaw_rate / speed``
(|k| <= 1 / ``MIN_RADIUS``) is turned into the centreline curvature that gives it at the
ego's lateral offset ``d`` (``k_c = k / (1 + k d)``) and placed at the centreline arc length
the ego reaches at that time. The traffic then drives the road as usual, so vehicles ahead
keep their own speeds and curves bend the whole scene. :class:`EgoController` converts the
commanded speed over the ground to the centreline rate of the ego's lane and caps it by the
speed from which the ego can still fall in behind its leader at comfortable braking.

:func:`ego_motion` is the exact time derivative of the ego pose that the frames are
rendered from (speed over the ground, yaw rate), between two simulation ticks.
"""

from __future__ import annotations

import math

import numpy as np

from drivesim.data.ego import EgoTrack

from .actors import Snapshot
from .road import STEP, Road

MIN_RADIUS = 40.0    # m: tightest path radius the commanded ego drives (roadside objects stay off the road)
_MIN_SPEED = 0.05    # m/s: slower than this the ego does not advance the plan
_CHUNK = 1024        # simulation steps integrated at a time


class CurvaturePlan:
    """Centreline curvature ahead of a commanded ego (see the module docstring).

    ``start_s``: the ego's arc length at t = 0; ``d``: its lateral offset (lane centre);
    ``dt``: the integration step (the simulation tick). :meth:`curvature` returns the
    curvature of the next metres of road, one value per ``road.STEP``, picking up where
    the previous call stopped.
    """

    def __init__(self, track: EgoTrack, start_s: float, d: float, dt: float) -> None:
        self.track, self.d, self.dt = track, float(d), float(dt)
        self.start = float(start_s)
        self._t, self._s = 0.0, self.start
        self._trace_s, self._trace_k = [self.start], [self._kappa_c(*self.track.at(0.0))]
        speeds = np.asarray(track.speed)
        self._stalls = float(speeds.max()) < _MIN_SPEED

    def _kappa_c(self, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Centreline curvature giving the ego path curvature w / v at offset d."""
        v, w = np.asarray(v, np.float64), np.asarray(w, np.float64)
        k = np.where(v >= _MIN_SPEED, w / np.maximum(v, _MIN_SPEED), 0.0)
        k = np.clip(k, -1.0 / MIN_RADIUS, 1.0 / MIN_RADIUS)
        return k / (1.0 + k * self.d)

    def _integrate(self, s_target: float) -> None:
        """Advance the plan until the ego's arc length passes ``s_target``."""
        t_end = math.inf if self.track.cycle else self.track.duration
        while self._s < s_target and not self._stalls:
            if self._t > t_end:  # after a held track: its last curvature, for ever
                self._trace_s.append(s_target + 1.0)
                self._trace_k.append(self._trace_k[-1])
                self._s = s_target + 1.0
                break
            t = self._t + self.dt * np.arange(1, _CHUNK + 1)                 # [K]
            v, w = self.track.at(t)
            kc = self._kappa_c(v, w)
            rate = v / np.maximum(1.0 - kc * self.d, 0.2)                       # centreline arc rate
            s = self._s + np.cumsum(rate) * self.dt
            self._trace_s += s.tolist()
            self._trace_k += kc.tolist()
            self._t, self._s = float(t[-1]), float(s[-1])
        if self._stalls and self._s < s_target:
            self._trace_s.append(s_target + 1.0)
            self._trace_k.append(0.0)
            self._s = s_target + 1.0

    def curvature(self, s_from: float, count: int) -> np.ndarray:
        """Curvature [count] of the road samples at ``s_from + i * STEP`` (mid-sample values)."""
        mid = s_from + (np.arange(count) + 0.5) * STEP
        self._integrate(float(mid[-1]) + STEP)
        return np.interp(mid, self._trace_s, self._trace_k)


class EgoController:
    """What the traffic asks each tick of a commanded ego."""

    def __init__(self, track: EgoTrack, road: Road) -> None:
        self.track, self.road = track, road

    def lane_rate(self, t: float, s: float, d: float) -> float:
        """Centreline arc rate (the simulation's speed) that moves the ego at the commanded
        speed over the ground at time ``t``, arc length ``s`` and lateral offset ``d``."""
        v, _ = self.track.at(t)
        _, _, kappa = self.road.local_frame(s)
        return float(v) / max(1.0 - kappa * d, 0.2)

    @staticmethod
    def safe_speed(gap: float, v_lead: float, s0: float, b: float) -> float:
        """Highest speed from which braking at ``b`` m/s² matches the leader's speed before the
        bumper gap shrinks to ``s0`` (inf without a leader)."""
        if not math.isfinite(gap):
            return math.inf
        return math.sqrt(max(v_lead * v_lead + 2.0 * b * (gap - s0), 0.0))


def ego_motion(a: Snapshot, b: Snapshot, alpha: float, road: Road, dt: float) -> tuple[float, float]:
    """Speed over the ground (m/s) and yaw rate (rad/s, left positive) of the ego pose at a
    fraction ``alpha`` between ticks ``a`` and ``b`` (``dt`` seconds apart).

    Between ticks the scene interpolates the ego's Frenet state linearly, and the pose is
    ``position = c(s) + d n(theta(s))``, ``yaw = theta(s) + atan2(vd, max(v, 0.5))``
    (``scene.build_scene``), with the centreline c piecewise linear and its heading theta
    linear in s per road sample (curvature kappa). Their time derivatives:
    ``velocity = s' (c'(s) - d kappa t(theta)) + d' n(theta)`` and
    ``yaw rate = kappa s' + (V vd' - vd V') / (V^2 + vd^2)`` with ``V = max(v, 0.5)``.
    """
    sa, sb = float(a.s[0]), float(b.s[0])
    s = (1.0 - alpha) * sa + alpha * sb
    d = (1.0 - alpha) * float(a.d[0]) + alpha * float(b.d[0])
    v = (1.0 - alpha) * float(a.v[0]) + alpha * float(b.v[0])
    vd = (1.0 - alpha) * float(a.vd[0]) + alpha * float(b.vd[0])
    s_dot, d_dot = (sb - sa) / dt, (float(b.d[0]) - float(a.d[0])) / dt
    v_dot, vd_dot = (float(b.v[0]) - float(a.v[0])) / dt, (float(b.vd[0]) - float(a.vd[0])) / dt
    theta, chord, kappa = road.local_frame(s)
    vx = s_dot * (math.cos(chord) - d * kappa * math.cos(theta)) - d_dot * math.sin(theta)
    vy = s_dot * (math.sin(chord) - d * kappa * math.sin(theta)) + d_dot * math.cos(theta)
    big_v = max(v, 0.5)
    big_v_dot = v_dot if v > 0.5 else 0.0
    yaw_rate = kappa * s_dot + (big_v * vd_dot - vd * big_v_dot) / (big_v * big_v + vd * vd)
    return math.hypot(vx, vy), yaw_rate
