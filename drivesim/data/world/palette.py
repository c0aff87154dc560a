"""Colours (RGB) for day/night and clear/rain/fog, and the atmosphere model.

Atmosphere: a surface at distance r keeps exp(-r / fog_distance) of its colour and takes
the rest from the fog colour (Koschmieder's law); clear days get a faint haze so that far
things fade, fog is the same law with a short distance. Vehicle colours are saturated and
kept away from asphalt grey so that road users stand out for detectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VEHICLE_COLOURS = np.array([
    (196, 32, 32), (32, 78, 190), (236, 236, 236), (182, 188, 196), (232, 190, 24),
    (36, 146, 64), (236, 116, 24), (128, 22, 36), (96, 168, 226), (148, 60, 170),
], dtype=np.float64)
CARGO_COLOURS = np.array([(240, 240, 236), (236, 120, 28), (40, 84, 180), (200, 40, 36),
                          (216, 216, 200)], dtype=np.float64)
BUS_COLOURS = np.array([(238, 196, 24), (200, 36, 36), (36, 96, 196), (40, 150, 80)], dtype=np.float64)
FACADE_COLOURS = np.array([(204, 184, 152), (156, 80, 58), (164, 164, 160), (216, 210, 198),
                           (112, 116, 126), (186, 150, 120)], dtype=np.float64)
TREE_COLOURS = np.array([(52, 104, 40), (70, 122, 46), (40, 86, 44), (88, 130, 52)], dtype=np.float64)


@dataclass(frozen=True)
class Palette:
    sky_top: tuple[float, float, float]
    fog: tuple[float, float, float]          # colour at the horizon and of fog
    ground: tuple[float, float, float]       # grass / terrain
    asphalt: tuple[float, float, float]
    shoulder: tuple[float, float, float]
    white: tuple[float, float, float]
    yellow: tuple[float, float, float]
    hills: tuple[float, float, float]
    glass: tuple[float, float, float]
    tyre: tuple[float, float, float]
    trunk: tuple[float, float, float]
    pole: tuple[float, float, float]
    fog_distance: float
    ambient: float                           # scale applied to object colours
    night: bool


def make_palette(night: bool, weather: str) -> Palette:
    if night:
        pal = Palette(sky_top=(4, 6, 16), fog=(26, 28, 44), ground=(12, 15, 12), asphalt=(28, 28, 32),
                      shoulder=(30, 29, 28), white=(92, 92, 90), yellow=(96, 80, 30),
                      hills=(10, 12, 20), glass=(10, 12, 18), tyre=(6, 6, 6), trunk=(14, 10, 8),
                      pole=(40, 40, 44), fog_distance=900.0, ambient=0.3, night=True)
    else:
        pal = Palette(sky_top=(88, 138, 206), fog=(192, 206, 224), ground=(92, 116, 62),
                      asphalt=(96, 96, 100), shoulder=(136, 128, 114),
                      white=(236, 236, 230), yellow=(230, 186, 40), hills=(92, 118, 120),
                      glass=(42, 52, 66), tyre=(22, 22, 24), trunk=(84, 60, 40), pole=(120, 120, 124),
                      fog_distance=700.0, ambient=1.0, night=False)
    if weather == "rain":
        wet = dict(asphalt=tuple(0.72 * np.array(pal.asphalt)), ground=tuple(0.8 * np.array(pal.ground)))
        sky = dict(sky_top=(22, 24, 30), fog=(44, 46, 54)) if night else dict(sky_top=(112, 118, 128),
                                                                              fog=(158, 162, 168))
        pal = Palette(**{**pal.__dict__, **wet, **sky, "fog_distance": 220.0})
    elif weather == "fog":
        fog = (34, 36, 42) if night else (184, 188, 192)
        pal = Palette(**{**pal.__dict__, "fog": fog, "sky_top": fog, "fog_distance": 55.0})
    return pal


def fog_factor(pal: Palette, distance: np.ndarray | float) -> np.ndarray:
    """Share of fog colour at ``distance`` metres (Koschmieder: 1 - exp(-r / r_fog))."""
    return 1.0 - np.exp(-np.asarray(distance, dtype=np.float64) / pal.fog_distance)


def shade_array(pal: Palette, colours: np.ndarray, distance: np.ndarray | float,
                light: np.ndarray | float) -> np.ndarray:
    """Object colours [..., 3] lit by ``light`` x ambient, then fogged; uint8.

    ``distance`` and ``light`` broadcast against ``colours[..., 0]``.
    """
    f = fog_factor(pal, distance)[..., None]
    c = np.asarray(colours, dtype=np.float64) * (np.asarray(light, dtype=np.float64)[..., None] * pal.ambient)
    c = c * (1.0 - f)  # broadcasts colours, light and distance
    c += np.asarray(pal.fog) * f
    # clip to [0, 255] (maximum/minimum ufuncs skip np.clip's Python-level dispatch)
    return np.minimum(np.maximum(c, 0, out=c), 255, out=c).astype(np.uint8)
