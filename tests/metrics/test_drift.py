"""Rollout drift summaries (drivesim/metrics/drift.py) from hand-made eval results."""

import json
import math

import pytest

from drivesim.metrics.drift import (
    DRIFT_SCHEMA,
    METRICS_BY_KEY,
    build_drift_report,
    check_outputs,
    compare_schedules,
    drift_ratio,
    format_table,
    plot_schedules,
    summarize_eval,
    window_metrics,
    write_drift_json,
)
from drivesim.utils.io import DriveSimInputError


def _oracle_row(w, recall, precision=0.5, iou=0.4, daynight=1.0):
    return {"window": w, "start_s": w * 60.0, "end_s": (w + 1) * 60.0,
            "box_fidelity": {"recall": recall, "precision": precision, "mean_iou": iou,
                             "boxes": 10, "blobs": 4, "frames": 120},
            "daynight": {"accuracy": daynight, "scored": 1}}


def _temporal_row(w, w1, mean_diff):
    return {"window": w, "start_s": w * 60.0, "end_s": (w + 1) * 60.0, "pairs": 119,
            "mean_diff": mean_diff, "w1": w1}


def _result(oracle_rows, temporal_rows, window_seconds=60.0, real_mean_diff=0.02):
    return {"protocol": {"window_seconds": window_seconds},
            "oracle": {"box_fidelity": {}, "daynight": {}, "windows": oracle_rows},
            "temporal": {"real_mean_diff": real_mean_diff, "w1": 0.01, "windows": temporal_rows}}


def _five_minutes():
    recalls = [0.8, 0.7, 0.6, 0.5, 0.4]
    w1s = [0.01, 0.012, 0.014, 0.016, 0.02]
    diffs = [0.03, 0.03, 0.025, 0.02, 0.05]
    return _result([_oracle_row(w, r) for w, r in enumerate(recalls)],
                   [_temporal_row(w, a, d) for w, (a, d) in enumerate(zip(w1s, diffs))])


