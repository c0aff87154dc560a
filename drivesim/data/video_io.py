"""Video and image-sequence IO: uint8 ``[H, W, 3]`` RGB frames in, ``[n, H, W, 3]`` out.

Writers are streaming and atomic: frames go to a temporary name beside the target, which is
renamed onto the final name only by a clean ``close()``; an exception leaves nothing under
the final name. mp4 is H.264 (libx264, yuv420p) via PyAV with deterministic settings (one
encoder thread, fixed GOP, no B-frames); OpenCV ``mp4v`` is the fallback when PyAV or
libx264 is missing. yuv420p needs even sizes, so odd frames are edge-padded by one pixel
and readers given ``size=(H, W)`` crop the padding away.

Readers raise ``DriveSimInputError`` naming the file for corrupt, truncated or missing data.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from drivesim.utils.io import DriveSimInputError, current_umask

try:  # PyAV is an install requirement, but keep the OpenCV path usable without it.
    import av
except ImportError:  # pragma: no cover - exercised only on broken installs
    av = None

IMAGE_EXTS = ("png", "jpg")
FRAME_NAME = re.compile(r"^(\d{6})\.(png|jpg)$")
GOP = 12            # key frame every 12 frames: seeking decodes at most 11 extra frames
SEEK_GAP = 2 * GOP  # decode forward instead of seeking when the target is this close


def has_h264() -> bool:
    return av is not None and "libx264" in av.codecs_available


def _check_frame(rgb: np.ndarray, path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DriveSimInputError("frame must be uint8 [H, W, 3] RGB", path=path, field="frame",
                                 value=f"{arr.dtype} {list(arr.shape)}")
    if hw is not None and arr.shape[:2] != hw:
        raise DriveSimInputError(f"frame size changed from {hw}", path=path, field="frame",
                                 value=list(arr.shape[:2]))
    return arr


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; move it onto ``path`` on success.

    An existing ``path`` raises ``FileExistsError`` unless ``overwrite``; then the old
    directory is removed only after the new one is complete.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the finished folder gets normal modes
    try:
        yield tmp
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _FinishOnExit:
    """Context-manager protocol of the writers: ``close()`` on success, ``abort()`` on error
    (so nothing appears under the final name)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(_FinishOnExit):
    """Streaming mp4 writer (the project's one H.264 encoder: clips, rollout chunks, debug
    videos). Use as a context manager, or call ``close()`` / ``abort()``.

    ``gop``: frames between key frames; ``preset``: x264 speed/size trade-off. Output is
    bit-identical for identical frames and settings (one encoder thread, no B-frames)."""

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 18, preset: str = "medium",
                 gop: int = GOP, backend: str = "auto", overwrite: bool = False) -> None:
        if backend not in ("auto", "pyav", "opencv"):
            raise ValueError(f"backend must be auto|pyav|opencv, got {backend!r}")
        if not fps > 0:
            raise DriveSimInputError("fps must be > 0", path=path, field="fps", value=fps)
        self.path, self.fps, self.crf, self.preset, self.gop = Path(path), float(fps), crf, preset, int(gop)
        self.backend = ("pyav" if has_h264() else "opencv") if backend == "auto" else backend
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True (--overwrite) to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp.mp4", dir=self.path.parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~current_umask())
        self._tmp = Path(name)
        self._hw: tuple[int, int] | None = None
        self._container = self._stream = self._cv = None
        self.num_frames = 0

    def _open(self, h: int, w: int) -> None:
        eh, ew = h + h % 2, w + w % 2  # yuv420p halves chroma: sizes must be even
        if self.backend == "pyav":
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = ew, eh, "yuv420p"
            stream.codec_context.thread_count = 1  # one thread: bit-identical output per input
            stream.options = {"crf": str(self.crf), "preset": self.preset, "g": str(self.gop), "bf": "0"}
            self._stream = stream
        else:
            self._cv = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (ew, eh))
            if not self._cv.isOpened():
                raise RuntimeError(f"{self.path}: OpenCV could not open an mp4v writer")

    def write(self, rgb: np.ndarray) -> None:
        """Append one uint8 ``[H, W, 3]`` RGB frame (all frames must share one size)."""
        arr = _check_frame(rgb, self.path, self._hw)
        if self._hw is None:
            self._hw = arr.shape[:2]
            self._open(*self._hw)
        h, w = self._hw
        arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.backend == "pyav":
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        else:
            self._cv.write(cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))
        self.num_frames += 1

    def close(self) -> None:
        """Flush, close and rename onto the final path (an empty video is an error)."""
        try:
            if self.num_frames == 0:
                raise DriveSimInputError("no frames were written", path=self.path, field="frames", value=0)
            if self._container is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            if self._cv is not None:
                self._cv.release()
                self._cv = None
            os.replace(self._tmp, self.path)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        with contextlib.suppress(Exception):
            if self._container is not None:
                self._container.close()
        if self._cv is not None:
            self._cv.release()
        self._container = self._cv = None
        self._tmp.unlink(missing_ok=True)



