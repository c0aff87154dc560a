"""The explicit evaluation protocol, recorded in every report and hashed into cache keys.

FVD numbers do not reproduce across papers because clip count, clip length, frame rate,
clip sampling and resizing are implicit; here every one of them is a field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from drivesim.metrics.extractors import RESIZE_POLICIES
from drivesim.utils.io import DriveSimInputError

MIN_RELIABLE_CLIPS = 256  # below this FVD is dominated by estimator noise (StyleGAN-V, Sec. 3)
CLIP_SAMPLING = ("auto", "one_per_video", "consecutive")
COVARIANCE = ("n-1", "n")


@dataclass(frozen=True)
class EvalProtocol:
    """What is measured, how many samples, and how frames are prepared.

    num_clips / frames_per_clip: FVD clips (paper: 2,048 x 16) of ``frames_per_clip`` frames
        taken every ``frame_stride`` frames, videos in sorted order, until ``num_clips``.
    clip_sampling: "one_per_video" (StyleGAN-V: one clip per video at a random offset drawn
        from ``seed`` and the video's name; videos shorter than a clip are skipped),
        "consecutive" (non-overlapping clips back to back from frame 0, at most
        ``max_clips_per_video`` per video; for sets of a few long videos) or "auto"
        (one_per_video on a side with at least ``num_clips`` videos, else consecutive).
    seed: seeds the random clip offsets and the C2ST classifier.
    min_window_clips / min_window_frames: a drift window with fewer FVD clips / FID frames
        gets no Fréchet value (``value: null`` and a ``note`` in the report).
    covariance: "n-1" (unbiased, as np.cov in the TTUR / pytorch-fid reference) or "n"
        (divide by N, as StyleGAN-V's and StyleGAN2-ADA's metric code).
    fps: when set, the stride of each video is round(video_fps / fps) instead of
        ``frame_stride`` (compare models sampled at different rates at one rate).
    resize: "squash" (whole frame to 224x224 / 299x299, StyleGAN-V) or "center_crop".
    fid_num_frames / fid_frame_stride: FID frames (paper: 10k), every ``fid_frame_stride``-th
        frame of each video until ``fid_num_frames``.
    oracle_real_frames: frames of the real set scored by the oracle (calibration, temporal
        reference statistics).
    window_seconds: width of the time windows of the drift curves (None: one window).
    c2st_*: the classifier two-sample test (``metrics/c2st.py``, ``C2STConfig`` has the
        training recipe): at most ``c2st_clips_per_video`` clips of ``c2st_clip_frames``
        frames (at the FVD stride, starts evenly spaced) per video, ``c2st_max_clips`` per side.
    real_set: free-text definition of the real set (path, split), filled in by the caller.
    """

    num_clips: int = 2048
    frames_per_clip: int = 16
    frame_stride: int = 1
    fps: float | None = None
    clip_sampling: str = "auto"
    seed: int = 0
    max_clips_per_video: int | None = None
    resize: str = "squash"
    fid_num_frames: int = 10_000
    fid_frame_stride: int = 1
    oracle_real_frames: int = 2_000
    window_seconds: float | None = 60.0
    min_window_clips: int = 32
    min_window_frames: int = 128
    covariance: str = "n-1"
    c2st_clip_frames: int = 4
    c2st_clips_per_video: int = 64
    c2st_max_clips: int = 1000
    real_set: str = ""

    def __post_init__(self) -> None:
        positive = {"num_clips": self.num_clips, "frames_per_clip": self.frames_per_clip,
                    "frame_stride": self.frame_stride, "fid_num_frames": self.fid_num_frames,
                    "fid_frame_stride": self.fid_frame_stride,
                    "oracle_real_frames": self.oracle_real_frames,
                    "min_window_clips": self.min_window_clips, "min_window_frames": self.min_window_frames,
                    "c2st_clip_frames": self.c2st_clip_frames, "c2st_clips_per_video": self.c2st_clips_per_video,
                    "c2st_max_clips": self.c2st_max_clips}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise DriveSimInputError("expected a positive integer", field=f"protocol.{name}", value=value)
        choices = {"resize": RESIZE_POLICIES, "clip_sampling": CLIP_SAMPLING, "covariance": COVARIANCE}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DriveSimInputError(f"expected one of {allowed}", field=f"protocol.{name}",
                                         value=getattr(self, name))
        for name in ("fps", "window_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise DriveSimInputError("expected > 0 or None", field=f"protocol.{name}", value=value)
        if self.max_clips_per_video is not None and self.max_clips_per_video < 1:
            raise DriveSimInputError("expected >= 1", field="protocol.max_clips_per_video",
                                     value=self.max_clips_per_video)
        if not isinstance(self.seed, int):
            raise DriveSimInputError("expected an integer", field="protocol.seed", value=self.seed)

    def stride_for(self, video_fps: float) -> int:
        if self.fps is None:
            return self.frame_stride
        return max(1, round(video_fps / self.fps))

    def sampling_for(self, num_videos: int | None) -> str:
        """The clip sampling used on a side with ``num_videos`` videos (None: unknown)."""
        if self.clip_sampling != "auto":
            return self.clip_sampling
        return "one_per_video" if num_videos is not None and num_videos >= self.num_clips else "consecutive"

    @property
    def ddof(self) -> int:
        """Delta degrees of freedom of the covariance (1 for "n-1", 0 for "n")."""
        return 1 if self.covariance == "n-1" else 0

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self, metric: str, *parts: str) -> str:
        """Stable hash of the fields that change ``metric``'s real statistics plus extra
        strings (dataset fingerprint, weights hash)."""
        fields = {name: getattr(self, name) for name in _KEY_FIELDS[metric]}
        blob = json.dumps([metric, fields, *parts], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


_KEY_FIELDS = {
    "fvd": ("num_clips", "frames_per_clip", "frame_stride", "fps", "clip_sampling", "seed",
            "max_clips_per_video", "resize"),
    "fid": ("fid_num_frames", "fid_frame_stride", "resize"),
}
