"""The drift plot draws the real clips' level beside every windowed metric."""

import matplotlib.axes

from drivesim.metrics.plots import drift_series, plot_drift, real_levels


def _result():
    rows = [{"window": w, "start_s": 60.0 * w} for w in range(3)]
    return {
        "fvd": {"real_level": 12.5, "windows": [{**r, "value": 40.0 + w} for w, r in enumerate(rows)]},
        "temporal": {"real_level": 0.004, "windows": [{**r, "w1": 0.01 * (w + 1)} for w, r in enumerate(rows)]},
        "oracle": {"real_level": {"recall": 0.8, "precision": 0.7, "mean_iou": 0.5, "daynight_accuracy": 1.0},
                   "windows": [{**r, "box_fidelity": {"recall": 0.5, "precision": 0.4, "mean_iou": 0.3},
                                "daynight": {"accuracy": 1.0}} for r in rows]},
        "c2st": {"real_level": 0.5, "frame": {"windows": [{**r, "accuracy": 0.9} for r in rows]},
                 "clip": {"accuracy": None, "note": "too few groups", "windows": []}},
    }


def test_real_levels_match_the_series():
    result = _result()
    levels, series = real_levels(result), drift_series(result)
    assert levels["FVD"] == 12.5 and levels["temporal W1 (frame diff)"] == 0.004
    assert levels["box recall"] == 0.8 and levels["day/night accuracy"] == 1.0
    assert levels["C2ST frame accuracy"] == 0.5
    assert set(series) == {"FVD", "temporal W1 (frame diff)", "box recall", "box precision", "box mean_iou",
                           "day/night accuracy", "C2ST frame accuracy"}
    assert set(series) <= set(levels)
    result["fvd"]["real_level"] = None            # e.g. real statistics from the cache
    assert "FVD" not in real_levels(result)


def test_plot_drift_draws_a_real_line_per_panel(tmp_path, monkeypatch):
    drawn = []
    original = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        drawn.append((self.get_ylabel(), y))
        return original(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    path = plot_drift(_result(), tmp_path / "drift.png")
    assert path.stat().st_size > 0
    levels, series = real_levels(_result()), drift_series(_result())
    assert len(drawn) == len(series) == 7
    assert sorted(y for _, y in drawn) == sorted(levels[name] for name in series)