class ImageSequenceWriter(_FinishOnExit):
    """Numbered frames ``000000.png`` (or ``.jpg``) written into a directory atomically."""

    def __init__(self, directory: str | os.PathLike, ext: str = "png", *, jpeg_quality: int = 95,
                 overwrite: bool = False) -> None:
        if ext not in IMAGE_EXTS:
            raise ValueError(f"ext must be one of {IMAGE_EXTS}, got {ext!r}")
        self.path, self.ext, self.jpeg_quality = Path(directory), ext, jpeg_quality
        self._ctx = atomic_directory(self.path, overwrite=overwrite)
        self._tmp = self._ctx.__enter__()
        self._hw: tuple[int, int] | None = None
        self.num_frames = 0

    def write(self, rgb: np.ndarray) -> None:
        arr = _check_frame(rgb, self.path, self._hw)
        self._hw = arr.shape[:2]
        name = self._tmp / f"{self.num_frames:06d}.{self.ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if self.ext == "jpg" else []
        if not cv2.imwrite(str(name), cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"{name}: could not write image")
        self.num_frames += 1

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)



def open_frame_writer(path: str | os.PathLike, fps: float, frames_format: str, *,
                      overwrite: bool = False) -> VideoWriter | ImageSequenceWriter:
    """``mp4`` -> :class:`VideoWriter`; ``png``/``jpg`` -> :class:`ImageSequenceWriter`."""
    if frames_format == "mp4":
        return VideoWriter(path, fps, overwrite=overwrite)
    return ImageSequenceWriter(path, frames_format, overwrite=overwrite)


def _index_list(indices: Sequence[int] | np.ndarray, n: int, path: Path) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise DriveSimInputError(f"frame index out of range for {n} frames", path=path,
                                 field="frames", value=int(idx[bad][0]))
    return idx


