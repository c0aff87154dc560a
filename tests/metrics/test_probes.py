"""Quality probes (drivesim.metrics.probes + benchmarks/eval_{image,video}_ldm.py): pairing,
scoring and aggregation with a stub oracle and painted fake samples; the alpha = 1 network
on a tiny video UNet; both scripts end to end on tiny random model files."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from drivesim.data.labels import DAY
from drivesim.diffusion.masks import context_mask_from_counts
from drivesim.metrics.oracle.model import Oracle, OracleConfig, VehicleSegmenter
from drivesim.metrics.oracle.scores import boxes_to_mask
from drivesim.metrics.probes import (
    IMAGE_VARIANTS,
    ImageOnlyNetwork,
    ImageScenario,
    RealWindows,
    frame_gaps,
    image_grid,
    image_probe_report,
    image_probe_rows,
    image_probe_table,
    night_darker_fraction,
    nonfinite_fields,
    sample_paired_images,
    shuffled_frames,
    split_halves,
    temporal_scores,
    video_probe_report,
    video_probe_rows,
    video_probe_table,
    world_scenarios,
)
from drivesim.models.conditioning import Conditioning
from drivesim.models.unet import UNet

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "rollout"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from rollout_tiny_models import UNET, write_tiny_models  # noqa: E402

H, W = 32, 64
RED = np.array([230, 20, 20], np.uint8)


class StubOracle:
    """Vehicle = saturated red pixel (probability 1), night = mean luma below 0.3."""

    luma_threshold = 0.3
    calibration = {"source": "stub"}

    def vehicle_prob(self, frames: np.ndarray) -> np.ndarray:
        f = frames.astype(np.int16)
        return ((f[..., 0] > 200) & (f[..., 1] < 60) & (f[..., 2] < 60)).astype(np.float32)

    def luma(self, frames: np.ndarray) -> np.ndarray:
        return (frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean(axis=(1, 2)) / 255.0

    def is_night(self, mean_luma: float) -> bool:
        return mean_luma < self.luma_threshold


def paint(boxes: np.ndarray, night: bool, rng: np.random.Generator) -> np.ndarray:
    """A grey frame (bright by day, dark at night) with red vehicles exactly in ``boxes``."""
    frame = np.full((H, W, 3), 40 if night else 150, np.uint8)
    frame += rng.integers(0, 20, (H, W, 3), dtype=np.uint8)
    frame[boxes_to_mask(boxes, H, W)] = RED
    return frame


def random_boxes(rng: np.random.Generator, count: int = 2) -> np.ndarray:
    x1, y1 = rng.uniform(0.0, 0.6, count), rng.uniform(0.0, 0.5, count)
    return np.stack([x1, y1, x1 + 0.3, y1 + 0.4], axis=1).astype(np.float32)


def scenarios(count: int) -> list[ImageScenario]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(count):
        boxes = random_boxes(rng)
        classes = np.array([1, 2], np.int64)
        out.append(ImageScenario(i, boxes, classes, np.array([1, 2]), 1,
                                 paint(boxes, False, rng), paint(boxes, True, rng)))
    return out


class PaintingSampler:
    """Fake ``ImageSampleFn``: the noise (seed) places vehicles; with boxes they are painted
    exactly inside the conditioned vehicle boxes instead. Records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, bool, int]] = []

    def __call__(self, batch, night, with_boxes, seed):
        self.calls.append((batch[0].seed, night, with_boxes, seed))
        rng = np.random.default_rng(seed)
        frames = []
        for s in batch:
            noise_boxes = random_boxes(rng)
            frames.append(paint(s.vehicles if with_boxes else noise_boxes, night, rng))
        return np.stack(frames)


