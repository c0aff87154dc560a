import math

import pytest

from drivesim.data import labels


def test_crowd_buckets_follow_edges():
    assert [labels.crowd_bucket(x) for x in (0, 1.9, 2.0, 4.99, 5.0, 40)] == [0, 0, 1, 1, 2, 2]
    assert labels.crowd_bucket(None) == labels.CROWD_UNKNOWN
    with pytest.raises(ValueError, match="nan"):
        labels.crowd_bucket(math.nan)


def test_daynight_and_class_lookup_with_clear_errors():
    assert labels.daynight_id("night") == labels.NIGHT
    assert labels.daynight_id(None) == labels.DAYNIGHT_UNKNOWN
    with pytest.raises(ValueError, match="'dusk'"):
        labels.daynight_id("dusk")
    assert labels.class_id("truck") == 2
    with pytest.raises(ValueError, match="'tram'"):
        labels.class_id("tram")
    with pytest.raises(ValueError):
        labels.class_id(0)  # 0 is padding, never the class of a real box
