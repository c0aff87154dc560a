"""The one loader: every stage's model file -> a record with the right role, or a clear refusal."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
from rollout_tiny_models import write_tiny_models

from drivesim.inference import ROLES, load_model
from drivesim.models.model_files import load_model_file, save_model_file
from drivesim.utils.io import DriveSimInputError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("key,role", [("ae", "autoencoder"), ("image", "image"), ("video", "prediction"),
                                      ("interp", "interpolation")])
def test_role_is_read_from_the_file(files, key, role):
    record = load_model(files[key])
    assert record.role == role and load_model(files[key], role).role == role
    assert not record.network.training and record.path == files[key]
    if role == "autoencoder":
        assert record.schedule is None and record.config["temporal_decoder"]
        with pytest.raises(ValueError, match="no diffusion schedule"):
            record.denoiser()
    else:
        assert record.schedule.num_steps == 1000 and record.prediction == "v"
        assert record.config == record.network.config


def test_video_record_exposes_its_training_window(files):
    video = load_model(files["video"], "prediction")
    assert (video.fps, video.num_frames, video.latent_size) == (4.0, 6, None)


@pytest.mark.parametrize("key,role,field", [("image", "prediction", "unet.temporal"),
                                            ("video", "image", "unet.temporal"),
                                            ("video", "interpolation", "unet.num_regimes"),
                                            ("interp", "prediction", "unet.num_regimes"),
                                            ("ae", "image", "kind"), ("video", "autoencoder", "kind")])
def test_wrong_role_is_refused_naming_file_and_field(files, key, role, field):
    with pytest.raises(DriveSimInputError) as err:
        load_model(files[key], role)
    assert str(files[key]) in str(err.value) and f"field '{field}'" in str(err.value)


def test_bad_files(files, tmp_path):
    with pytest.raises(DriveSimInputError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="role must be one of"):
        load_model(files["video"], "upscaler")
    hparams, state = load_model_file(files["video"], "ldm")
    state = dict(state)
    state.pop(next(iter(state)))
    save_model_file(tmp_path / "short.pt", "ldm", hparams, state)
    with pytest.raises(DriveSimInputError, match="field 'state_dict'"):
        load_model(tmp_path / "short.pt")
    save_model_file(tmp_path / "sched.pt", "ldm", {**hparams, "prediction": "x0"}, load_model_file(files["video"], "ldm")[1])
    with pytest.raises(DriveSimInputError, match="hparams.schedule"):
        load_model(tmp_path / "sched.pt")


def test_every_role_is_documented():
    doc = (Path(__file__).parents[2] / "drivesim" / "inference" / "loading.py").read_text()
    assert all(f"``{role}``" in doc for role in ROLES)