def test_paired_sampling_seeds_and_shapes():
    fake, scen = PaintingSampler(), scenarios(5)
    samples = sample_paired_images(fake, scen, batch_size=2, seed=7)
    assert set(samples) == set(IMAGE_VARIANTS)
    for by in samples.values():
        assert by["day"].shape == by["night"].shape == (5, H, W, 3)
    # batch k: every (variant, day/night) call uses seed 7 + k (paired noise)
    for first, seed in ((0, 7), (2, 8), (4, 9)):
        calls = {(n, b) for s, n, b, sd in fake.calls if s == first and sd == seed}
        assert calls == {(False, True), (True, True), (False, False), (True, False)}
    with pytest.raises(ValueError, match="uint8"):
        sample_paired_images(lambda b, n, w, s: np.zeros((len(b), H, W, 3), np.float32), scen, 2, 0)


def test_image_report_boxes_beat_dropped_boxes_and_night_is_darker():
    scen = scenarios(6)
    samples = sample_paired_images(PaintingSampler(), scen, batch_size=4, seed=0)
    report = image_probe_report(StubOracle(), scen, samples)
    fid = report["box_fidelity"]
    assert fid["boxes"]["recall"] == 1.0 and fid["boxes"]["precision"] == 1.0
    assert fid["boxes"]["mean_iou"] == pytest.approx(1.0)
    assert fid["no_boxes"]["recall"] < 0.8 and fid["no_boxes"]["mean_iou"] < 0.6
    assert fid["real"]["recall"] == 1.0
    assert fid["boxes"]["boxes"] == fid["no_boxes"]["boxes"] == 2 * 2 * 6  # same boxes, day + night
    assert report["recall_gain"] == pytest.approx(1.0 - fid["no_boxes"]["recall"])
    for name in (*IMAGE_VARIANTS, "real"):
        assert report["daynight"][name]["night_darker_fraction"] == 1.0
        assert report["daynight"][name]["daynight_accuracy"] == 1.0
    assert not nonfinite_fields(report)
    json.dumps(report, allow_nan=False)
    table = image_probe_table(report)
    assert "no_boxes" in table and "real" in table
    rows = image_probe_rows(scen, samples, limit=3)
    assert len(rows) == 3 and all(len(r) == 5 for r in rows)
    assert image_grid(rows).shape == (3 * (H + 2) + 2, 5 * (W + 2) + 2, 3)


def test_night_darker_fraction_and_daynight_errors():
    assert night_darker_fraction(np.array([0.5, 0.5, 0.2, 0.4]), np.array([0.1, 0.6, 0.1, 0.4])) == 0.5
    with pytest.raises(ValueError):
        night_darker_fraction(np.zeros(3), np.zeros(2))
    # a sampler that ignores day/night: pairs are identical, never darker
    scen = scenarios(4)
    flat = sample_paired_images(lambda b, n, w, s: PaintingSampler()(b, False, w, s), scen, 4, 0)
    report = image_probe_report(StubOracle(), scen, flat)
    assert report["daynight"]["boxes"]["night_darker_fraction"] == 0.0
    assert report["daynight"]["boxes"]["daynight_accuracy"] == 0.5


def test_nonfinite_fields_paths():
    assert nonfinite_fields({"a": [1.0, {"b": float("nan")}], "c": None, "d": float("inf")}) == ["a[1].b", "d"]


def test_world_scenarios_share_boxes_day_and_night():
    scen = world_scenarios(10_000, 2, 16, 32, max_boxes=3)
    again = world_scenarios(10_000, 2, 16, 32, max_boxes=3)
    for s, t in zip(scen, again):
        assert s.real_day.shape == s.real_night.shape == (16, 32, 3)
        assert np.array_equal(s.boxes, t.boxes) and np.array_equal(s.real_night, t.real_night)
        assert len(s.boxes) <= 3 and (s.classes > 0).all()
        assert s.real_night.mean() < s.real_day.mean()
    assert scen[0].seed != scen[1].seed


