"""Label vocabularies shared by every dataset, converter, model and metric.

Box classes: index 0 is padding; the rest are road-user classes. Day/night: 0 day,
1 night, 2 unknown. Crowdedness: the number of visible vehicles in a clip, bucketed.
"""

from __future__ import annotations

from collections.abc import Sequence

CLASS_NAMES: tuple[str, ...] = ("pad", "car", "truck", "bus", "pedestrian", "cyclist", "other")
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
NUM_CLASSES = len(CLASS_NAMES)
PAD_CLASS = 0
VEHICLE_CLASSES: tuple[int, ...] = (CLASS_IDS["car"], CLASS_IDS["truck"], CLASS_IDS["bus"])

DAYNIGHT_NAMES: tuple[str, ...] = ("day", "night", "unknown")
DAYNIGHT_IDS: dict[str, int] = {name: i for i, name in enumerate(DAYNIGHT_NAMES)}
DAY, NIGHT, DAYNIGHT_UNKNOWN = 0, 1, 2

# Crowdedness buckets over the mean number of visible vehicles per frame:
# [0, 2) quiet, [2, 5) moderate, [5, inf) crowded; the last index means unknown.
CROWD_EDGES: tuple[float, ...] = (2.0, 5.0)
CROWD_NAMES: tuple[str, ...] = ("quiet", "moderate", "crowded", "unknown")
NUM_CROWD = len(CROWD_NAMES)
CROWD_UNKNOWN = NUM_CROWD - 1


def crowd_bucket(mean_vehicles: float | None, edges: Sequence[float] = CROWD_EDGES) -> int:
    """Bucket index for a mean visible-vehicle count; ``None`` maps to unknown."""
    if mean_vehicles is None:
        return CROWD_UNKNOWN
    if mean_vehicles != mean_vehicles or mean_vehicles < 0:  # NaN or negative
        raise ValueError(f"crowd: mean vehicle count must be >= 0, got {mean_vehicles!r}")
    return sum(mean_vehicles >= e for e in edges)


def daynight_id(value: str | int | None) -> int:
    """Map 'day'/'night'/'unknown' (or an id) to its id, with a clear error otherwise."""
    if value is None:
        return DAYNIGHT_UNKNOWN
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(DAYNIGHT_NAMES):
        return value
    if isinstance(value, str) and value in DAYNIGHT_IDS:
        return DAYNIGHT_IDS[value]
    raise ValueError(f"daynight: expected one of {DAYNIGHT_NAMES} or 0..2, got {value!r}")


def class_id(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < NUM_CLASSES:
        return value
    if isinstance(value, str) and value in CLASS_IDS:
        return CLASS_IDS[value]
    raise ValueError(f"class: expected one of {CLASS_NAMES[1:]} or 1..{NUM_CLASSES - 1}, got {value!r}")
