"""Dashcam videos -> clips, and the shared converter helpers (data_prep/common.py).

Fixture videos are generated here: every source frame is a flat grey whose level encodes
its index, so the level found in an output frame says exactly which source frame the
converter picked (survives H.264 to within a few levels).
"""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.common import ResizeCrop, nearest_indices, resample_times, sample_at
from data_prep.videos_to_clips import read_label_csv
from drivesim.cli import main
from drivesim.data.clip_format import read_clip, read_manifest
from drivesim.utils.io import DriveSimInputError, read_json

LEVEL_STEP = 6  # grey level per source frame index


def write_video(path: Path, times: list[float], hw: tuple[int, int], *, rotation: int = 0,
                frame_fn=None, codec: str = "libx264") -> None:
    """Frames at the given presentation times (seconds); millisecond time base (VFR ok)."""
    h, w = hw
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            img = frame_fn(i) if frame_fn else np.full((h, w, 3), (i * LEVEL_STEP) % 250, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def half_white(i: int) -> np.ndarray:
    img = np.zeros((64, 128, 3), np.uint8)
    img[:32] = 255  # top half white (stored orientation)
    return img


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dashcam")
    (root / "day").mkdir()
    write_video(root / "day" / "cfr.mp4", [i / 30 for i in range(75)], (90, 160))          # 2.5 s
    rng = np.random.default_rng(0)
    vfr = np.cumsum(rng.uniform(0.02, 0.07, size=60))                                       # ~2.7 s
    write_video(root / "vfr.mov", [0.0, *vfr.tolist()], (150, 270))                          # odd aspect
    write_video(root / "rotated.mp4", [i / 10 for i in range(12)], (64, 128), rotation=90,
                frame_fn=half_white)
    write_video(root / "short.mp4", [i / 30 for i in range(10)], (90, 160))                 # 0.33 s
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(3000))
    (root / "labels.csv").write_text("filename,daynight,weather,split\nday/cfr.mp4,night,rain,val\n"
                                     "vfr.mov,day,clear,train\n")
    return root


def convert(videos: Path, out: Path, *extra: str) -> int:
    return main(["data", "videos", "--input", str(videos), "--out", str(out), "--labels",
                 str(videos / "labels.csv"), "--clip-seconds", "1", "--fps", "10", "--size", "64x96",
                 "--no-progress", *extra])


def grey(clip, k: int) -> float:
    return float(clip.frames([k])[0].mean())


def test_folder_converts_with_labels_skips_short_and_reports_corrupt(videos, tmp_path):
    out = tmp_path / "ds"
    assert convert(videos, out) == 1  # the corrupt file makes the exit code 1 ...
    report = read_json(out / "conversion_report.json")
    bad = report["failed"]
    assert list(bad) == [str(videos / "corrupt.mp4")] and "corrupt.mp4" in bad[str(videos / "corrupt.mp4")]
    assert "too short" in report["skipped"]["short"]
    # ... but every other video converted: 2 clips of 1 s from each 2.5+ s video, 1 from rotated
    assert sorted(report["converted"]) == ["day_cfr_000", "day_cfr_001", "rotated_000", "vfr_000", "vfr_001"]
    entries = {e.clip_id: e for e in read_manifest(out)}
    assert set(entries) == set(report["converted"])
    cfr = read_clip(out / "day_cfr_000")
    assert (cfr.num_frames, cfr.fps, cfr.height, cfr.width) == (10, 10.0, 64, 96)
    assert cfr.labels["daynight"] == "night" and cfr.labels["weather"] == "rain"
    assert entries["day_cfr_000"].split == "val" and entries["vfr_000"].split == "train"
    assert cfr.labels["crowd"] == "unknown" and all(len(b) == 0 for b in cfr.boxes)
    assert entries["rotated_000"].daynight == 2  # not in the CSV: unknown


def test_constant_rate_picks_the_right_source_frames(videos, tmp_path):
    out = tmp_path / "ds"
    convert(videos, out)
    clip = read_clip(out / "day_cfr_001")  # starts at 1.0 s: source frames 30, 33, 36, ...
    for k in range(10):
        assert abs(grey(clip, k) - ((30 + 3 * k) * LEVEL_STEP) % 250) < 4, k


def test_variable_frame_rate_is_resampled_by_timestamp(videos, tmp_path):
    out = tmp_path / "ds"
    convert(videos, out)
    rng = np.random.default_rng(0)
    src = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.07, size=60))])
    for c, start in ((0, 0.0), (1, 1.0)):
        clip = read_clip(out / f"vfr_{c:03d}")
        assert clip.num_frames == 10
        want = nearest_indices(src, start + np.arange(10) / 10)
        got = [grey(clip, k) for k in range(10)]
        assert np.allclose(got, (want * LEVEL_STEP) % 250, atol=4), (got, want)