# ---------------------------------------------------------------------------- video
def tiny_video_unet() -> UNet:
    torch.manual_seed(0)
    unet = UNet(**UNET, temporal=True, use_context=True).eval()
    with torch.no_grad():  # output and temporal layers are zero-initialised: make them matter
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def video_inputs(frames: int = 4) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, frames, 4, 8, 16, generator=g)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.7]]).expand(1, frames, 1, 4).contiguous()
    cond = Conditioning(boxes=boxes, box_classes=torch.ones(1, frames, 1, dtype=torch.long),
                        daynight=torch.tensor([DAY]), crowd=torch.tensor([1]),
                        context=x.clone(), context_mask=context_mask_from_counts(torch.tensor([2]), frames))
    return x, torch.tensor([500.0]), cond


@torch.no_grad()
def test_image_only_network_skips_temporal_layers():
    unet = tiny_video_unet()
    x, t, cond = video_inputs()
    alpha1 = ImageOnlyNetwork(unet)
    assert unet.image_only is False  # the original is untouched
    normal_out, alpha1_out = unet(x, t, cond), alpha1(x, t, cond)
    assert (normal_out - alpha1_out).abs().max() > 1e-3
    # no temporal mixing: changing frame 3 leaves frames 0..2 of the alpha = 1 output unchanged
    x2 = x.clone()
    x2[:, 3] += 1.0
    assert torch.allclose(alpha1(x2, t, cond)[:, :3], alpha1_out[:, :3], atol=1e-5)
    assert (unet(x2, t, cond)[:, :3] - normal_out[:, :3]).abs().max() > 1e-4
    # the temporal weights are really unused: perturbing them changes only the normal model
    for name, p in unet.named_parameters():
        if "temporal" in name:
            p.add_(0.1)
    assert torch.allclose(ImageOnlyNetwork(unet)(x, t, cond), alpha1_out, atol=1e-5)
    with pytest.raises(ValueError, match="no temporal"):
        ImageOnlyNetwork(UNet(**UNET))


def test_alpha1_prediction_sampler_changes_predicted_frames(generator):
    from drivesim.diffusion.schedule import DiscreteVPSchedule
    from drivesim.inference import diffusion_record
    from drivesim.rollout.engine import SegmentCondition
    from drivesim.rollout.sampler import PredictionSampler

    model = diffusion_record(tiny_video_unet(), DiscreteVPSchedule(num_steps=1000), "v")
    x, _, cond = video_inputs(5)
    seg = SegmentCondition(cond.boxes, cond.box_classes, None, cond.daynight, cond.crowd, 2, 5)
    normal = PredictionSampler(model, 2)(x[:, :2], seg, torch.Generator().manual_seed(0))
    alpha1 = PredictionSampler(replace(model, network=ImageOnlyNetwork(model.network)), 2)(
        x[:, :2], seg, torch.Generator().manual_seed(0))
    assert torch.equal(normal[:, :2], x[:, :2]) and torch.equal(alpha1[:, :2], x[:, :2])  # context kept
    assert (normal[:, 2:] - alpha1[:, 2:]).abs().mean() > 1e-3


def moving_windows(count: int, frames: int, rng: np.random.Generator) -> RealWindows:
    """Red vehicles sliding slowly over a grey road: coherent real windows with boxes."""
    video = np.zeros((count, frames, H, W, 3), np.uint8)
    boxes = np.zeros((count, frames, 2, 4), np.float32)
    classes = np.zeros((count, frames, 2), np.int64)
    for j in range(count):
        start = random_boxes(rng, 1)[0]
        for i in range(frames):
            b = start + np.array([0.02 * i, 0, 0.02 * i, 0], np.float32)
            boxes[j, i, 0], classes[j, i, 0] = np.clip(b, 0, 1), 1
            video[j, i] = paint(boxes[j, i, :1], False, np.random.default_rng(j))  # fixed texture
    return RealWindows(video, boxes, classes, fps=4.0)


