import hashlib

import numpy as np
import pytest

from drivesim.data.video_io import (
    ImageSequenceReader,
    ImageSequenceWriter,
    VideoReader,
    VideoWriter,
    has_h264,
    probe,
)
from drivesim.utils.io import DriveSimInputError


def indexed_frames(n: int, h: int = 48, w: int = 80) -> list[np.ndarray]:
    """Smooth frames whose blue level encodes the frame index (5 levels apart)."""
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = np.linspace(0, 200, w, dtype=np.uint8)[None, :]
        f[..., 1] = np.linspace(0, 200, h, dtype=np.uint8)[:, None]
        f[..., 2] = 5 * i
        out.append(f)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def write_video(path, frames, fps=10.0, **kw):
    with VideoWriter(path, fps, **kw) as w:
        for f in frames:
            w.write(f)


@pytest.mark.parametrize("h, w", [(48, 80), (47, 81)])  # odd sizes are padded then cropped back
def test_mp4_round_trip_high_psnr(tmp_path, h, w):
    assert has_h264()
    frames = indexed_frames(30, h, w)
    write_video(tmp_path / "v.mp4", frames)
    info = probe(tmp_path / "v.mp4")
    assert info["num_frames"] == 30 and info["fps"] == pytest.approx(10.0)
    with VideoReader(tmp_path / "v.mp4", size=(h, w)) as r:
        got = r.read(range(30))
    assert got.dtype == np.uint8 and got.shape == (30, h, w, 3)
    assert psnr(got, np.stack(frames)) > 35


def test_reader_random_access_returns_the_right_frames(tmp_path):
    frames = indexed_frames(40)
    write_video(tmp_path / "v.mp4", frames)
    with VideoReader(tmp_path / "v.mp4") as r:
        for idx in ([0, 1, 2], [3, 4, 5], [30, 31], [5, 6], [39, 0, 39], [20], [12, 13]):
            got = r.read(idx)
            blue = got[..., 2].mean(axis=(1, 2))
            np.testing.assert_allclose(blue, 5 * np.array(idx), atol=2.0)


def test_writer_is_deterministic(tmp_path):
    frames = indexed_frames(12)
    write_video(tmp_path / "a.mp4", frames)
    write_video(tmp_path / "b.mp4", frames)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.mp4", "b.mp4")]
    assert digest[0] == digest[1]


def test_writer_atomic_on_exception_and_no_overwrite(tmp_path):
    target = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 10.0) as w:
            w.write(indexed_frames(1)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the final nor a temporary file
    write_video(target, indexed_frames(2))
    with pytest.raises(FileExistsError):
        VideoWriter(target, 10.0)
    write_video(target, indexed_frames(3), overwrite=True)
    assert probe(target)["num_frames"] == 3


def test_writer_rejects_bad_frames(tmp_path):
    with pytest.raises(DriveSimInputError, match="uint8"):
        with VideoWriter(tmp_path / "v.mp4", 10.0) as w:
            w.write(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DriveSimInputError, match="size changed"):
        with VideoWriter(tmp_path / "v.mp4", 10.0) as w:
            w.write(np.zeros((8, 8, 3), np.uint8))
            w.write(np.zeros((8, 10, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_opencv_fallback_round_trip(tmp_path):
    frames = indexed_frames(10)
    write_video(tmp_path / "v.mp4", frames, backend="opencv")
    with VideoReader(tmp_path / "v.mp4") as r:
        assert r.num_frames == 10
        assert psnr(r.read([0, 5, 9]), np.stack([frames[i] for i in (0, 5, 9)])) > 28


def test_truncated_and_corrupt_video_name_the_file(tmp_path):
    write_video(tmp_path / "v.mp4", indexed_frames(20))
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 100)
    for name in ("cut.mp4", "junk.mp4"):
        with pytest.raises(DriveSimInputError) as err:
            VideoReader(tmp_path / name).read([0])
        assert name in str(err.value) and "corrupt or truncated" in str(err.value)
    with pytest.raises(DriveSimInputError, match="not found"):
        VideoReader(tmp_path / "missing.mp4")
    with VideoReader(tmp_path / "v.mp4") as r, pytest.raises(DriveSimInputError, match="out of range"):
        r.read([20])


def test_image_sequence_round_trip_exact(tmp_path):
    frames = indexed_frames(5, 17, 23)
    with ImageSequenceWriter(tmp_path / "frames", "png") as w:
        for f in frames:
            w.write(f)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[0] == "000000.png"
    r = ImageSequenceReader(tmp_path / "frames")
    assert (r.num_frames, r.height, r.width) == (5, 17, 23)
    np.testing.assert_array_equal(r.read([4, 0]), np.stack([frames[4], frames[0]]))


def test_image_sequence_jpg_and_atomic(tmp_path):
    with pytest.raises(ValueError):
        with ImageSequenceWriter(tmp_path / "frames", "jpg") as w:
            w.write(indexed_frames(1)[0])
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
    with ImageSequenceWriter(tmp_path / "frames", "jpg") as w:
        w.write(indexed_frames(1)[0])
    assert psnr(ImageSequenceReader(tmp_path / "frames").read([0])[0], indexed_frames(1)[0]) > 30


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with ImageSequenceWriter(tmp_path / "frames") as w:
        for f in indexed_frames(4):
            w.write(f)
    (tmp_path / "frames" / "000002.png").unlink()
    with pytest.raises(DriveSimInputError) as err:
        ImageSequenceReader(tmp_path / "frames", num_frames=4)
    assert "000002.png" in str(err.value) and "missing" in str(err.value)
    (tmp_path / "frames" / "000002.png").write_bytes(b"garbage")
    with pytest.raises(DriveSimInputError, match=r"000002\.png.*corrupt"):
        ImageSequenceReader(tmp_path / "frames").read([1, 2])