def test_display_rotation_is_applied(videos, tmp_path):
    out = tmp_path / "ds"
    convert(videos, out)
    frame = read_clip(out / "rotated_000").frames([0])[0].mean(axis=2)  # [64, 96]
    # stored 64x128 with the top half white, displayed rotated 90 deg counter-clockwise:
    # a 128x64 portrait frame whose LEFT half is white; covering 64x96 crops its middle rows.
    assert frame[:, :40].mean() > 200 and frame[:, 56:].mean() < 50


def test_resume_skips_finished_clips_and_overwrite_redoes_them(videos, tmp_path):
    out = tmp_path / "ds"
    convert(videos, out)
    stamp = (out / "vfr_000" / "clip.json").stat().st_mtime_ns
    convert(videos, out)
    report = read_json(out / "conversion_report.json")
    assert report["converted"] == [] and "vfr_000" in report["resumed"]
    assert (out / "vfr_000" / "clip.json").stat().st_mtime_ns == stamp
    convert(videos, out, "--overwrite")
    assert "vfr_000" in read_json(out / "conversion_report.json")["converted"]
    assert len(read_manifest(out)) == 5


def test_bad_label_csv_names_file_line_and_value(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("filename,daynight\na.mp4,day\nb.mp4,dusk\n")
    with pytest.raises(DriveSimInputError, match=r"labels\.csv.*line 3\.daynight.*'dusk'"):
        read_label_csv(bad)
    (tmp_path / "nofile.csv").write_text("name,daynight\na.mp4,day\n")
    with pytest.raises(DriveSimInputError, match="filename"):
        read_label_csv(tmp_path / "nofile.csv")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriveSimInputError, match="no videos"):
        main(["data", "videos", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--debug"])


# ------------------------------------------------------------------------ common helpers
@pytest.mark.parametrize("src,dst", [((720, 1280), (64, 128)), ((150, 270), (64, 96)), ((900, 1600), (90, 90)),
                                     ((128, 64), (64, 96))])
def test_resize_crop_moves_boxes_with_the_pixels(src, dst):
    img = np.zeros((*src, 3), np.uint8)
    box = np.array([0.3 * src[1], 0.35 * src[0], 0.62 * src[1], 0.8 * src[0]])
    x1, y1, x2, y2 = np.round(box).astype(int)
    img[y1:y2, x1:x2] = 255
    rc = ResizeCrop.create(src, dst)
    out = rc.image(img)
    assert out.shape == (*dst, 3)
    norm, keep = rc.boxes(np.array([[x1, y1, x2, y2]], float))
    ys, xs = np.nonzero(out[..., 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / np.array([dst[1], dst[0]] * 2)
    assert keep.all() and np.allclose(norm[0], found, atol=1.5 / min(dst)), (norm, found)


def test_resize_crop_drops_boxes_cropped_away():
    rc = ResizeCrop.create((100, 400), (100, 100))  # keeps the middle 100 columns
    norm, keep = rc.boxes(np.array([[0, 10, 50, 60], [140, 10, 260, 60]], float))
    assert keep.tolist() == [False, True]
    assert np.allclose(norm, [[0.0, 0.1, 1.0, 0.6]])


def test_nearest_indices_and_streaming_sampler_agree():
    rng = np.random.default_rng(1)
    src = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.2, size=40))])
    dst = resample_times(0.0, src[-1], 7.0)
    want = nearest_indices(src, dst)
    got = [int(f[0]) for _, f in sample_at(((t, np.array([i])) for i, t in enumerate(src)), dst, tail=0.05)]
    assert got == want.tolist()
    assert np.all(np.abs(src[want] - dst) <= np.abs(src[:, None] - dst[None]).min(axis=0) + 1e-12)
    # past the last source frame (+ tail) nothing more is produced
    late = np.array([src[-1] + 0.01, src[-1] + 1.0])
    assert len(list(sample_at(((t, np.array([i])) for i, t in enumerate(src)), late, tail=0.05))) == 1


def test_clip_dataset_loads_the_converted_videos(videos, tmp_path):
    from drivesim.data.datasets import ClipDataset

    out = tmp_path / "ds"
    convert(videos, out)
    ds = ClipDataset(out, split="train", frames=4, fps=5.0, height=32, width=48)
    sample = ds[0]
    assert sample["video"].shape == (4, 3, 32, 48) and sample["video"].min() >= -1 and sample["video"].max() <= 1
    assert int(sample["box_classes"].sum()) == 0  # dashcam clips carry no boxes