def test_video_report_coherent_beats_flicker():
    rng = np.random.default_rng(0)
    real = moving_windows(4, 6, rng)
    reference = list(moving_windows(6, 6, rng).frames)
    flicker = real.frames.copy()
    for j in range(4):  # same boxes, independent background noise per predicted frame
        for i in range(2, 6):
            flicker[j, i] = paint(real.boxes[j, i, :1], False, rng)
    flicker[:, 2:, :, :, 1] //= 2  # and a brightness jump at the context -> prediction seam
    samples = {"normal": real.frames.copy(), "alpha1": flicker}
    report = video_probe_report(StubOracle(), real, samples, 2, reference)
    tmp, cont = report["temporal"], report["continuation"]
    assert tmp["normal"]["w1"] < tmp["alpha1"]["w1"]
    assert tmp["real_vs_real"]["real_pairs"] == 3 * 5 and tmp["normal"]["fake_pairs"] == 4 * 5
    warp = report["warp"]
    assert warp["normal"]["pairs"] == 4 * 5 and warp["real"]["pairs"] == 6 * 5
    assert warp["normal"]["residual"] < warp["alpha1"]["residual"]
    assert warp["real"]["residual"] < warp["real_shuffled"]["residual"]
    assert cont["normal"] == pytest.approx(cont["real_next_frame"])
    assert cont["alpha1"] > 3 * cont["normal"]
    assert report["box_recall_per_frame"]["normal"] == [1.0] * 4
    assert report["box_recall_per_frame"]["real"] == [1.0] * 4
    assert report["box_fidelity_predicted"]["alpha1"]["boxes"] == 4 * 4
    assert not nonfinite_fields(report)
    json.dumps(report, allow_nan=False)
    assert "real vs real" in video_probe_table(report)
    assert len(video_probe_rows(real, samples, limit=2)) == 2 * 3
    with pytest.raises(ValueError, match="num_context"):
        video_probe_report(StubOracle(), real, samples, 6, reference)


def test_video_report_decoded_reference_is_the_blurred_level():
    """Thin lines moving further than their width (lane dashes at 2 fps): through a (here:
    box-blur) 'autoencoder' they keep their motion but change less per pixel, the level a
    latent model decoding through that AE can reach."""
    import cv2

    rng = np.random.default_rng(0)
    real = moving_windows(4, 6, rng)
    reference = []
    for j in range(6):
        v = np.full((6, H, W, 3), 90, np.uint8)
        for i in range(6):
            for x0 in range(4 + j, W - 20, 16):
                v[i, :, x0 + 3 * i] = 230  # one-pixel lines, 3 pixels per frame
        reference.append(v)
    decoded = [np.stack([cv2.blur(f, (5, 5)) for f in v]) for v in reference]
    report = video_probe_report(StubOracle(), real, {"normal": real.frames.copy()}, 2, reference, decoded)
    dec, cal = report["temporal"]["real_decoded"], report["temporal"]["real_vs_real"]
    assert dec["fake_pairs"] == cal["fake_pairs"] == 3 * 5
    assert dec["fake_mean_diff"] < cal["fake_mean_diff"] and dec["w1"] > cal["w1"]
    assert report["warp"]["real_decoded"]["pairs"] == 6 * 5
    assert report["warp"]["real_decoded"]["raw"] < report["warp"]["real"]["raw"]
    assert "real via AE" in video_probe_table(report)
    with pytest.raises(ValueError, match="decoded reference"):
        video_probe_report(StubOracle(), real, {"normal": real.frames}, 2, reference, decoded[:3])