def test_window_metrics_extracts_every_metric_per_minute():
    rows = window_metrics(_five_minutes())
    assert [r["window"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["minute"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows[0]["start_s"] == 0.0 and rows[4]["end_s"] == 300.0
    assert [r["box_recall"] for r in rows] == [0.8, 0.7, 0.6, 0.5, 0.4]
    assert rows[2]["box_precision"] == 0.5 and rows[2]["box_mean_iou"] == 0.4
    assert rows[3]["daynight_accuracy"] == 1.0
    assert rows[4]["temporal_w1"] == 0.02
    # |window mean diff - real mean diff|
    assert [r["frame_diff_gap"] for r in rows] == pytest.approx([0.01, 0.01, 0.005, 0.0, 0.03])
    assert "fvd" not in rows[0] and "fid" not in rows[0]  # not in the result: left out


def test_ratios_are_exact_and_direction_aware():
    summary = summarize_eval(_five_minutes())
    recall = summary["ratios"]["box_recall"]
    assert recall["higher_is_better"] is True
    assert recall["first"] == 0.8 and recall["last"] == 0.4
    assert recall["ratio"] == 0.5 and recall["change"] == pytest.approx(-0.4)
    assert recall["worse"] is True  # fell, and higher is better
    w1 = summary["ratios"]["temporal_w1"]
    assert w1["higher_is_better"] is False
    assert w1["ratio"] == pytest.approx(2.0) and w1["worse"] is True  # rose, lower is better
    gap = summary["ratios"]["frame_diff_gap"]
    assert gap["ratio"] == pytest.approx(3.0) and gap["worse"] is True
    dn = summary["ratios"]["daynight_accuracy"]
    assert dn["ratio"] == 1.0 and dn["worse"] is False
    # a lower-is-better metric that falls is an improvement
    m = METRICS_BY_KEY["temporal_w1"]
    better = drift_ratio([{"window": 0, "temporal_w1": 0.04}, {"window": 1, "temporal_w1": 0.01}], m)
    assert better["ratio"] == 0.25 and better["worse"] is False


def test_missing_windows_use_first_and_last_valued_window():
    oracle = [_oracle_row(0, None), _oracle_row(1, 0.6), _oracle_row(3, 0.3), _oracle_row(4, None)]
    temporal = [_temporal_row(w, 0.01 * (w + 1), 0.02) for w in (0, 1, 3, 4)]
    summary = summarize_eval(_result(oracle, temporal), num_windows=5)
    rows = summary["windows"]
    assert [r["window"] for r in rows] == [0, 1, 2, 3, 4]  # window 2 is a gap: a row of None
    assert rows[2]["box_recall"] is None and rows[2]["temporal_w1"] is None
    recall = summary["ratios"]["box_recall"]
    assert (recall["first_window"], recall["last_window"]) == (1, 3)
    assert recall["ratio"] == 0.5
    w1 = summary["ratios"]["temporal_w1"]
    assert (w1["first_window"], w1["last_window"]) == (0, 4) and w1["ratio"] == pytest.approx(5.0)


def test_undefined_ratios_say_why():
    m = METRICS_BY_KEY["box_recall"]
    one = drift_ratio([{"window": 0, "box_recall": 0.5}, {"window": 1, "box_recall": None}], m)
    assert one["ratio"] is None and one["worse"] is None and "1 window" in one["note"]
    zero = drift_ratio([{"window": 0, "box_recall": 0.0}, {"window": 1, "box_recall": 0.2}], m)
    assert zero["ratio"] is None and zero["change"] == 0.2 and zero["worse"] is False
    assert "first value is 0" in zero["note"]
    nan_row = window_metrics(_result([_oracle_row(0, float("nan"))], []))[0]
    assert nan_row["box_recall"] is None  # non-finite values are missing, not numbers


def test_unwindowed_result_is_refused():
    with pytest.raises(DriveSimInputError, match="window_seconds"):
        summarize_eval(_result([_oracle_row(0, 0.5)], [], window_seconds=None))


def test_thirty_second_windows_give_fractional_minutes():
    rows = window_metrics(_result([_oracle_row(0, 0.5), _oracle_row(1, 0.5)], [], window_seconds=30.0))
    assert [r["minute"] for r in rows] == [0.5, 1.0]
    assert [r["end_s"] for r in rows] == [30.0, 60.0]


def _two_schedules():
    constant = summarize_eval(_five_minutes())
    taper_result = _five_minutes()
    for row, r in zip(taper_result["oracle"]["windows"], [0.75, 0.75, 0.7, 0.6, 0.5625]):
        row["box_fidelity"]["recall"] = r
    return {"constant": constant, "taper": summarize_eval(taper_result)}


def test_compare_schedules_picks_by_direction():
    comp = compare_schedules(_two_schedules())
    assert comp["box_recall"] == {"higher_is_better": True, "best_last": "taper", "least_drift": "taper"}
    assert comp["temporal_w1"]["best_last"].startswith("tie")  # identical temporal rows
    assert comp["temporal_w1"]["higher_is_better"] is False


def test_drift_json_written_atomically_and_not_overwritten(tmp_path):
    schedules = _two_schedules()
    schedules["constant"]["rollout"] = {"frames": 600, "wall_s": 800.0, "cpu_s": 370.0,
                                        "frames_per_s": 0.75, "peak_rss_mib": 1013.0, "marks": []}
    report = build_drift_report(schedules, settings={"minutes": 5}, measurement="os.wait4")
    path = tmp_path / "drift.json"
    write_drift_json(path, report)
    data = json.loads(path.read_text())
    assert data["schema"] == DRIFT_SCHEMA
    assert data["schedules"]["constant"]["ratios"]["box_recall"]["ratio"] == 0.5
    assert data["schedules"]["taper"]["ratios"]["box_recall"]["ratio"] == 0.75
    assert data["metrics"]["temporal_w1"] == {"label": "temporal W1 vs real", "higher_is_better": False}
    assert data["comparison"]["box_recall"]["least_drift"] == "taper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drift.json"]  # no temporary left
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_drift_json(path, {"other": 1})
    assert path.read_bytes() == before
    write_drift_json(path, {"other": math.nan}, overwrite=True)
    assert json.loads(path.read_text()) == {"other": None}  # strict JSON: NaN -> null
    table = format_table(schedules)
    assert "box_recall" in table and "0.5" in table and "600 frames" in table


def test_check_outputs_refuses_existing_outputs_without_overwrite(tmp_path):
    check_outputs(tmp_path, ["constant", "taper"], overwrite=False)  # nothing there yet
    (tmp_path / "taper").mkdir()
    check_outputs(tmp_path, ["constant", "taper"], overwrite=False)  # an empty folder is fine
    (tmp_path / "taper" / "frames.mp4").write_bytes(b"x")
    with pytest.raises(DriveSimInputError, match="taper.*--overwrite"):
        check_outputs(tmp_path, ["constant", "taper"], overwrite=False)
    check_outputs(tmp_path, ["constant", "taper"], overwrite=True)
    (tmp_path / "taper" / "frames.mp4").unlink()
    (tmp_path / "drift.json").write_text("{}")
    with pytest.raises(DriveSimInputError, match="drift.json"):
        check_outputs(tmp_path, ["constant"], overwrite=False)


def test_plot_one_panel_per_metric_refuses_overwrite(tmp_path):
    path = plot_schedules(_two_schedules(), tmp_path / "drift.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        plot_schedules(_two_schedules(), tmp_path / "drift.png")
    empty = {"constant": summarize_eval(_result([], []))}
    assert plot_schedules(empty, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_drift_script_peak_rss_is_the_childs_own_not_the_parents(tmp_path):
    """The rollout child's peak RSS comes from its own VmHWM: ``ru_maxrss`` carries the
    parent's RSS at fork/exec on Linux, which made a second rollout look 1.4x bigger."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from eval_rollout_drift import run_measured

    ballast = bytearray(400 * 2**20)  # the parent holds 400 MiB, touched
    ballast[::4096] = b"\1" * len(ballast[::4096])
    child = [sys.executable, "-c", "import time; b = bytearray(60 * 2**20); b[::4096] = b'1' * len(b[::4096]); "
             "time.sleep(1.0)"]
    out = run_measured(child, tmp_path, threads=1, poll=0.05)
    assert out["ru_maxrss_mib"] > 400          # the inherited figure
    assert 60 < out["peak_rss_mib"] < 200      # the child's own: 60 MiB + the interpreter
    assert out["samples"] and out["cpu_s"] >= 0
    del ballast
