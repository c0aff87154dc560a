"""Traffic: the ego and the other road users, simulated in Frenet coordinates on a fixed clock.

Longitudinal motion follows the Intelligent Driver Model (Treiber et al. 2000):
    a = a_max * (1 - (v / v0)^4 - (s*(v, dv) / gap)^2),  s* = s0 + v T + v dv / (2 sqrt(a_max b)).
Lateral motion is a rate-limited move towards the target lane centre; lane changes happen
when a vehicle is blocked by a slower leader or when its random timer fires, and only if
the target lane has room. Vehicles that fall out of the simulated window around the ego
are respawned ahead or behind, so the scene keeps ``num_vehicles`` road users. A commanded
ego (``command_ego``) drives its command's speed instead of the IDM's, capped behind a slower
leader; everyone else reacts to it as to any road user. The ego eases into lane changes
(``_ego_lateral``) so the camera never turns faster than a car. Pedestrians
(``num_pedestrians``) walk along the sidewalks beyond the shoulders with the same model at
walking pace; they never enter the road. Slot 0 is the ego (track id 0, never labelled);
other track ids start at 1 and are never reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivesim.data.labels import CLASS_IDS

from .config import DEFAULT_TRAFFIC_RANGE
from .road import LaneLayout

# IDM parameters (Treiber et al. 2000, typical values)
_S0, _T_HEAD, _A_MAX, _B_COMF = 2.5, 1.3, 1.5, 2.5
_MAX_BRAKE = 9.0          # m/s², the hardest braking of any driver
_LAT_SPEED = 1.1          # m/s, lane changes take ~3 s
_EGO_LAT_ACC = 1.5        # m/s², the ego's lateral acceleration into and out of a lane change
_BEHIND = -70.0            # simulated range of s relative to the ego: (_BEHIND, traffic_range)
_MEAN_LC_TIME = 25.0      # mean seconds between spontaneous lane changes
_SIDEWALK = 2.7           # sidewalk centre: metres beyond the road's edge line

# class id, probability, (length range), (width range), (height range)
VEHICLE_TYPES = (
    (CLASS_IDS["car"], 0.74, (4.0, 4.9), (1.72, 1.92), (1.40, 1.65)),
    (CLASS_IDS["truck"], 0.18, (6.5, 10.5), (2.3, 2.55), (2.9, 3.7)),
    (CLASS_IDS["bus"], 0.08, (10.5, 12.5), (2.5, 2.6), (3.0, 3.3)),
)


@dataclass
class Snapshot:
    """The traffic at one tick; arrays over the active road users, ego first."""

    time: float
    track_id: np.ndarray  # int64 [N]
    s: np.ndarray
    d: np.ndarray
    v: np.ndarray         # speed along the direction of travel (>= 0)
    vd: np.ndarray        # lateral speed (d per second)
    direction: np.ndarray  # +1 / -1


class Traffic:
    """Vectorised state of ``1 + num_vehicles + num_pedestrians`` slots; inactive slots wait
    for room to spawn."""

    def __init__(self, seed: int, num_vehicles: int, layout: LaneLayout,
                 ego_speed: float | None, num_pedestrians: int = 0, traffic_range: float = DEFAULT_TRAFFIC_RANGE) -> None:
        self.rng = np.random.default_rng([seed, 0x7AFF1C])
        # Road users live within (_BEHIND, traffic_range) metres of the ego; new ones appear
        # "anywhere" in (-25, R - 35) at the start and "ahead" in (R - min(65, 0.4 R), R - 10),
        # far enough to be a few pixels wide (R = 185: (120, 175)); a short range packs the
        # same traffic close to the camera.
        r = float(traffic_range)
        self.window = (_BEHIND, r)
        self.spawn_ranges = {"anywhere": (-25.0, r - 35.0), "ahead": (r - min(65.0, 0.4 * r), r - 10.0),
                             "behind": (-65.0, -45.0)}
        self.layout = layout
        self.lanes = layout.lane_centres()
        self.lane_dirs = layout.lane_directions()
        self.time = 0.0
        n = num_vehicles + num_pedestrians + 1
        self.is_ped = np.arange(n) > num_vehicles
        self.sidewalks = np.array([layout.right_edge - _SIDEWALK, layout.left_edge + _SIDEWALK])
        self.active = np.zeros(n, dtype=bool)
        self.track_id = np.zeros(n, dtype=np.int64)
        self.s, self.d, self.v, self.vd = (np.zeros(n) for _ in range(4))
        self.d_target, self.v_des, self.t_lc = np.zeros(n), np.zeros(n), np.zeros(n)
        self.direction = np.ones(n)
        self.length = np.zeros(n)  # metres; 0 for inactive slots
        self.next_id = 1
        # static attributes per track id (class, size, colour), kept for rendering
        self.attrs: dict[int, tuple[int, np.ndarray, int]] = {}
        ego_lane = int(self.rng.integers(0, layout.lanes_forward))
        self.s[0], self.d[0] = 80.0, self.lanes[ego_lane]
        self.d_target[0] = self.d[0]
        self.v_des[0] = ego_speed if ego_speed is not None else float(self.rng.uniform(11.0, 19.0))
        self.v[0] = self.v_des[0]
        self.t_lc[0] = np.inf  # the ego changes lane only when blocked
        self.length[0] = 4.5
        self.active[0] = True
        self.ego_control = None  # set by command_ego: the ego follows a commanded track
        for i in range(1, n):
            self._spawn(i, where="anywhere")

    def command_ego(self, control) -> None:
        """Drive the ego by ``control`` (``ego_control.EgoController``) from now on: its speed is
        the commanded one (capped behind a slower leader), it still changes lane when blocked."""
        self.ego_control = control
        rate = control.lane_rate(self.time, float(self.s[0]), float(self.d[0]))
        self.v[0] = self.v_des[0] = rate

    # ----------------------------------------------------------------- spawning
    def _spawn(self, i: int, where: str) -> None:
        """Place slot ``i`` as a new road user in a lane with room, or leave it inactive."""
        if self.is_ped[i]:
            self._spawn_pedestrian(i, where)
            return
        rng = self.rng
        ego_lane = int(np.argmin(np.abs(self.lanes - self.d[0])))
        for _ in range(4):
            lane = int(rng.integers(0, len(self.lanes)))
            direction = float(self.lane_dirs[lane])
            if where == "behind" and (direction < 0 or lane == ego_lane):
                continue  # only overtakers in other forward lanes come from behind
            lo, hi = self.spawn_ranges[where]
            s = self.s[0] + float(rng.uniform(lo, hi))
            if where == "anywhere" and lane == ego_lane and s < self.s[0] + 10.0:
                continue
            kind = VEHICLE_TYPES[int(rng.choice(len(VEHICLE_TYPES), p=[t[1] for t in VEHICLE_TYPES]))]
            size = np.array([rng.uniform(*kind[2]), rng.uniform(*kind[3]), rng.uniform(*kind[4])])
            if not self._has_room(lane, s, size[0]):
                continue
            v_des = float(rng.uniform(9.0, 22.0)) if kind[0] == CLASS_IDS["car"] else float(rng.uniform(8.0, 16.0))
            if where == "behind":
                v_des = self.v[0] + float(rng.uniform(3.0, 8.0))
            self.active[i], self.track_id[i] = True, self.next_id
            self.attrs[self.next_id] = (kind[0], size, int(rng.integers(0, 1 << 16)))
            self.next_id += 1
            self.s[i], self.d[i], self.d_target[i] = s, self.lanes[lane], self.lanes[lane]
            self.length[i] = size[0]
            self.direction[i], self.v_des[i], self.v[i], self.vd[i] = direction, v_des, v_des, 0.0
            self.t_lc[i] = self.time + float(rng.exponential(_MEAN_LC_TIME))
            return
        self.active[i] = False

    def _spawn_pedestrian(self, i: int, where: str) -> None:
        rng = self.rng
        d = float(self.sidewalks[int(rng.integers(0, 2))])
        lo, hi = (12.0, 120.0) if where == "anywhere" else (90.0, 130.0)
        s = self.s[0] + float(rng.uniform(lo, hi))
        others = self.active & self.is_ped & (np.abs(self.d - d) < 0.5)
        if np.any(others & (np.abs(self.s - s) < 2.0)):
            self.active[i] = False
            return
        size = np.array([0.45, 0.55, rng.uniform(1.55, 1.9)])
        self.active[i], self.track_id[i] = True, self.next_id
        self.attrs[self.next_id] = (CLASS_IDS["pedestrian"], size, int(rng.integers(0, 1 << 16)))
        self.next_id += 1
        self.s[i], self.d[i], self.d_target[i], self.length[i] = s, d, d, size[0]
        self.direction[i] = 1.0 if rng.random() < 0.5 else -1.0
        self.v_des[i] = float(rng.uniform(0.9, 1.7))
        self.v[i], self.vd[i], self.t_lc[i] = self.v_des[i], 0.0, np.inf

    def _has_room(self, lane: int, s: float, length: float, margin: float = 12.0) -> bool:
        occ = self.active & ~self.is_ped & (np.abs(self.d - self.lanes[lane]) < 0.75 * self.layout.lane_width)
        occ |= self.active & (np.abs(self.d_target - self.lanes[lane]) < 0.1)
        gaps = np.abs(self.s - s) - 0.5 * (self.length + length)
        return not bool(np.any(occ & (gaps < margin)))

    # ----------------------------------------------------------------- dynamics
    def _leaders(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bumper gap to and speed of each slot's leader in its lane ([N], inf when none)."""
        half = 0.5 * self.layout.lane_width
        same_lane = (np.abs(self.d[None, :] - self.d[:, None]) < 1.5 * half) | (
            np.abs(self.d_target[None, :] - self.d[:, None]) < half)
        same_lane &= (self.direction[None, :] == self.direction[:, None]) & self.active[None, :]
        same_lane &= self.is_ped[None, :] == self.is_ped[:, None]  # walkers and drivers never meet
        ahead = (self.s[None, :] - self.s[:, None]) * self.direction[:, None]  # [i, j]
        gap = ahead - 0.5 * (lengths[None, :] + lengths[:, None])
        valid = same_lane & (ahead > 0) & ~np.eye(len(self.s), dtype=bool)
        gap = np.where(valid, gap, np.inf)
        j = np.argmin(gap, axis=1)
        return gap[np.arange(len(j)), j], self.v[j]

    def tick(self, dt: float) -> None:
        """Advance every road user by ``dt`` seconds (IDM + lane changes + respawning)."""
        gap, v_lead = self._leaders(self.length)
        v = self.v
        s_star = _S0 + v * _T_HEAD + v * (v - v_lead) / (2.0 * np.sqrt(_A_MAX * _B_COMF))
        gap_c = np.maximum(gap, 0.1)
        acc = _A_MAX * (1.0 - (v / np.maximum(self.v_des, 0.1)) ** 4 - (np.maximum(s_star, 0) / gap_c) ** 2)
        acc = np.clip(acc, -_MAX_BRAKE, _A_MAX)
        self.v = np.where(self.active, np.maximum(v + acc * dt, 0.0), 0.0)
        if self.ego_control is not None:
            self._command_ego(float(gap[0]), float(v_lead[0]), float(v[0]), dt)
        self.s = self.s + self.direction * self.v * dt
        ego_vd = float(self.vd[0])
        self.vd = np.clip(1.2 * (self.d_target - self.d), -_LAT_SPEED, _LAT_SPEED)
        self.vd[0] = _ego_lateral(ego_vd, float(self.vd[0]), float(self.v[0]), dt)
        self.d = self.d + self.vd * dt
        self.time += dt
        self._lane_changes(gap, v_lead)
        self._respawn()

    def _command_ego(self, gap: float, v_lead: float, v_old: float, dt: float) -> None:
        """The commanded ego's speed over this tick: the command at its middle, capped by the
        speed from which it can still fall in behind its leader braking at _B_COMF (braking
        for that at most _MAX_BRAKE m/s² from its speed ``v_old``, like every driver here). Held
        back, it returns to the command accelerating at the command's own rate or _A_MAX,
        whichever is higher."""
        rate = self.ego_control.lane_rate(self.time + 0.5 * dt, float(self.s[0]), float(self.d[0]))
        rise = max(_A_MAX * dt, rate - float(self.v_des[0]))  # behind the command: catch up at >= _A_MAX
        self.v_des[0] = rate
        safe = self.ego_control.safe_speed(gap, v_lead, _S0, _B_COMF)
        self.v[0] = max(min(rate, v_old + rise, max(safe, v_old - _MAX_BRAKE * dt)), 0.0)

    def _lane_changes(self, gap: np.ndarray, v_lead: np.ndarray) -> None:
        settled = self.active & ~self.is_ped & (np.abs(self.d - self.d_target) < 0.05)
        blocked = (gap < 40.0) & (v_lead < self.v_des - 2.0)
        for i in np.flatnonzero(settled & (blocked | (self.time >= self.t_lc))):
            lane = int(np.argmin(np.abs(self.lanes - self.d[i])))
            options = [k for k in (lane - 1, lane + 1) if 0 <= k < len(self.lanes)
                       and self.lane_dirs[k] == self.lane_dirs[lane]]
            if i != 0 and self.time >= self.t_lc[i]:
                self.t_lc[i] = self.time + float(self.rng.exponential(_MEAN_LC_TIME))
            for k in sorted(options):  # inner lane first: overtake on the left
                if self._has_room(k, float(self.s[i]), float(self.length[i]), margin=10.0):
                    self.d_target[i] = self.lanes[k]
                    break

    def _respawn(self) -> None:
        rel = self.s - self.s[0]
        for i in range(1, len(self.s)):
            if not self.active[i]:
                self._spawn(i, where="ahead")
            elif rel[i] < self.window[0]:
                self.active[i] = False
                self._spawn(i, where="ahead")
            elif rel[i] > self.window[1]:
                self.active[i] = False
                behind = self.layout.lanes_forward > 1 and not self.is_ped[i]
                self._spawn(i, where="behind" if behind else "ahead")

    def snapshot(self) -> Snapshot:
        idx = np.flatnonzero(self.active)
        return Snapshot(self.time, self.track_id[idx].copy(), self.s[idx].copy(), self.d[idx].copy(),
                        self.v[idx].copy(), self.vd[idx].copy(), self.direction[idx].copy())


def _ego_lateral(previous: float, wanted: float, speed: float, dt: float) -> float:
    """The ego's lateral speed: towards ``wanted`` at most _EGO_LAT_ACC m/s² and never above a
    tenth of its speed, so the camera turns into a lane change smoothly (its heading offset stays
    below atan(0.1) and its yaw rate that of a car) and a standing ego does not slide sideways."""
    cap = min(_LAT_SPEED, 0.1 * speed)
    step = _EGO_LAT_ACC * dt
    eased = min(max(wanted, previous - step), previous + step)
    return min(max(eased, -cap), cap)
