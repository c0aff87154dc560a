import os
from pathlib import Path

import pytest
import torch

from drivesim.training import lightning_cli
from drivesim.training.lightning_cli import resolve_cpu_precision, run_lightning_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("precision", "accelerator", "supported", "cuda", "expected"), [
    ("bf16-mixed", "cpu", False, False, "32-true"),
    ("bf16-mixed", "auto", False, False, "32-true"),
    ("bf16-true", "cpu", False, True, "32-true"),
    ("bf16-mixed", "cpu", True, False, "bf16-mixed"),     # native bf16: kept
    ("bf16-mixed", "auto", False, True, "bf16-mixed"),    # auto picks the GPU: not a CPU run
    ("bf16-mixed", "gpu", False, True, "bf16-mixed"),
    ("32-true", "cpu", False, False, "32-true"),
    ("16-mixed", "cpu", False, False, "16-mixed"),
])
def test_resolve_cpu_precision(precision, accelerator, supported, cuda, expected):
    got, warning = resolve_cpu_precision(precision, accelerator, supported, cuda)
    assert got == expected
    assert (warning is not None) == (got != precision)
    if warning:
        assert precision in warning and "32-true" in warning


def test_cli_falls_back_from_bf16_only_on_cpus_without_it(monkeypatch, tmp_path):
    argv = ["--config", str(REPO / "configs/autoencoder/tiny.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger", "false"]
    monkeypatch.setattr(lightning_cli, "cpu_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="training in 32-true"):
        cli = run_lightning_cli(argv, run=False)
    assert cli.trainer.precision == "32-true"
    monkeypatch.setattr(lightning_cli, "cpu_bf16_supported", lambda: True)
    assert run_lightning_cli(argv, run=False).trainer.precision == "bf16-mixed"


@pytest.mark.parametrize(("args", "expected"), [
    (["fit", "--model.init_args.model_file", "a", "--model.lr=3", "--ckpt_path", "x"], {"model_file", "lr"}),
    (["--model.init_args.ch_mult=[1,2]", "--model.init_args.ema.decay", "0.9"], {"ch_mult", "ema"}),
    (["--config", "c.yaml", "--model.class_path", "M", "--data.init_args.root", "r"], set()),
])
def test_explicit_model_args(args, expected):
    assert lightning_cli.explicit_model_args(args) == expected


def test_reconcile_resume_args_checkpoint_beats_config_and_explicit_flags_beat_checkpoint():
    from_ckpt = {"lr": 1e-3, "noise": 0.0, "crop": [32, 64], "file": "old.st", "same": 1}
    given = {"lr": 1e-4, "noise": 0.4, "crop": (32, 64), "file": "new.st", "same": 1, "added": 7}
    merged, messages = lightning_cli.reconcile_resume_args(given, from_ckpt, explicit={"lr", "file"})
    assert merged == {"lr": 1e-4, "noise": 0.0, "crop": [32, 64], "file": "new.st", "same": 1, "added": 7}
    assert len(messages) == 3                               # the tuple/list crop is no difference
    by_field = {m.split(":")[0]: m for m in messages}
    assert "replaces the checkpoint's 0.001" in by_field["model.init_args.lr"]
    assert "resuming with the checkpoint's 0.0" in by_field["model.init_args.noise"]
    assert "0.4" in by_field["model.init_args.noise"] and "--model.init_args.noise" in by_field["model.init_args.noise"]
    assert "'new.st' replaces the checkpoint's 'old.st'" in by_field["model.init_args.file"]


def test_find_last_checkpoint_takes_the_newest_over_versions_and_dirpaths(tmp_path):
    assert lightning_cli.find_last_checkpoint([tmp_path]) is None
    files = {name: tmp_path / name for name in ["lightning_logs/version_0/checkpoints/last.ckpt",
                                                "lightning_logs/version_1/checkpoints/last-v1.ckpt",
                                                "lightning_logs/version_2/checkpoints/epoch=0.ckpt",
                                                "fixed/last.ckpt"]}
    for i, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + i * 10**9,) * 2)
    found = lightning_cli.find_last_checkpoint([tmp_path])
    assert found == files["lightning_logs/version_1/checkpoints/last-v1.ckpt"]     # not the epoch= one
    assert lightning_cli.find_last_checkpoint([tmp_path], [tmp_path / "fixed"]) == files["fixed/last.ckpt"]