def test_temporal_scores_and_gaps():
    rng = np.random.default_rng(0)
    clips = list(moving_windows(4, 5, rng).frames)
    same = temporal_scores(clips, clips, 4.0)
    assert same["w1"] == pytest.approx(0.0, abs=1e-9) and same["fake_pairs"] == 16
    a, b = split_halves(list(range(5)))
    assert (a, b) == ([0, 2, 4], [1, 3])
    shuffled = shuffled_frames(clips, seed=3)
    for a_clip, s_clip in zip(clips, shuffled):
        assert len(s_clip) == len(a_clip) and not any(np.array_equal(a_clip[i], s_clip[i]) for i in range(5))
        assert sorted(map(bytes, s_clip)) == sorted(map(bytes, a_clip))  # a permutation of the frames
    still = np.repeat(clips[0][None, :1], 3, axis=1)  # [1, 3, H, W, 3] identical frames
    assert frame_gaps(still).shape == (1, 2) and not frame_gaps(still).any()


# ---------------------------------------------------------------------------- scripts
@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_models")
    paths = write_tiny_models(root)
    cfg = OracleConfig(height=16, width=32, channels=4)
    torch.manual_seed(0)
    oracle = Oracle(cfg, VehicleSegmenter(cfg.channels), 0.3, {"box_fidelity": {}})
    oracle.save(root / "oracle.pt")
    paths["oracle"] = root / "oracle.pt"
    return paths


def test_image_script_end_to_end(tiny_files, tmp_path):
    import eval_image_ldm

    out = tmp_path / "img"
    argv = ["--ldm", str(tiny_files["image"]), "--ae", str(tiny_files["ae"]), "--out", str(out),
            "--pairs", "3", "--steps", "2", "--batch-size", "2", "--size", "16x32",
            "--oracle", str(tiny_files["oracle"])]
    assert eval_image_ldm.main(argv) == 0
    report = json.loads((out / "image_ldm_probe.json").read_text())
    assert report["pairs"] == 3 and set(report["box_fidelity"]) == {"boxes", "no_boxes", "real"}
    assert report["settings"]["frame_size"] == [16, 32]
    assert report["daynight"]["real"]["night_darker_fraction"] == 1.0
    assert not nonfinite_fields(report)
    assert (out / "image_ldm_probe.png").stat().st_size > 0
    with pytest.raises(FileExistsError):
        eval_image_ldm.main(argv)


def test_video_script_end_to_end(tiny_files, tmp_path):
    import eval_video_ldm

    from drivesim.data.clip_format import ClipWriter, manifest_entry, read_clip, write_manifest

    data, entries = tmp_path / "data", []
    for k in range(3):  # 3 val clips of 6 frames at 4 fps (the tiny video model's rate)
        clip_dir = data / f"clip{k}"
        with ClipWriter(clip_dir, fps=4.0, height=16, width=32, labels={"daynight": "day"},
                        frames_format="png") as w:
            for i in range(6):
                frame = np.full((16, 32, 3), 90 + 10 * i, np.uint8)
                w.add_frame(frame, boxes=np.array([[0.1, 0.2, 0.6, 0.9]], np.float32),
                            classes=np.array([1]), track_ids=np.array([1]), visibility=np.ones(1, np.float32))
        entries.append(manifest_entry(read_clip(clip_dir), data, "val"))
    write_manifest(data, entries)
    out = tmp_path / "vid"
    argv = ["--ldm", str(tiny_files["video"]), "--ae", str(tiny_files["ae"]), "--data", str(data),
            "--out", str(out), "--clips", "2", "--steps", "2", "--size", "16x32",
            "--oracle", str(tiny_files["oracle"])]
    assert eval_video_ldm.main(argv) == 0
    report = json.loads((out / "video_ldm_probe.json").read_text())
    assert (report["clips"], report["frames"], report["num_context"]) == (2, 6, 2)
    assert set(report["temporal"]) == {"real_vs_real", "real_decoded", "normal", "alpha1", "no_boxes"}
    assert report["warp"]["real_decoded"]["pairs"] == report["warp"]["real"]["pairs"]
    assert report["temporal"]["normal"]["w1"] != report["temporal"]["alpha1"]["w1"]
    assert len(report["box_recall_per_frame"]["normal"]) == 4
    assert not nonfinite_fields(report)
    assert (out / "video_ldm_probe.png").stat().st_size > 0
