"""Kill training with SIGKILL and resume from the last checkpoint: the resumed run's losses
must equal an uninterrupted run's, step for step (per-step RNG + per-epoch data seeding)."""

from pathlib import Path

import pytest
import yaml
from fit_harness import (
    REPO,
    export_clips,
    read_losses,
    read_records,
    run_fit,
    run_fit_and_kill,
    write_config,
)


def _ae_config(tmp: Path, data: Path, name: str) -> Path:
    return write_config(tmp / f"{name}.yaml", {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3, "max_steps": -1, "max_time": None, "logger": False,
            "limit_val_batches": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(tmp / name),
            "callbacks": [
                {"class_path": "drivesim.training.callbacks.FiniteLossGuard"},
                {"class_path": "drivesim.training.callbacks.LossRecorder",
                 "init_args": {"path": str(tmp / name / "losses")}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp / name / "ckpt"), "every_n_epochs": 1,
                               "save_top_k": -1, "save_last": True}},
            ],
        },
        "model": {"init_args": {"autoencoder": {"init_args": {"base_channels": 8, "ch_mult": [1, 2],
                                                              "num_res_blocks": 1}},
                                "disc_start": 4, "disc_channels": 8, "disc_layers": 1,
                                "scale_batches": 1, "train_crop": [16, 16],
                                "model_file": str(tmp / name / "ae.safetensors")}},
        "data": {"init_args": {"source": "clips", "root": str(data), "height": 32, "width": 32,
                               "batch_size": 2, "num_workers": 0}},
    })


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return export_clips(tmp_path_factory.mktemp("resume") / "clips", clips=3, seconds=1.6)


def test_autoencoder_resume_after_sigkill_equals_uninterrupted(tmp_path, clips):
    base = REPO / "configs/autoencoder/tiny.yaml"
    straight = _ae_config(tmp_path, clips, "straight")
    run_fit([base, straight])
    reference = read_losses(tmp_path / "straight" / "losses")

    killed = _ae_config(tmp_path, clips, "killed")
    first_ckpt = tmp_path / "killed" / "ckpt"
    # kill right after the end-of-epoch-0 checkpoint is on disk (written atomically)
    run_fit_and_kill([base, killed], kill_when=first_ckpt / "last.ckpt")
    assert not (tmp_path / "killed" / "ae.safetensors").exists()
    # The resume's config was edited since (a loss weight): the checkpoint's value must win, or the
    # losses below would differ. Its command line names a new model file: that flag must win.
    edited = write_config(tmp_path / "edited.yaml", {"model": {"init_args": {"l2_weight": 7.0}}})
    run_fit([base, killed, edited], extra=["--ckpt_path", str(first_ckpt / "last.ckpt"),
                                           "--model.init_args.model_file", str(tmp_path / "resumed.safetensors")])
    resumed = read_losses(tmp_path / "killed" / "losses")

    assert sorted(resumed) == sorted(reference) and len(reference) >= 6
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert (tmp_path / "resumed.safetensors").exists() and not (tmp_path / "killed" / "ae.safetensors").exists()


def test_ckpt_path_last_finds_the_previous_versions_checkpoint(tmp_path, clips):
    """With a versioned logger each run writes to a new version folder, and upstream Lightning looks
    for ``last`` only in the new, empty one: the 'resumed' run would silently start from step 0."""
    base = REPO / "configs/autoencoder/tiny.yaml"
    cfg = _ae_config(tmp_path, clips, "versioned")
    config = yaml.safe_load(cfg.read_text())
    config["trainer"].update(logger=True, max_epochs=-1)
    config["trainer"]["callbacks"][2]["init_args"] = {"save_last": True, "every_n_train_steps": 1}  # no dirpath
    write_config(cfg, config)
    run_fit([base, cfg], extra=["--trainer.max_steps", "2"])
    assert list((tmp_path / "versioned" / "lightning_logs").glob("version_0/checkpoints/last.ckpt"))
    run_fit([base, cfg], extra=["--trainer.max_steps", "4", "--ckpt_path", "last",    # extends a finished run,
                                "--model.init_args.model_file", str(tmp_path / "v1.safetensors")])  # so a new file
    steps = [r["step"] for r in read_records(tmp_path / "versioned" / "losses")]
    assert steps == [0, 1, 2, 3]                          # steps 0-1 once: the second run resumed at 2
