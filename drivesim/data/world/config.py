"""Configuration of the synthetic driving world.

Every knob is a typed field with a sensible default, so ``WorldConfig(seed=3)`` is a
complete drive. Validation happens once, in ``__post_init__``, and names the field and
the offending value (``DriveSimInputError``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivesim.data.ego import EgoTrack
from drivesim.utils.io import DriveSimInputError

WEATHERS: tuple[str, ...] = ("clear", "rain", "fog")
DEFAULT_TRAFFIC_RANGE = 185.0  # metres of simulated traffic ahead: the world's default density


@dataclass(frozen=True)
class WorldConfig:
    """One drive: seed, image size, frame rate, lighting, traffic density and weather.

    The drive itself (road, traffic, scenery) depends only on ``seed`` and the traffic/road
    knobs; ``fps``, ``height`` and ``width`` only change how it is sampled and rendered.
    """

    seed: int = 0
    height: int = 128
    width: int = 256
    fps: float = 10.0
    night: bool = False
    num_vehicles: int = 6
    weather: str = "clear"
    num_pedestrians: int = 0         # walkers on the sidewalks (class 'pedestrian')
    # camera (pinhole, OpenCV axes; see docs/world.md)
    hfov_deg: float = 80.0           # horizontal field of view
    camera_height: float = 1.5       # metres above the road
    camera_pitch_deg: float = 3.0    # positive = looking down
    camera_forward: float = 0.8      # metres ahead of the ego centre (windscreen)
    near: float = 0.3                # near clipping plane (metres)
    # road and traffic
    lanes_forward: int = 2           # lanes in the ego's direction (right-hand traffic)
    lanes_oncoming: int = 2
    lane_width: float = 3.5
    ego_speed: float | None = None   # desired ego speed in m/s; None draws one from the seed
    ego_track: EgoTrack | None = None  # commanded ego speed / yaw rate over time (ego_control.py)
    traffic_range: float = DEFAULT_TRAFFIC_RANGE  # metres ahead of the ego within which traffic is simulated
    sim_hz: float = 20.0             # fixed simulation clock; frames interpolate between ticks
    # labels
    min_box_pixels: float = 2.0      # boxes narrower or shorter than this are dropped
    min_visibility: float = 0.05     # boxes less visible than this are dropped
    max_distance: float = 150.0      # vehicles farther than this are not labelled

    def __post_init__(self) -> None:
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
               "seed", self.seed, "must be an integer >= 0")
        for name in ("height", "width"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 16, name, value, "must be an integer >= 16")
        _check(_finite(self.fps) and self.fps > 0, "fps", self.fps, "must be a finite number > 0")
        _check(isinstance(self.night, bool), "night", self.night, "must be true or false")
        _check(isinstance(self.num_vehicles, int) and 0 <= self.num_vehicles <= 64,
               "num_vehicles", self.num_vehicles, "must be an integer in [0, 64]")
        _check(isinstance(self.num_pedestrians, int) and 0 <= self.num_pedestrians <= 32,
               "num_pedestrians", self.num_pedestrians, "must be an integer in [0, 32]")
        _check(self.weather in WEATHERS, "weather", self.weather, f"must be one of {WEATHERS}")
        _check(_finite(self.hfov_deg) and 20.0 <= self.hfov_deg <= 140.0, "hfov_deg",
               self.hfov_deg, "must be in [20, 140] degrees")
        _check(_finite(self.camera_height) and 0.3 <= self.camera_height <= 10.0,
               "camera_height", self.camera_height, "must be in [0.3, 10] metres")
        _check(_finite(self.camera_pitch_deg) and abs(self.camera_pitch_deg) <= 30.0,
               "camera_pitch_deg", self.camera_pitch_deg, "must be in [-30, 30] degrees")
        _check(_finite(self.camera_forward), "camera_forward", self.camera_forward, "must be finite")
        _check(_finite(self.near) and 0.01 <= self.near <= 5.0, "near", self.near,
               "must be in [0.01, 5] metres")
        _check(isinstance(self.lanes_forward, int) and 1 <= self.lanes_forward <= 4,
               "lanes_forward", self.lanes_forward, "must be an integer in [1, 4]")
        _check(isinstance(self.lanes_oncoming, int) and 0 <= self.lanes_oncoming <= 4,
               "lanes_oncoming", self.lanes_oncoming, "must be an integer in [0, 4]")
        _check(_finite(self.lane_width) and 2.5 <= self.lane_width <= 5.0, "lane_width",
               self.lane_width, "must be in [2.5, 5] metres")
        _check(self.ego_speed is None or (_finite(self.ego_speed) and 0.0 <= self.ego_speed <= 45.0),
               "ego_speed", self.ego_speed, "must be None or in [0, 45] m/s")
        _check(self.ego_track is None or isinstance(self.ego_track, EgoTrack), "ego_track",
               type(self.ego_track).__name__, "must be None or an EgoTrack")
        _check(_finite(self.traffic_range) and 40.0 <= self.traffic_range <= 400.0, "traffic_range",
               self.traffic_range, "must be in [40, 400] metres")
        _check(_finite(self.sim_hz) and 5.0 <= self.sim_hz <= 200.0, "sim_hz", self.sim_hz,
               "must be in [5, 200] Hz")
        _check(_finite(self.min_box_pixels) and self.min_box_pixels >= 0, "min_box_pixels",
               self.min_box_pixels, "must be >= 0")
        _check(_finite(self.min_visibility) and 0.0 <= self.min_visibility <= 1.0,
               "min_visibility", self.min_visibility, "must be in [0, 1]")
        _check(_finite(self.max_distance) and self.max_distance > 1.0, "max_distance",
               self.max_distance, "must be > 1 metre")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, field: str, value: object, message: str) -> None:
    if not ok:
        raise DriveSimInputError(message, path="WorldConfig", field=field, value=value)
