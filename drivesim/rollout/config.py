"""`RolloutConfig`: every option of a rollout, in one typed dataclass.

The Python API (`drivesim.Simulator.rollout`) takes it, `drivesim rollout` only parses its
command line into it (one flag per field: ``seconds`` is ``--seconds``, ``guidance_context``
is ``--guidance-context``), and Lightning ``predict`` builds it from a jobs file. Validation
happens on construction: a bad value raises ``DriveSimInputError`` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from drivesim.data.labels import DAYNIGHT_NAMES
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE
from drivesim.diffusion.guidance import GUIDANCE_SCHEDULES
from drivesim.diffusion.samplers import SAMPLERS
from drivesim.rollout.scenario import END_POLICIES, SYNTHETIC_VEHICLES
from drivesim.utils.io import DriveSimInputError

# options that change how a rollout is written or saved, not what it contains: left out of
# the resume fingerprint so that, e.g., a resumed run may save its state more often
NOT_IN_FINGERPRINT = ("save_every", "debug_video")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class RolloutConfig:
    """How a rollout is sampled and written (the scenario and the models are given separately)."""

    seconds: float = _opt(120.0, "length of the drive in seconds")
    fps: float | None = _opt(None, "key-frame rate of the video model (default: its model file's 'fps', else 10)")
    window: int | None = _opt(None, "frames per prediction window T (default: the model file's 'num_frames', "
                              "else its max_frames capped at 10)")
    context: int = _opt(2, "context frames S for segments after the first")
    steps: int = _opt(20, "sampler steps per segment")
    sampler: str = _opt("ddim", "sampler", choices=tuple(SAMPLERS))
    guidance_context: float = _opt(1.5, "context-guidance scale (1 = none)")
    guidance_schedule: str = _opt("taper", "per-frame context-guidance schedule", choices=GUIDANCE_SCHEDULES)
    guidance_boxes: float = _opt(1.0, "box guidance scale (1 = none)")
    guidance_labels: float = _opt(1.0, "day/night + crowdedness guidance scale (1 = none)")
    guidance_ego: float = _opt(1.0, "ego-motion guidance scale (1 = none; models with ego conditioning)")
    seed: int = _opt(0, "noise seed: same seed, same video")
    daynight: str | None = _opt(None, "label for the drive (default: the scenario's)", choices=DAYNIGHT_NAMES)
    crowd: str = _opt("moderate", "synthetic scenario traffic", choices=tuple(SYNTHETIC_VEHICLES))
    traffic_range: float = _opt(DEFAULT_TRAFFIC_RANGE, "synthetic scenario: metres of simulated traffic "
                                "ahead (match the training data's)")
    scenario_end: str | None = _opt(None, "scenario shorter than the drive: fail or hold", choices=END_POLICIES)
    start: str = _opt("auto", "auto | image | clip:DIR (first frames from a real clip)")
    start_frames: int = _opt(1, "start frames taken from a clip", choices=(1, 2))
    size: str | None = _opt(None, "HxW of generated frames for an image start (default: the image model "
                            "file's latent_size times the autoencoder's factor, else 64x128)")
    max_boxes: int | None = _opt(None, "boxes per frame (default: the video model's max_boxes)")
    interp_factor: int = _opt(4, "frames per gap in each interpolation pass (the model's window - 1)")
    interp_passes: int = _opt(2, "interpolation passes when an interpolation model is loaded: 1 = x4 "
                              "(regime 0), 2 = x16 (then regime 1); 0 = key frames only")
    upsample: bool = _opt(True, "run the video upsampler when one is loaded")
    upsample_steps: int | None = _opt(None, "sampler steps of the upsampler (default: steps)")
    upsample_aug_level: int | None = _opt(None, "noise-augmentation level of the low-resolution input "
                                          "(default: the upsampler file's, 150)")
    save_every: int = _opt(2, "segments between resume-state saves")
    debug_video: bool = _opt(False, "also write debug.mp4 with the boxes drawn")

    def __post_init__(self) -> None:
        _positive(self, "seconds", finite=True)
        for name in ("fps", "traffic_range"):
            if getattr(self, name) is not None:
                _positive(self, name, finite=True)
        for name, low in (("context", 1), ("steps", 1), ("save_every", 1), ("interp_factor", 2),
                          ("interp_passes", 0), ("window", 2), ("max_boxes", 1), ("upsample_steps", 1),
                          ("upsample_aug_level", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise DriveSimInputError(f"expected an integer >= {low}", field=name, value=value)
        for name in ("guidance_context", "guidance_boxes", "guidance_labels", "guidance_ego"):
            value = getattr(self, name)  # 0 = the condition dropped, 1 = plain conditional
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise DriveSimInputError("expected a finite guidance scale >= 0", field=name, value=value)
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value is not None and value not in choices:
                raise DriveSimInputError(f"expected one of {tuple(choices)}", field=f.name, value=value)
        if self.size is not None:
            self.frame_size()
        if not (self.start in ("auto", "image") or self.start.startswith("clip:")):
            raise DriveSimInputError("expected auto, image or clip:DIR", field="start", value=self.start)

    def frame_size(self) -> tuple[int, int] | None:
        """``size`` as (H, W)."""
        if self.size is None:
            return None
        try:
            h, w = (int(v) for v in str(self.size).lower().split("x"))
        except ValueError as err:
            raise DriveSimInputError("expected HxW, e.g. 64x128", field="size", value=self.size) from err
        if h < 1 or w < 1:
            raise DriveSimInputError("expected HxW with positive sides", field="size", value=self.size)
        return h, w

    def fingerprint_args(self) -> dict[str, Any]:
        """The options that decide the video's content (the resume fingerprint)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_FINGERPRINT}


def _positive(config: RolloutConfig, name: str, finite: bool) -> None:
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok or (finite and not math.isfinite(value)):
        raise DriveSimInputError("expected a positive number", field=name, value=value)


def config_defaults() -> dict[str, Any]:
    """{field: default} of :class:`RolloutConfig` (for parsers and docs)."""
    return {f.name: f.default for f in fields(RolloutConfig) if f.default is not MISSING}
