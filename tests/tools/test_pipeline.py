import sys
from pathlib import Path

import pytest

from drivesim.tools.pipeline import (
    Stage,
    StageConflict,
    StageFailed,
    is_done,
    run_pipeline,
    stage_status,
)


def _touch_stage(name: str, out: Path, counter: Path) -> Stage:
    code = (f"from pathlib import Path; Path({str(out)!r}).write_text('x'); "
            f"c = Path({str(counter)!r}); c.write_text(str(int(c.read_text() or 0) + 1) if c.exists() else '1')")
    return Stage(name=name, title=name, argv=["-c", code], outputs=[out], program=[sys.executable])


def test_finished_stages_are_skipped_and_force_reruns(tmp_path):
    counter = tmp_path / "count"
    stage = _touch_stage("a", tmp_path / "a.txt", counter)
    stamps = tmp_path / "stamps"
    first = run_pipeline([stage], stamps)
    assert not first[0].skipped and counter.read_text() == "1"
    second = run_pipeline([stage], stamps)
    assert second[0].skipped and counter.read_text() == "1"
    run_pipeline([stage], stamps, force=True)
    assert counter.read_text() == "2"


def test_a_rerun_stage_reruns_everything_after_it(tmp_path):
    stamps = tmp_path / "stamps"
    stages = [_touch_stage(n, tmp_path / f"{n}.txt", tmp_path / f"count_{n}") for n in "abc"]
    run_pipeline(stages, stamps)
    (tmp_path / "b.txt").unlink()  # stage b is no longer finished; a stays done
    results = run_pipeline(stages, stamps)
    assert [r.skipped for r in results] == [True, False, False]  # c consumed b's old output
    assert [(tmp_path / f"count_{n}").read_text() for n in "abc"] == ["1", "2", "2"]


def test_missing_output_means_not_done(tmp_path):
    stage = _touch_stage("a", tmp_path / "a.txt", tmp_path / "count")
    run_pipeline([stage], tmp_path / "stamps")
    assert is_done(stage, tmp_path / "stamps")
    (tmp_path / "a.txt").unlink()
    assert not is_done(stage, tmp_path / "stamps")


