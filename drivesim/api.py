"""The public Python API: ``from drivesim import Simulator, RolloutConfig``.

    sim = Simulator.from_run("runs/demo")                 # or Simulator.from_files(...)
    for frame in sim.rollout("synthetic:7", seconds=30, config=RolloutConfig(daynight="night")):
        detector(frame.rgb, frame.boxes)                  # frames arrive as they are made
    sim.rollout("synthetic:7", seconds=120, out="night_drive")   # also writes mp4 + clip.json
    images = sim.sample_frames(boxes=[[0.4, 0.5, 0.6, 0.8]], daynight="day", n=4)

Every model is loaded by ``drivesim.inference.load_model`` and every latent is drawn by
``drivesim.inference.sample``; the rollout itself is ``drivesim.rollout.engine``. Memory is
bounded by one prediction window, whatever the length of the drive (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivesim.data.labels import CROWD_NAMES, DAYNIGHT_NAMES, class_id
from drivesim.inference import ModelRecord, load_model
from drivesim.inference.run_folder import resolve_run
from drivesim.models.conditioning import Conditioning
from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.config import RolloutConfig
from drivesim.rollout.engine import (
    RolloutChunk,
    RolloutJob,
    RolloutModels,
    RolloutResult,
    iter_rollout,
    segment_condition,
)
from drivesim.rollout.sampler import (
    ImageStartSampler,
    InterpolationSampler,
    PredictionSampler,
    UpsamplerSampler,
)
from drivesim.rollout.scenario import Scenario, load_scenario
from drivesim.rollout.state import fingerprint
from drivesim.utils.io import DriveSimInputError

__all__ = ["RolloutConfig", "RolloutFrame", "Simulator"]


@dataclass(frozen=True)
class RolloutFrame:
    """One output frame: ``rgb`` uint8 ``[H, W, 3]``; ``boxes`` float32 ``[n, 4]`` normalised
    x1, y1, x2, y2 with their ``classes`` / ``track_ids`` int64 ``[n]`` (padding removed), the
    scenario's boxes that conditioned this frame; ``time`` in seconds; ``ego_speed`` (m/s) and
    ``ego_yaw_rate`` (rad/s, left positive), the scenario's ego motion for this frame (None
    where the scenario has none)."""

    index: int
    time: float
    rgb: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    track_ids: np.ndarray
    daynight: str
    crowd: str
    ego_speed: float | None = None
    ego_yaw_rate: float | None = None


class Simulator:
    """A trained stack: autoencoder + video (prediction) model, and optionally the image model
    (start frames), the interpolation model (output frame rate) and the video upsampler
    (output resolution) — the paper's cascade."""

    def __init__(self, autoencoder: ModelRecord, video: ModelRecord, image: ModelRecord | None = None,
                 interpolation: ModelRecord | None = None, upsampler: ModelRecord | None = None) -> None:
        for record, role in ((autoencoder, "autoencoder"), (video, "prediction"), (image, "image"),
                             (interpolation, "interpolation"), (upsampler, "upsampler")):
            if record is not None and record.role != role:
                raise DriveSimInputError(f"expected a {role} model, got a {record.role} model",
                                         path=record.path, field=role)
        self.autoencoder, self.video, self.image = autoencoder, video, image
        self.interpolation, self.upsampler = interpolation, upsampler

    @classmethod
    def from_files(cls, *, autoencoder: str | Path, video: str | Path, image: str | Path | None = None,
                   interpolation: str | Path | None = None, upsampler: str | Path | None = None,
                   device: torch.device | str = "cpu", compile: bool = False,
                   compile_mode: str = "default") -> Simulator:
        """Load explicit model files (any of ``.safetensors`` / ``.pt`` / Lightning ``.ckpt``).

        ``compile``: ``torch.compile`` the diffusion networks in ``compile_mode``
        (``drivesim.models.compile``); rollouts have fixed shapes, so each compiles once per
        shape (docs/scaling.md, "Compiled training and sampling")."""
        kw = {"device": device, "compile": compile, "compile_mode": compile_mode}
        optional = {"image": image, "interpolation": interpolation, "upsampler": upsampler}
        loaded = {role: None if path is None else load_model(path, role, **kw) for role, path in optional.items()}
        return cls(load_model(autoencoder, "autoencoder", device=device), load_model(video, "prediction", **kw),
                   **loaded)

    @classmethod
    def from_run(cls, run: str | Path, *, device: torch.device | str = "cpu", compile: bool = False,
                 compile_mode: str = "default") -> Simulator:
        """Load the models of a run folder (``make train`` / ``make demo``; docs/api.md)."""
        files = resolve_run(run)
        return cls.from_files(**files, device=device, compile=compile, compile_mode=compile_mode)

    def model_paths(self) -> dict[str, str]:
        """{role: model file} of the loaded models (provenance; resume fingerprints)."""
        records = {"autoencoder": self.autoencoder, "video": self.video, "image": self.image,
                   "interpolation": self.interpolation, "upsampler": self.upsampler}
        return {k: str(r.path) for k, r in records.items() if r is not None and r.path is not None}

    # -- rollouts ------------------------------------------------------------------------
    def rollout(self, scenario: str | Scenario = "synthetic:3", seconds: float | None = None,
                config: RolloutConfig | None = None, *, out: str | Path | None = None, resume: bool = False,
                overwrite: bool = False, progress: bool = False) -> Iterator[RolloutFrame]:
        """Frames of a drive, yielded as they are made (constant memory).

        ``scenario``: ``synthetic:SEED`` | a scenario JSON path | ``clip:DIR`` | ``none``, or a
        :class:`~drivesim.rollout.scenario.Scenario`. ``seconds`` overrides ``config.seconds``.
        With ``out`` the frames also go to ``out/frames.mp4`` + ``clip.json`` (``resume``
        continues an interrupted folder; an existing one needs ``overwrite``). Consume the
        iterator to the end to finish the files; :meth:`write_rollout` does that for you.
        """
        config = config or RolloutConfig()
        if seconds is not None:
            config = replace(config, seconds=seconds)
        job, models, start = self.prepare(scenario, config, out=out, resume=resume)
        labels = (DAYNIGHT_NAMES[job.scenario.daynight], CROWD_NAMES[job.scenario.crowd])
        chunks = iter_rollout(job, models, start, resume=resume, overwrite=overwrite, progress=progress)
        for chunk in chunks:
            yield from _frames(chunk, job.plan.output_fps, *labels)

    def write_rollout(self, out: str | Path, scenario: str | Scenario = "synthetic:3",
                      config: RolloutConfig | None = None, *, resume: bool = False, overwrite: bool = False,
                      progress: bool = True, desc: str = "rollout", position: int | None = None) -> RolloutResult:
        """Run a drive to the end into ``out`` (frames.mp4, clip.json, optional debug.mp4)."""
        job, models, start = self.prepare(scenario, config or RolloutConfig(), out=out, resume=resume)
        chunks = iter_rollout(job, models, start, resume=resume, overwrite=overwrite, progress=progress,
                              desc=desc, position=position)
        while True:
            try:
                next(chunks)
            except StopIteration as done:
                return done.value

    def prepare(self, scenario: str | Scenario, config: RolloutConfig, *, out: str | Path | None = None,
                resume: bool = False) -> tuple[RolloutJob, RolloutModels, torch.Tensor | None]:
        """The engine's job, model callables and start latents for one drive."""
        plan = self.plan(config)
        spec = scenario if isinstance(scenario, str) else None
        if spec is None:
            scen = scenario
        else:
            scen = load_scenario(spec, fps=plan.output_fps, daynight=config.daynight, crowd=config.crowd,
                                 end=config.scenario_end, max_boxes=self.max_boxes(config),
                                 traffic_range=config.traffic_range)
        fp = fingerprint(self.model_paths(), {**config.fingerprint_args(), "seconds": plan.seconds,
                                              "fps": plan.model_fps, "window": plan.window},
                         scen.describe())
        meta = {"seed": config.seed, "checkpoints": self.model_paths(),
                "guidance_context": config.guidance_context, "guidance_schedule": config.guidance_schedule,
                "guidance_ego": config.guidance_ego}
        job = RolloutJob(plan, scen, None if out is None else Path(out), seed=config.seed, fingerprint=fp,
                         debug_video=config.debug_video, save_every=config.save_every, metadata=meta)
        start = None if resume else self.start_latents(config, scen, plan, spec)
        return job, self.callables(config), start

    def plan(self, config: RolloutConfig) -> RolloutPlan:
        window = config.window or self.video.num_frames or min(10, int(self.video.config["max_frames"]))
        fps = config.fps or self.video.fps or 10.0
        r = config.interp_factor ** self.interp_passes(config)
        try:
            return RolloutPlan(seconds=config.seconds, model_fps=fps, window=window, context=config.context,
                               first_context=config.start_frames, interp_factor=r)
        except ValueError as err:  # window / context arithmetic that cannot chain
            raise DriveSimInputError(str(err), field="window", value=window) from err

    def max_boxes(self, config: RolloutConfig) -> int:
        return config.max_boxes or int(self.video.config.get("max_boxes", 16))

    def interp_passes(self, config: RolloutConfig) -> int:
        """Interpolation passes this drive makes: pass k uses regime k, so at most the model's regimes."""
        if self.interpolation is None:
            return 0
        regimes = int(self.interpolation.config.get("num_regimes", 1))
        if config.interp_passes > regimes:
            raise DriveSimInputError(f"the interpolation model has {regimes} regime(s), one per pass",
                                     path=self.interpolation.path, field="interp_passes", value=config.interp_passes)
        return config.interp_passes

    def callables(self, config: RolloutConfig) -> RolloutModels:
        """The engine's model callables: prediction, interpolation passes, decoder, upsampler."""
        kw = dict(sampler=config.sampler, guidance_boxes=config.guidance_boxes,
                  guidance_labels=config.guidance_labels, guidance_ego=config.guidance_ego)
        predictor = PredictionSampler(self.video, config.steps, config.guidance_context,
                                      config.guidance_schedule, **kw)
        passes = [InterpolationSampler(self.interpolation, config.steps, regime=k, **kw)
                  for k in range(self.interp_passes(config))]
        upsample = None
        if self.upsampler is not None and config.upsample:
            upsample = UpsamplerSampler(self.upsampler, config.upsample_steps or config.steps,
                                        aug_level=config.upsample_aug_level, sampler=config.sampler)
        ae = self.autoencoder.network
        return RolloutModels(predictor, ae.decode_latents, passes or None, decode_overlap=ae.temporal_receptive_radius,
                             interp_factors=(config.interp_factor,) * len(passes), upsample=upsample,
                             upsample_chunk=getattr(upsample, "chunk", 8), upsample_context=getattr(upsample, "context", 2))

    @torch.no_grad()
    def start_latents(self, config: RolloutConfig, scenario: Scenario, plan: RolloutPlan,
                      spec: str | None = None) -> torch.Tensor:
        """[1, S0, C, h, w]: encoded clip frames, or the image LDM's frame for the first boxes."""
        ae = self.autoencoder.network
        start = config.start
        if start == "auto":
            clip_spec = spec is not None and spec.startswith("clip:")
            start = "image" if self.image is not None or not clip_spec else spec
        if start.startswith("clip:"):
            from drivesim.data.clip_format import read_clip

            clip = read_clip(start.split(":", 1)[1])
            rgb = torch.from_numpy(clip.frames(list(range(config.start_frames))))  # [S0, H, W, 3]
            video = rgb.permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0  # [1, S0, 3, H, W]
            return ae.encode_latents(video.to(self.autoencoder.device))
        if self.image is None:
            raise DriveSimInputError("an image start needs an image model (or start from clip:DIR)",
                                     field="image")
        hw = self._latent_hw(config.frame_size())
        cond = segment_condition(scenario, [0], plan.model_fps, 0)
        gen = torch.Generator().manual_seed(int(config.seed) + 7919)  # own stream: start != segments
        sampler = ImageStartSampler(self.image, config.steps, sampler=config.sampler,
                                    guidance_boxes=config.guidance_boxes, guidance_labels=config.guidance_labels)
        return sampler(cond, (ae.latent_channels, *hw), gen)

    def _latent_hw(self, size: tuple[int, int] | None) -> tuple[int, int]:
        f = self.autoencoder.network.downsample_factor
        if size is not None:
            if size[0] % f or size[1] % f:
                raise DriveSimInputError(f"frame size must be divisible by the autoencoder factor {f}",
                                         field="size", value=f"{size[0]}x{size[1]}")
            return size[0] // f, size[1] // f
        model = self.image or self.video
        return model.latent_size or (64 // f, 128 // f)

    # -- single frames -------------------------------------------------------------------
    @torch.no_grad()
    def sample_frames(self, boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
                      classes: Sequence[str | int] | None = None, *, daynight: str = "day",
                      crowd: str = "unknown", n: int = 1, seed: int = 0, steps: int = 20,
                      guidance: float = 2.0, size: tuple[int, int] | None = None,
                      sampler: str = "ddim") -> np.ndarray:
        """``n`` frames from the image model for one set of boxes and labels: uint8 ``[n, H, W, 3]``.

        ``boxes``: ``[k, 4]`` normalised x1, y1, x2, y2 (None or empty: no boxes);
        ``classes``: names or ids (default car). ``guidance`` scales boxes and labels.
        """
        if self.image is None:
            raise DriveSimInputError("sampling frames needs an image model", field="image")
        cond = _frame_conditioning(boxes, classes, daynight, crowd, n, int(self.image.config.get("max_boxes", 16)))
        from drivesim.inference import guidance_scales, sample

        latents = sample(self.image, cond, 1, self._latent_hw(size), steps=steps, sampler=sampler,
                         scales=guidance_scales(cond, labels=guidance, boxes=guidance),
                         generator=torch.Generator().manual_seed(int(seed)))
        frames = self.autoencoder.network.decode_latents(latents.to(self.autoencoder.device))  # [n, 1, 3, H, W]
        return _to_uint8(frames[:, 0])


def _frames(chunk: RolloutChunk, fps: float, daynight: str, crowd: str) -> Iterator[RolloutFrame]:
    for j, rgb in enumerate(chunk.frames):
        keep = chunk.boxes.classes[j] != 0
        known = chunk.ego is not None and bool(chunk.ego.known[j])
        yield RolloutFrame(chunk.first + j, (chunk.first + j) / fps, rgb, chunk.boxes.boxes[j][keep],
                           chunk.boxes.classes[j][keep], chunk.boxes.track_ids[j][keep], daynight, crowd,
                           float(chunk.ego.speed[j]) if known else None,
                           float(chunk.ego.yaw_rate[j]) if known else None)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] in [-1, 1] -> uint8 [n, H, W, 3]."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _frame_conditioning(boxes: Any, classes: Any, daynight: str, crowd: str, n: int, max_boxes: int) -> Conditioning:
    """B = n copies of one frame's boxes and labels (T = 1)."""
    from drivesim.data.boxes import pad_boxes, validate_boxes

    if daynight not in DAYNIGHT_NAMES:
        raise DriveSimInputError(f"expected one of {DAYNIGHT_NAMES}", field="daynight", value=daynight)
    if crowd not in CROWD_NAMES:
        raise DriveSimInputError(f"expected one of {CROWD_NAMES}", field="crowd", value=crowd)
    if not isinstance(n, int) or n < 1:
        raise DriveSimInputError("expected an integer >= 1", field="n", value=n)
    b = validate_boxes(np.zeros((0, 4)) if boxes is None else boxes, field="boxes")
    names = ["car"] * len(b) if classes is None else list(classes)
    if len(names) != len(b):
        raise DriveSimInputError(f"expected {len(b)} classes", field="classes", value=classes)
    try:
        c = np.asarray([class_id(x) for x in names], dtype=np.int64)
    except ValueError as err:
        raise DriveSimInputError(str(err), field="classes", value=classes) from err
    padded = pad_boxes(b, c, np.arange(1, len(b) + 1, dtype=np.int64), max(1, min(max_boxes, len(b))))
    rep = lambda a: torch.from_numpy(np.asarray(a))[None, None].expand(n, 1, *np.shape(a)).clone()  # noqa: E731
    return Conditioning(boxes=rep(padded.boxes), box_classes=rep(padded.classes), box_ids=rep(padded.ids),
                        daynight=torch.full((n,), DAYNIGHT_NAMES.index(daynight)),
                        crowd=torch.full((n,), CROWD_NAMES.index(crowd)))