CONFIGS = sorted(p for folder in ("autoencoder", "image_ldm", "video_ldm") for p in (REPO / "configs" / folder).glob("*.yaml"))
SPATIAL_UNET_KEYS = {"in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
                     "attention_resolutions", "num_head_channels", "norm_groups", "token_dim", "max_boxes"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_configs_name_no_model_file_and_later_stages_restate_no_architecture(config):
    """Model paths come from the command line (drivesim train / demo), never from a config: a
    config default would name a file that no stage writes. A stage that starts from a model file
    takes its architecture from it."""
    import yaml

    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert not {"init_from", "autoencoder_path", "model_file"} & set(args)
    if args["stage"] in ("temporal", "video", "interpolation"):
        assert not {"autoencoder", "unet", "base_channels", "ch_mult", "latent_channels"} & set(args)
        assert not SPATIAL_UNET_KEYS & set(args.get("temporal_layers", {}))
    else:
        assert {"autoencoder", "unet"} & set(args)


def _build(config: str, tmp_path, *extra: str):
    argv = ["--config", str(REPO / "configs" / config), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger", "false", *extra]
    return run_lightning_cli(argv, run=False).model


def _save(module, path, kind: str):
    from drivesim.models.model_files import save_model_file

    network = module.autoencoder if kind == "autoencoder" else module.unet
    config = network.hparams if kind == "autoencoder" else {"unet": network.config}
    return str(save_model_file(path, kind, config, network.state_dict()))


@pytest.mark.parametrize(("size", "narrow"), [("tiny", ()), ("base", ("8", "32"))])
def test_stage_configs_chain_through_model_files(tmp_path, size, narrow):
    """Each later stage's config builds its network from the previous stage's model file (base
    configs at reduced width: the structure, not the size, is under test)."""
    from drivesim.utils.io import DriveSimInputError

    ae_args = ("--model.init_args.autoencoder.init_args.base_channels", narrow[0]) if narrow else ()
    unet_args = ("--model.init_args.unet.init_args.model_channels", narrow[1]) if narrow else ()
    image_ae = _build(f"autoencoder/{size}.yaml", tmp_path, *ae_args)
    ae_file = _save(image_ae, tmp_path / "ae.safetensors", "autoencoder")
    temporal = _build(f"autoencoder/temporal_{size}.yaml", tmp_path, "--model.init_args.init_from", ae_file)
    assert temporal.autoencoder.hparams == {**image_ae.autoencoder.hparams, "temporal_decoder": True}
    image = _build(f"image_ldm/{size}.yaml", tmp_path, *unet_args)
    assert image.unet.config["in_channels"] == image_ae.autoencoder.latent_channels
    image_file = _save(image, tmp_path / "image.safetensors", "ldm")
    videos = ["video_ldm/tiny.yaml", "video_ldm/interp_tiny.yaml"] if size == "tiny" else ["video_ldm/base.yaml"]
    for config in videos:
        video = _build(config, tmp_path, "--model.init_args.init_from", image_file)
        spatial = {k: v for k, v in video.unet.config.items() if k in SPATIAL_UNET_KEYS}
        assert spatial == {k: v for k, v in image.unet.config.items() if k in SPATIAL_UNET_KEYS}
        assert video.unet.temporal and video.unet.context_encoder is not None
        assert all(torch.equal(video.unet.state_dict()[k], v) for k, v in image.unet.state_dict().items())
    with pytest.raises(DriveSimInputError, match="field 'init_from'"):
        _build(videos[0], tmp_path)
    with pytest.raises(DriveSimInputError, match="field 'init_from'"):
        _build(f"autoencoder/temporal_{size}.yaml", tmp_path)
