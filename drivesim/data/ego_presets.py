"""Named ego tracks (scenario presets) and random ego programs (varied training drives).

Presets (``PRESETS``; docs/rollout.md): ``cruise`` (14 m/s straight ahead), ``stop_and_go``
(12 m/s, brake at 2.5 m/s² to a stop, wait 4 s, accelerate at 1.5 m/s², again), ``curve``
(14 m/s, a 93 m radius left curve then a right one, with 3 s ramps), ``stop_and_go_curve``
(12 m/s: an 80 m radius left curve, a stop as in ``stop_and_go``, a right curve, another
stop; speed and yaw rate change at different times), ``winding`` (10 m/s,
alternating 50 m radius curves), ``brake`` (16 m/s, then a 3 m/s² stop for good) and
``accelerate`` (standing, then 2 m/s² to 20 m/s). The first five repeat; the last two hold.

:func:`random_track` draws a program of cruising, stops, speed changes and curves from a
``numpy.random.Generator`` (the synthetic datasets' varied drives).
"""

from __future__ import annotations

import hashlib

import numpy as np

from drivesim.data.ego import EgoTrack
from drivesim.utils.io import DriveSimInputError

PROGRAM_MIN_RADIUS = 45.0  # m: random programs keep their path radius above this (the world's limit is 40 m)


class _Knots:
    """Builds an ego track knot by knot: every move starts where the previous one ended."""

    def __init__(self, speed: float) -> None:
        self.t, self.v, self.w = 0.0, float(speed), 0.0
        self.times, self.speed, self.yaw = [0.0], [self.v], [0.0]

    def _add(self, dt: float) -> None:
        self.t += dt
        self.times.append(round(self.t, 6))
        self.speed.append(round(self.v, 6))
        self.yaw.append(round(self.w, 6))

    def hold(self, dt: float) -> _Knots:
        self._add(dt)
        return self

    def speed_to(self, target: float, accel: float) -> _Knots:
        """Constant acceleration (or braking) of ``accel`` m/s² to ``target`` m/s."""
        dt = abs(target - self.v) / accel
        self.v = float(target)
        if dt > 0:
            self._add(dt)
        return self

    def yaw_to(self, target: float, dt: float) -> _Knots:
        """Yaw rate ramped linearly to ``target`` rad/s over ``dt`` seconds."""
        self.w = float(target)
        self._add(dt)
        return self

    def track(self, name: str, cycle: bool) -> EgoTrack:
        return EgoTrack(tuple(self.times), tuple(self.speed), tuple(self.yaw), cycle=cycle, name=name)


def _cruise() -> EgoTrack:
    return _Knots(14.0).hold(10.0).track("cruise", cycle=True)


def _stop_and_go() -> EgoTrack:
    k = _Knots(12.0).hold(6.0).speed_to(0.0, 2.5).hold(4.0).speed_to(12.0, 1.5)
    return k.track("stop_and_go", cycle=True)


def _curve() -> EgoTrack:
    k = _Knots(14.0).hold(5.0)
    for sign in (1.0, -1.0):
        k.yaw_to(sign * 0.15, 3.0).hold(6.0).yaw_to(0.0, 3.0).hold(5.0)
    return k.track("curve", cycle=True)


def _stop_and_go_curve() -> EgoTrack:
    k = _Knots(12.0).hold(4.0)
    for sign in (1.0, -1.0):
        k.yaw_to(sign * 0.15, 3.0).hold(4.0).yaw_to(0.0, 3.0).hold(2.0)
        k.speed_to(0.0, 2.5).hold(4.0).speed_to(12.0, 1.5).hold(2.0)
    return k.track("stop_and_go_curve", cycle=True)


def _winding() -> EgoTrack:
    k = _Knots(10.0).hold(2.0)
    for sign in (1.0, -1.0):
        k.yaw_to(sign * 0.2, 2.0).hold(4.0).yaw_to(0.0, 2.0)
    return k.hold(2.0).track("winding", cycle=True)


def _brake() -> EgoTrack:
    return _Knots(16.0).hold(4.0).speed_to(0.0, 3.0).hold(1.0).track("brake", cycle=False)


def _accelerate() -> EgoTrack:
    return _Knots(0.0).hold(2.0).speed_to(20.0, 2.0).hold(1.0).track("accelerate", cycle=False)


PRESETS = {"cruise": _cruise, "stop_and_go": _stop_and_go, "curve": _curve,
           "stop_and_go_curve": _stop_and_go_curve, "winding": _winding,
           "brake": _brake, "accelerate": _accelerate}


def preset(name: str) -> EgoTrack:
    """The named ego track (see the module docstring)."""
    if name not in PRESETS:
        raise DriveSimInputError(f"unknown ego preset; expected one of {tuple(PRESETS)}", field="ego", value=name)
    return PRESETS[name]()


def random_track(rng: np.random.Generator, seconds: float = 60.0) -> EgoTrack:
    """A random program of at least ``seconds``: from a speed in [5, 18] m/s, moves drawn one
    after another -- cruise 1-4 s (15 %), a stop (brake at 1.5-4 m/s², stand 0.5-3 s, go at
    1-2.5 m/s² to 6-18 m/s; 30 %), a speed change to 3-22 m/s at 0.8-2.5 m/s² (25 %), or a curve
    (yaw rate up to 0.3 rad/s, path radius >= 45 m, ramped in and out over 1-2.5 s, held
    1-4 s; 30 %). The track holds its last values after the end."""
    k = _Knots(float(rng.uniform(5.0, 18.0))).hold(float(rng.uniform(0.2, 1.0)))
    while k.t < seconds:
        kind = int(rng.choice(4, p=[0.15, 0.30, 0.25, 0.30]))
        if kind == 0:
            k.hold(float(rng.uniform(1.0, 4.0)))
        elif kind == 1:
            k.speed_to(0.0, float(rng.uniform(1.5, 4.0))).hold(float(rng.uniform(0.5, 3.0)))
            k.speed_to(float(rng.uniform(6.0, 18.0)), float(rng.uniform(1.0, 2.5)))
        elif kind == 2:
            k.speed_to(float(rng.uniform(3.0, 22.0)), float(rng.uniform(0.8, 2.5)))
        else:
            sign = 1.0 if rng.random() < 0.5 else -1.0
            w = sign * min(float(rng.uniform(0.05, 0.3)), k.v / PROGRAM_MIN_RADIUS)
            ramp = float(rng.uniform(1.0, 2.5))
            k.yaw_to(w, ramp).hold(float(rng.uniform(1.0, 4.0))).yaw_to(0.0, ramp)
    digest = hashlib.sha256(repr((k.times, k.speed, k.yaw)).encode()).hexdigest()[:12]
    return k.track(f"program:{digest}", cycle=False)


def program_track(program_seed: int, seconds: float = 60.0) -> EgoTrack:
    """The random program of a synthetic drive (``SyntheticDataset.scenario(i)["ego_program"]``)."""
    return random_track(np.random.default_rng([int(program_seed), 0xE60]), seconds)
