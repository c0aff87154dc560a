import sys
from pathlib import Path

import pytest

from drivesim.tools.pipeline import Stage, StageFailed, is_done, run_pipeline


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


def test_train_command_assembles_fit_argv_and_names_bad_inputs(tmp_path):
    from drivesim.tools.train import build_fit_argv
    from drivesim.utils.io import DriveSimInputError

    data = tmp_path / "latents"
    data.mkdir()
    ae = tmp_path / "ae.safetensors"
    ae.write_bytes(b"x")
    argv = build_fit_argv("image_ldm", "tiny", str(data), tmp_path / "out", ae=str(ae))
    assert argv[:3] == ["fit", "--config", "configs/image_ldm/tiny.yaml"]
    assert argv[argv.index("--data.init_args.source") + 1] == "latents"
    assert argv[argv.index("--model.init_args.autoencoder_path") + 1] == str(ae)
    with pytest.raises(DriveSimInputError, match="--stage.*'imgae_ldm'"):
        build_fit_argv("imgae_ldm", "tiny", str(data), tmp_path)
    with pytest.raises(DriveSimInputError, match="--ae"):
        build_fit_argv("image_ldm", "tiny", str(data), tmp_path)
    with pytest.raises(DriveSimInputError, match="--init"):
        build_fit_argv("video_ldm", "tiny", str(data), tmp_path, ae=str(ae))
    with pytest.raises(DriveSimInputError, match="no huge config"):
        build_fit_argv("image_ldm", "huge", str(data), tmp_path, ae=str(ae))
    with pytest.raises(DriveSimInputError, match="missing.safetensors.*--init"):
        build_fit_argv("video_ldm", "tiny", str(data), tmp_path, ae=str(ae),
                       init=str(tmp_path / "missing.safetensors"))