class VideoReader:
    """Random-access mp4 reader: ``read(indices) -> uint8 [n, H, W, 3]`` RGB.

    Keeps the decoder open between calls, so reading consecutive windows decodes each
    frame once; a jump backwards or beyond ``SEEK_GAP`` frames seeks to the key frame
    before the target. ``size=(H, W)`` crops even-size padding.
    """

    def __init__(self, path: str | os.PathLike, *, size: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DriveSimInputError("video file not found", path=self.path, field="frames")
        if av is None:  # pragma: no cover
            raise RuntimeError("PyAV is required to read videos (pip install av)")
        with self._errors("cannot open video"):
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise DriveSimInputError("no video stream", path=self.path, field="frames")
            self._stream = self._container.streams.video[0]
            # One decoder thread: DataLoader workers give the parallelism, and a decoder without
            # threads survives a fork (a forked worker never inherits a half-owned thread pool).
            self._stream.codec_context.thread_count = 1
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.num_frames = int(self._stream.frames) or self._count_packets()
            self.height, self.width = self._stream.codec_context.height, self._stream.codec_context.width
        if size is not None:
            if size[0] > self.height or size[1] > self.width:
                raise DriveSimInputError(f"video is {self.height}x{self.width}, smaller than {size}",
                                         path=self.path, field="size", value=list(size))
            self.height, self.width = size
        self._start = self._stream.start_time or 0
        self._decoder: Iterator | None = None
        self._next = 0

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except DriveSimInputError:
            raise
        except (av.FFmpegError, OSError, EOFError) as err:
            raise DriveSimInputError(f"{what}: corrupt or truncated video ({err})", path=self.path,
                                     field="frames") from err

    def _count_packets(self) -> int:
        count = sum(1 for p in self._container.demux(self._stream) if p.size)
        self._container.seek(0)
        return count

    def _frame_index(self, frame) -> int:
        return round(float((frame.pts - self._start) * frame.time_base) * self.fps)

    def _seek(self, target: int) -> None:
        pts = self._start + int(target / self.fps / self._stream.time_base)
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoder, self._next = None, -1

    def _decode_until(self, target: int) -> np.ndarray:
        if self._decoder is None:
            self._decoder = self._container.decode(self._stream)
        for frame in self._decoder:
            i = self._frame_index(frame) if frame.pts is not None else self._next
            self._next = i + 1
            if i == target:
                return frame.to_ndarray(format="rgb24")[: self.height, : self.width]
            if i > target:
                break
        raise DriveSimInputError(f"frame {target} is missing from the video (decoded up to "
                                 f"{self._next - 1} of {self.num_frames})", path=self.path,
                                 field="frames", value=target)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = _index_list(indices, self.num_frames, self.path)
        got: dict[int, np.ndarray] = {}
        try:
            with self._errors(f"cannot decode frames {idx.tolist()[:8]}"):
                for target in np.unique(idx).tolist():
                    if self._decoder is None and self._next == 0 and target < SEEK_GAP:
                        pass  # fresh decoder at the start: decode forward
                    elif target < self._next or target - self._next > SEEK_GAP or self._next < 0:
                        self._seek(target)
                    got[target] = self._decode_until(target)
        except DriveSimInputError:
            self._decoder, self._next = None, -1  # decoder state unknown: seek next time
            raise
        if not len(idx):
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        return np.stack([got[i] for i in idx.tolist()])

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageSequenceReader:
    """Numbered frames ``000000.png|jpg`` in a directory; ``read(indices)`` like VideoReader."""

    def __init__(self, directory: str | os.PathLike, *, num_frames: int | None = None) -> None:
        self.path = Path(directory)
        if not self.path.is_dir():
            raise DriveSimInputError("frames directory not found", path=self.path, field="frames")
        found = {int(m.group(1)): name for name in os.listdir(self.path) if (m := FRAME_NAME.match(name))}
        n = len(found) if num_frames is None else num_frames
        exts = {Path(name).suffix for name in found.values()} or {".png"}
        if len(exts) > 1:
            raise DriveSimInputError("mixed image formats", path=self.path, field="frames", value=sorted(exts))
        self.ext = exts.pop()[1:]
        missing = [i for i in range(n) if i not in found]
        if missing:
            raise DriveSimInputError("missing frame image", path=self.path / f"{missing[0]:06d}.{self.ext}",
                                     field="frames", value=f"{len(missing)} of {n} frames missing")
        self.num_frames, self.fps = n, None
        first = self._load(0) if n else np.zeros((0, 0, 3), np.uint8)
        self.height, self.width = first.shape[:2]

    def _load(self, i: int) -> np.ndarray:
        name = self.path / f"{i:06d}.{self.ext}"
        bgr = cv2.imread(str(name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DriveSimInputError("unreadable or corrupt image", path=name, field="frames", value=i)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = _index_list(indices, self.num_frames, self.path)
        frames = [self._load(i) for i in idx.tolist()]
        for i, f in zip(idx.tolist(), frames):
            if f.shape[:2] != (self.height, self.width):
                raise DriveSimInputError(f"image size differs from frame 0 ({self.height}x{self.width})",
                                         path=self.path / f"{i:06d}.{self.ext}", field="frames",
                                         value=list(f.shape[:2]))
        return np.stack(frames) if frames else np.zeros((0, self.height, self.width, 3), np.uint8)

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSequenceReader:
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_frames(path: str | os.PathLike, *, size: tuple[int, int] | None = None,
                num_frames: int | None = None) -> VideoReader | ImageSequenceReader:
    """A reader for an mp4 file or a directory of numbered images."""
    p = Path(path)
    if p.is_dir():
        return ImageSequenceReader(p, num_frames=num_frames)
    return VideoReader(p, size=size)


def probe(path: str | os.PathLike) -> dict:
    """``{"num_frames", "fps", "height", "width"}`` of a video or image directory."""
    with open_frames(path) as reader:
        return {"num_frames": reader.num_frames, "fps": reader.fps, "height": reader.height,
                "width": reader.width}
