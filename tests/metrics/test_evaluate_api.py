"""The plain evaluation API a validation callback uses (in-memory tensors, no files)."""

import numpy as np
import pytest
import torch
from metric_standins import load_standin, save_standin

from drivesim.metrics.evaluate import evaluate_videos, flat_metrics, parse_metrics
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.sources import VideoSource


def _smooth_video(generator, t=24, h=16, w=32):
    """float [T, 3, H, W] in [-1, 1]: a random image drifting slowly (smooth in time)."""
    base = torch.rand(3, h, 2 * w, generator=generator) * 2 - 1
    return torch.stack([base[:, :, k // 2:k // 2 + w] for k in range(t)])


def test_from_tensor_round_trip(generator):
    video = _smooth_video(generator)
    src = VideoSource.from_tensor("v", video, fps=5.0)
    frames = src.read([0, 3])
    assert frames.dtype == np.uint8 and frames.shape == (2, 16, 32, 3)
    back = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(back, video[[0, 3]], atol=1 / 127.5, rtol=0)
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        VideoSource.from_tensor("v", video[:, :2], fps=5.0)


def test_evaluate_videos_in_memory(tmp_path, generator):
    save_standin("i3d", tmp_path / "i3d.pt", num_features=24)
    i3d = load_standin("i3d", tmp_path / "i3d.pt")
    videos = [_smooth_video(generator) for _ in range(4)]
    protocol = EvalProtocol(num_clips=64, frames_per_clip=4, window_seconds=2.0)
    same = lambda: [VideoSource.from_tensor(f"v{i}", v, fps=5.0) for i, v in enumerate(videos)]  # noqa: E731
    with pytest.warns(UserWarning, match="only 24"):
        result = evaluate_videos(same(), same(), metrics="fvd,temporal", protocol=protocol, i3d=i3d)
    assert result["fvd"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert result["temporal"]["w1"] == 0.0
    assert result["fvd"]["fake_clips"] == 24 and result["protocol"]["frames_per_clip"] == 4
    # clips start at frames 0, 4, ..., 20 (5 fps, 2 s windows = 10 frames): starts 0/4/8 in
    # window 0, 12/16 in window 1, 20 in window 2; times 4 videos
    assert [w["clips"] for w in result["fvd"]["windows"]] == [12, 8, 4]
    shuffled = [VideoSource.from_tensor(f"s{i}", v[torch.randperm(24, generator=generator)], fps=5.0)
                for i, v in enumerate(videos)]
    with pytest.warns(UserWarning):
        worse = evaluate_videos(shuffled, same(), metrics="fvd,temporal", protocol=protocol, i3d=i3d)
    assert worse["fvd"]["value"] > 0.01 and worse["temporal"]["w1"] > 0.01
    assert set(flat_metrics(worse)) == {"fvd", "temporal/w1"}


def test_metric_names_and_requirements():
    assert parse_metrics("oracle") == ("oracle", "temporal")
    with pytest.raises(ValueError, match="subset"):
        parse_metrics("fvd,lpips")
    with pytest.raises(ValueError, match="I3D"):
        evaluate_videos([], [], metrics="fvd")
