"""The training chain end to end on fixture dashcam videos at micro widths (two steps per stage):
conversion with a corrupt video left out, every stage feeding the next, the run folder loaded by
the rollout, a stopped stage resuming from its checkpoint, one stage retrained alone, and a run
starting from another run's models. Slow (about half a minute on 2 cores): the fast checks of
the same logic without training are tests/tools/test_chain.py and test_pipeline.py."""

import logging
from dataclasses import replace

import pytest
from chain_fixtures import write_micro_configs, write_videos

from drivesim.cli import main
from drivesim.inference.run_folder import resolve_run
from drivesim.tools.chain import ChainSpec
from drivesim.tools.pipeline import StageFailed
from drivesim.tools.run_info import rollout_args
from drivesim.tools.runs import run_chain

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _in_process(stage) -> int:
    return main(stage.argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    configs = write_micro_configs(root / "configs")
    videos = root / "videos"
    write_videos(videos, count=2, frames=80, corrupt=1)
    spec = ChainSpec(run=root / "runs" / "mine", data=str(videos), config_root=configs, progress=False)
    results = run_chain(spec, runner=_in_process)
    return root, spec, results


def test_the_chain_trains_every_stage_into_a_run_the_rollout_loads(trained, tmp_path):
    root, spec, results = trained
    assert [r.name for r in results if not r.skipped] == ["data", "autoencoder", "autoencoder_temporal", "latents",
                                                          "image_ldm", "video_ldm", "interpolation", "upsampler"]
    files = resolve_run(spec.run)
    assert sorted(files) == ["autoencoder", "image", "interpolation", "upsampler", "video"]
    out = tmp_path / "drive"
    assert main(["rollout", "--run", str(spec.run), "--out", str(out), "--seconds", "2", "--steps", "2",
                 "--interp-passes", "1", "--no-progress", *rollout_args(spec.run)]) == 0
    from drivesim.data.clip_format import read_clip

    clip = read_clip(out)
    assert clip.num_frames >= 8 and (clip.height, clip.width) == (128, 256)  # 32x64 decoded, x4 upsampled
    assert all(r.skipped for r in run_chain(spec, runner=_in_process))  # a re-run has nothing left to do


def test_a_stopped_stage_resumes_from_its_last_checkpoint(trained, caplog):
    root, spec, _ = trained

    def stopped_after_training(stage) -> int:
        main(stage.argv)  # trains and checkpoints, then "dies" before the stage is stamped
        return 137

    with pytest.raises(StageFailed, match="exit code 137"):
        run_chain(replace(spec, stages=("video_ldm",)), force=True, runner=stopped_after_training)
    caplog.set_level(logging.INFO)
    result = run_chain(replace(spec, stages=("video_ldm",)), runner=_in_process)[0]
    assert result.resumed and not result.skipped
    assert "--ckpt_path last: resuming from" in caplog.text and str(spec.run / "video_ldm") in caplog.text


def test_a_run_starts_from_another_runs_models(trained):
    root, spec, _ = trained
    other = ChainSpec(run=root / "runs" / "finetuned", data=spec.data, config_root=spec.config_root, init=spec.run,
                      progress=False)
    results = run_chain(other, runner=_in_process)
    assert not any(r.skipped for r in results)

    def stamp(name):
        return (other.run / ".stamps" / f"{name}.done.json").read_text()

    for name in ("autoencoder", "image_ldm", "upsampler"):  # init_from the first run's file
        assert str(spec.run / name / "model.safetensors") in stamp(name)
    for name, earlier in (("autoencoder_temporal", "autoencoder"), ("video_ldm", "image_ldm"),
                          ("interpolation", "image_ldm")):  # this run's spatial layers, the first run's temporal
        assert str(other.run / earlier / "model.safetensors") in stamp(name)
        assert str(spec.run / name / "model.safetensors") in stamp(name)
    assert sorted(resolve_run(other.run)) == ["autoencoder", "image", "interpolation", "upsampler", "video"]