def test_a_changed_command_or_config_means_not_done(tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text("lr: 1\n")
    stage = _touch_stage("a", tmp_path / "a.txt", tmp_path / "count")
    stage.argv = [*stage.argv, str(config)]  # the script ignores it; the fingerprint does not
    run_pipeline([stage], tmp_path / "stamps")
    assert is_done(stage, tmp_path / "stamps")
    config.write_text("lr: 2\n")  # same command line, new config contents
    assert not is_done(stage, tmp_path / "stamps")
    config.write_text("lr: 1\n")
    assert is_done(stage, tmp_path / "stamps")
    changed = Stage(stage.name, stage.title, [*stage.argv, "--extra"], stage.outputs, program=stage.program)
    assert not is_done(changed, tmp_path / "stamps")
    results = run_pipeline([changed], tmp_path / "stamps")
    assert not results[0].skipped and (tmp_path / "count").read_text() == "2"


def test_failing_stage_raises_and_writes_no_stamp(tmp_path):
    stage = Stage(name="bad", title="bad", argv=["-c", "raise SystemExit(3)"],
                  program=[sys.executable])
    with pytest.raises(StageFailed, match="exit code 3"):
        run_pipeline([stage], tmp_path / "stamps")
    assert not (tmp_path / "stamps" / "bad.done.json").exists()


def test_stage_without_its_output_fails(tmp_path):
    stage = Stage(name="lazy", title="lazy", argv=["-c", "pass"], program=[sys.executable],
                  outputs=[tmp_path / "never.txt"])
    with pytest.raises(StageFailed, match="did not write"):
        run_pipeline([stage], tmp_path / "stamps")


def _ckpt_stage(name: str, work: Path, out: Path, *, fail: bool = False, argv_extra: tuple = ()) -> Stage:
    """A training stand-in: resumes from ``work/last.ckpt`` when it exists (as ``--ckpt_path last``
    does), records where it started in ``work/log``, writes ``last.ckpt`` then ``out`` (or fails
    right after the checkpoint, like a killed run)."""
    code = (f"import os; from pathlib import Path; w = Path({str(work)!r}); w.mkdir(parents=True, exist_ok=True); "
            f"c = w / 'last.ckpt'; step = int(c.read_text()) if c.exists() else 0; "
            f"open(w / 'log', 'a').write(f'start {{step}}\\n'); c.write_text(str(step + 5)); "
            f"os.environ.get('STAGE_FAILS') and exit(9); Path({str(out)!r}).write_text(c.read_text())")
    return Stage(name=name, title=name, argv=["-c", code, *argv_extra], outputs=[out], program=[sys.executable],
                 workdir=work, env={"STAGE_FAILS": "1" if fail else ""})


def test_a_stopped_stage_resumes_from_its_checkpoint_with_the_same_settings(tmp_path):
    stamps, work, out = tmp_path / ".stamps", tmp_path / "stage", tmp_path / "stage" / "model"
    with pytest.raises(StageFailed):
        run_pipeline([_ckpt_stage("s", work, out, fail=True)], stamps)
    result = run_pipeline([_ckpt_stage("s", work, out)], stamps)[0]
    assert result.resumed and (work / "log").read_text() == "start 0\nstart 5\n"  # continued at step 5
    assert out.read_text() == "10"


def test_a_stopped_stage_with_other_settings_starts_afresh_and_keeps_the_old_files(tmp_path):
    stamps, work, out = tmp_path / ".stamps", tmp_path / "stage", tmp_path / "stage" / "model"
    with pytest.raises(StageFailed):
        run_pipeline([_ckpt_stage("s", work, out, fail=True)], stamps)
    result = run_pipeline([_ckpt_stage("s", work, out, argv_extra=("--lr", "2"))], stamps)[0]
    assert not result.resumed and (work / "log").read_text() == "start 0\n"  # not the old checkpoint
    archived = tmp_path / ".previous" / "s-1"
    assert (archived / "last.ckpt").read_text() == "5"  # moved aside, not deleted


def test_a_changed_input_makes_a_finished_stage_stale(tmp_path):
    stamps, model = tmp_path / ".stamps", tmp_path / "upstream.bin"
    model.write_bytes(b"v1")
    stage = _touch_stage("b", tmp_path / "b.txt", tmp_path / "count")
    stage.inputs = [model]
    run_pipeline([stage], stamps)
    assert stage_status(stage, stamps) == "done"
    model.write_bytes(b"v2-retrained")
    assert stage_status(stage, stamps) == "stale"
    assert not run_pipeline([stage], stamps)[0].skipped  # stale stages run again, even under "refuse"
    assert (tmp_path / "count").read_text() == "2"


def test_refuse_names_the_changed_flag_or_config_before_anything_runs(tmp_path):
    stamps, config = tmp_path / ".stamps", tmp_path / "stage.yaml"
    config.write_text("lr: 1\n")
    first = _touch_stage("a", tmp_path / "a.txt", tmp_path / "count_a")
    second = _touch_stage("b", tmp_path / "b.txt", tmp_path / "count_b")
    second.argv = [*second.argv, "--config", str(config), "--minutes", "3"]
    run_pipeline([first, second], stamps)
    (tmp_path / "a.txt").unlink()  # a would run again ...
    second.argv[-1] = "5"          # ... but b's settings changed: refused before a runs
    with pytest.raises(StageConflict, match="stage b .*--minutes was '3', now '5'"):
        run_pipeline([first, second], stamps, on_change="refuse")
    assert (tmp_path / "count_a").read_text() == "1" and (tmp_path / "b.txt").exists()
    second.argv[-1] = "3"
    config.write_text("lr: 2\n")
    with pytest.raises(StageConflict, match=f"config {config} changed"):
        run_pipeline([first, second], stamps, on_change="refuse")
    results = run_pipeline([first, second], stamps, on_change="rerun")  # what --force allows
    assert [r.skipped for r in results] == [False, False]
