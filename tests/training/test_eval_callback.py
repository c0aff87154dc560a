import math

import pytest
import torch
from fit_harness import export_clips

from drivesim.data.datamodule import DriveDataModule
from drivesim.metrics.oracle.model import OracleConfig, train_oracle
from drivesim.training.eval_callback import VideoEvalCallback


class _Replay(torch.nn.Module):
    """Stands in for a diffusion module: 'generates' the batch's own (real) video, or noise."""

    def __init__(self, noise: bool):
        super().__init__()
        self.noise = noise

    def predict_step(self, batch, batch_idx=0):
        assert batch["steps"] == 3  # the callback passes its sampler steps through
        video = batch["video"]
        return torch.rand_like(video) * 2 - 1 if self.noise else video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalcb")
    clips = export_clips(tmp / "clips", clips=4, seconds=2.0, fps=5.0, size="64x128")
    oracle = train_oracle(OracleConfig(num_drives=2, frames_per_drive=8, steps=40,
                                       calibration_drives=1, batch_size=8, channels=8))
    oracle.save(tmp / "oracle.pt")
    dm = DriveDataModule(source="clips", root=str(clips), frames=4, fps=5.0, height=64, width=128,
                         batch_size=2, max_boxes=8)
    dm.setup("fit")
    return clips, tmp / "oracle.pt", next(iter(dm.train_dataloader()))


def test_callback_scores_generated_videos_with_labelled_small_sample_keys(setup):
    clips, oracle_path, batch = setup
    cb = VideoEvalCallback(real=str(clips), real_split="val", metrics="oracle", num_real=1, steps=3,
                           oracle_path=str(oracle_path))
    real = cb.evaluate(_Replay(noise=False), batch)
    noise = cb.evaluate(_Replay(noise=True), batch)
    assert real and all(k.startswith("val_eval/") and k.endswith("_n2") for k in real)
    assert all(math.isfinite(v) for v in real.values())
    # the temporal-consistency distance to real clips is far larger for noise than for real video
    w1 = [k for k in real if "temporal" in k and "w1" in k]
    assert w1 and noise[w1[0]] > 3 * real[w1[0]]
