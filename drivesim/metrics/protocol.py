"""The explicit evaluation protocol, recorded in every report and hashed into cache keys.

FVD numbers do not reproduce across papers because clip count, clip length, frame rate and
resizing are implicit (DESIGN §4); here every one of them is a field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from drivesim.metrics.extractors import RESIZE_POLICIES

MIN_RELIABLE_CLIPS = 256  # below this FVD is dominated by estimator noise (StyleGAN-V, Sec. 3)


@dataclass(frozen=True)
class EvalProtocol:
    """What is measured, how many samples, and how frames are prepared.

    num_clips / frames_per_clip: FVD clips (paper: 2,048 x 16). Clips are consecutive
        non-overlapping windows of ``frames_per_clip`` frames taken every ``frame_stride``
        frames from the start of each video, at most ``max_clips_per_video`` per video,
        videos in sorted order, until ``num_clips``.
    fps: when set, the stride of each video is round(video_fps / fps) instead of
        ``frame_stride`` (compare models sampled at different rates at one rate).
    resize: "squash" (whole frame to 224x224 / 299x299, StyleGAN-V) or "center_crop".
    fid_num_frames / fid_frame_stride: FID frames (paper: 10k), every ``fid_frame_stride``-th
        frame of each video until ``fid_num_frames``.
    oracle_real_frames: frames of the real set scored by the oracle (calibration, temporal
        reference statistics).
    window_seconds: width of the time windows of the drift curves (None: one window).
    real_set: free-text definition of the real set (path, split), filled in by the caller.
    """

    num_clips: int = 2048
    frames_per_clip: int = 16
    frame_stride: int = 1
    fps: float | None = None
    max_clips_per_video: int | None = None
    resize: str = "squash"
    fid_num_frames: int = 10_000
    fid_frame_stride: int = 1
    oracle_real_frames: int = 2_000
    window_seconds: float | None = 60.0
    real_set: str = ""

    def __post_init__(self) -> None:
        positive = {"num_clips": self.num_clips, "frames_per_clip": self.frames_per_clip,
                    "frame_stride": self.frame_stride, "fid_num_frames": self.fid_num_frames,
                    "fid_frame_stride": self.fid_frame_stride,
                    "oracle_real_frames": self.oracle_real_frames}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"protocol.{name}: expected a positive integer, got {value!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"protocol.resize: expected one of {RESIZE_POLICIES}, got {self.resize!r}")
        for name in ("fps", "window_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"protocol.{name}: expected > 0 or None, got {value!r}")
        if self.max_clips_per_video is not None and self.max_clips_per_video < 1:
            raise ValueError(f"protocol.max_clips_per_video: expected >= 1, got {self.max_clips_per_video!r}")

    def stride_for(self, video_fps: float) -> int:
        if self.fps is None:
            return self.frame_stride
        return max(1, round(video_fps / self.fps))

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self, metric: str, *parts: str) -> str:
        """Stable hash of the fields that change ``metric``'s real statistics plus extra
        strings (dataset fingerprint, weights hash)."""
        fields = {name: getattr(self, name) for name in _KEY_FIELDS[metric]}
        blob = json.dumps([metric, fields, *parts], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


_KEY_FIELDS = {
    "fvd": ("num_clips", "frames_per_clip", "frame_stride", "fps", "max_clips_per_video", "resize"),
    "fid": ("fid_num_frames", "fid_frame_stride", "resize"),
}
