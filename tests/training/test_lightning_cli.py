from pathlib import Path

import pytest

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
