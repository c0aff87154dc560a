"""`drivesim rollout`: long scenario-driven rollouts streamed to mp4 (docs/rollout.md).

    drivesim rollout --video-ckpt V --ae-ckpt A [--image-ckpt I] --scenario synthetic:3 \
        --seconds 120 --fps 2 --daynight night --seed 0 --steps 20 \
        --guidance-context 1.5 --guidance-schedule taper --out runs/rollouts/night
    drivesim rollout --preset demo --runs runs --seconds 120     # day and night (make rollout)

``--preset demo`` takes ``RUNS/demo/{autoencoder_temporal,video_ldm,image_ldm}/model.*``.
``--daynight both --workers 2`` renders the day and the night drive in two processes, the
CPU threads split between them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from drivesim.data.labels import DAYNIGHT_NAMES
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE
from drivesim.models.autoencoder import AutoencoderKL, load_autoencoder
from drivesim.rollout.chaining import RolloutPlan
from drivesim.rollout.engine import (
    RolloutJob,
    RolloutModels,
    prepare_output,
    run_rollout,
    segment_condition,
)
from drivesim.rollout.sampler import (
    GUIDANCE_SCHEDULES,
    SAMPLERS,
    ImageStartSampler,
    InterpolationSampler,
    PredictionSampler,
    load_diffusion_model,
)
from drivesim.rollout.scenario import END_POLICIES, SYNTHETIC_VEHICLES, Scenario, load_scenario
from drivesim.rollout.state import fingerprint
from drivesim.utils.io import DriveSimInputError
from drivesim.utils.parallel import spawn_pool

PRESET_DIRS = {"ae_ckpt": "autoencoder_temporal", "video_ckpt": "video_ldm", "image_ckpt": "image_ldm"}
MODEL_SUFFIXES = (".safetensors", ".pt", ".ckpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--video-ckpt", help="prediction model (video LDM with context frames)")
    a("--ae-ckpt", help="autoencoder (temporal decoder)")
    a("--image-ckpt", help="image LDM for the start frame")
    a("--interp-ckpt", help="interpolation model (optional, output fps = fps * --interp-factor)")
    a("--interp-factor", type=int, default=4, help="frames per key-frame gap with --interp-ckpt")
    a("--interp-regime", type=int, default=0, help="interpolation regime label")
    a("--preset", choices=["demo"], help="take the checkpoints from RUNS/demo/<stage>/model.*")
    a("--runs", default="runs", help="runs folder for --preset (default: runs)")
    a("--scenario", default="synthetic:3", help="synthetic:SEED | FILE.json | clip:DIR | none")
    a("--scenario-end", choices=END_POLICIES, help="scenario shorter than the drive: fail or hold")
    a("--crowd", choices=tuple(SYNTHETIC_VEHICLES), default="moderate", help="synthetic traffic")
    a("--traffic-range", type=float, default=DEFAULT_TRAFFIC_RANGE,
      help="synthetic scenario: metres of simulated traffic ahead (match the training data's)")
    a("--start", default="auto", help="auto | image | clip:DIR (first frames from a real clip)")
    a("--start-frames", type=int, default=1, choices=(1, 2), help="start frames taken from a clip")
    a("--size", default=None, help="HxW of generated frames for an image start (default: the "
      "image model file's latent_size times the autoencoder's factor, else 64x128)")
    a("--seconds", type=float, default=120.0)
    a("--fps", type=float, default=None, help="key-frame rate of the video model (default: "
      "its model file's 'fps', else 10)")
    a("--window", type=int, default=None, help="frames per prediction window T (default: model "
      "file 'num_frames', else its max_frames capped at 10)")
    a("--context", type=int, default=2, help="context frames S for segments after the first")
    a("--daynight", choices=(*DAYNIGHT_NAMES, "both"), default=None,
      help="label for the drive (default: the scenario's; --preset demo: both)")
    a("--seed", type=int, default=0)
    a("--steps", type=int, default=20)
    a("--sampler", choices=tuple(SAMPLERS), default="ddim")
    a("--guidance-context", type=float, default=1.5)
    a("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default="taper")
    a("--guidance-boxes", type=float, default=1.0)
    a("--guidance-labels", type=float, default=1.0)
    a("--max-boxes", type=int, default=None, help="default: the video model's max_boxes")
    a("--save-every", type=int, default=2, help="segments between resume-state saves")
    a("--out", help="output clip folder (default with --preset: RUNS/rollouts/demo)")
    a("--resume", action="store_true", help="continue an interrupted rollout in --out")
    a("--overwrite", action="store_true", help="replace an existing output")
    a("--debug-video", action="store_true", help="also write debug.mp4 with the boxes drawn")
    a("--workers", type=int, default=1, help="with --daynight both: drives rendered in parallel "
      "processes, the CPU threads split between them (0: one per drive; default 1)")
    a("--no-progress", action="store_true")


def resolve_preset(args: argparse.Namespace) -> None:
    """Fill missing checkpoints from ``RUNS/demo/<stage>/model.*`` (explicit args win)."""
    if args.preset != "demo":
        return
    root = Path(args.runs) / "demo"
    for attr, sub in PRESET_DIRS.items():
        if getattr(args, attr):
            continue
        found = [root / sub / f"model{s}" for s in MODEL_SUFFIXES if (root / sub / f"model{s}").is_file()]
        if not found and attr != "image_ckpt":
            raise DriveSimInputError("demo checkpoint not found (run `make demo` first, or pass "
                                     f"--{attr.replace('_', '-')})", path=root / sub / "model.*")
        setattr(args, attr, str(found[0]) if found else None)
    if args.out is None:
        args.out = str(Path(args.runs) / "rollouts" / "demo")
    if args.daynight is None:
        args.daynight = "both"


@dataclass
class Loaded:
    ae: AutoencoderKL
    predictor: PredictionSampler
    window: int
    fps: float
    max_boxes: int
    image: ImageStartSampler | None
    interp: InterpolationSampler | None


def load_models(args: argparse.Namespace) -> Loaded:
    for attr in ("video_ckpt", "ae_ckpt"):
        if not getattr(args, attr):
            raise DriveSimInputError(f"--{attr.replace('_', '-')} is required (or --preset demo)",
                                     field=f"--{attr.replace('_', '-')}")
    video = load_diffusion_model(args.video_ckpt, "prediction")
    meta = video.hparams
    kw = dict(sampler=args.sampler, guidance_boxes=args.guidance_boxes, guidance_labels=args.guidance_labels)
    predictor = PredictionSampler(video, args.steps, args.guidance_context, args.guidance_schedule, **kw)
    image = (ImageStartSampler(load_diffusion_model(args.image_ckpt, "image"), args.steps, **kw)
             if args.image_ckpt else None)
    interp = (InterpolationSampler(load_diffusion_model(args.interp_ckpt, "interpolation"), args.steps,
                                   regime=args.interp_regime, **kw) if args.interp_ckpt else None)
    window = args.window or int(meta.get("num_frames") or min(10, video.unet.config["max_frames"]))
    fps = args.fps or float(meta.get("fps") or 10.0)
    max_boxes = args.max_boxes or int(video.unet.config.get("max_boxes", 16))
    return Loaded(load_autoencoder(args.ae_ckpt), predictor, window, fps, max_boxes, image, interp)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise DriveSimInputError("expected HxW, e.g. 64x128", field="--size", value=text) from err
    return h, w


@torch.no_grad()
def start_latents(args: argparse.Namespace, loaded: Loaded, scenario: Scenario,
                  plan: RolloutPlan) -> torch.Tensor:
    """[1, S0, C, h, w]: encoded clip frames, or the image LDM's frame for the first boxes."""
    start = args.start
    if start == "auto":
        start = "image" if loaded.image is not None else (
            args.scenario if args.scenario.startswith("clip:") else "image")
    if start.startswith("clip:"):
        from drivesim.data.clip_format import read_clip

        clip = read_clip(start.split(":", 1)[1])
        rgb = torch.from_numpy(clip.frames(list(range(args.start_frames))))  # [S0, H, W, 3]
        video = rgb.permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0  # [1, S0, 3, H, W]
        return loaded.ae.encode_latents(video)
    if start != "image":
        raise DriveSimInputError("expected auto, image or clip:DIR", field="--start", value=start)
    if loaded.image is None:
        raise DriveSimInputError("an image start needs --image-ckpt (or use --start clip:DIR)",
                                 field="--image-ckpt")
    f = loaded.ae.downsample_factor
    if args.size is not None:
        h, w = _parse_size(args.size)
        hw = (h // f, w // f)
    else:
        hw = tuple(loaded.image.model.hparams.get("latent_size") or (64 // f, 128 // f))
    cond = segment_condition(scenario, [0], plan.model_fps, 0)
    gen = torch.Generator().manual_seed(int(args.seed) + 7919)  # own stream: start != segments
    return loaded.image(cond, (loaded.ae.latent_channels, *hw), gen)


def _fingerprint_args(args: argparse.Namespace, plan: RolloutPlan, daynight: str | None) -> dict:
    keep = ("interp_factor", "interp_regime", "scenario_end", "crowd", "start", "start_frames",
            "size", "context", "seed", "steps", "sampler", "guidance_context", "guidance_schedule",
            "guidance_boxes", "guidance_labels", "max_boxes")
    out = {k: getattr(args, k) for k in keep}
    out.update(seconds=plan.seconds, fps=plan.model_fps, window=plan.window, daynight=daynight)
    return out


def build_job(args: argparse.Namespace, loaded: Loaded, daynight: str | None, out: Path
              ) -> tuple[RolloutJob, RolloutModels, torch.Tensor | None]:
    r = args.interp_factor if loaded.interp is not None else 1
    plan = RolloutPlan(seconds=args.seconds, model_fps=loaded.fps, window=loaded.window,
                       context=args.context, first_context=args.start_frames, interp_factor=r)
    scenario = load_scenario(args.scenario, fps=plan.output_fps, daynight=daynight, crowd=args.crowd,
                             end=args.scenario_end, max_boxes=loaded.max_boxes,
                             traffic_range=args.traffic_range)
    ckpts = {"video": args.video_ckpt, "ae": args.ae_ckpt, "image": args.image_ckpt,
             "interp": args.interp_ckpt}
    fp = fingerprint(ckpts, _fingerprint_args(args, plan, daynight), scenario.describe())
    meta = {"seed": args.seed, "checkpoints": {k: v for k, v in ckpts.items() if v},
            "guidance_context": args.guidance_context, "guidance_schedule": args.guidance_schedule}
    job = RolloutJob(plan, scenario, out, seed=args.seed, fingerprint=fp, debug_video=args.debug_video,
                     save_every=max(1, args.save_every), metadata=meta)
    models = RolloutModels(loaded.predictor, loaded.ae.decode_latents, loaded.interp,
                           decode_overlap=loaded.ae.temporal_receptive_radius)
    start = None if args.resume else start_latents(args, loaded, scenario, plan)
    return job, models, start


def rollout_targets(args: argparse.Namespace) -> list[tuple[str | None, Path]]:
    """(daynight, output folder) pairs: one, or day and night under --out with ``both``."""
    if not args.out:
        raise DriveSimInputError("--out is required (or --preset demo)", field="--out")
    if args.daynight == "both":
        return [(dn, Path(args.out) / dn) for dn in ("day", "night")]
    return [(args.daynight, Path(args.out))]


def _report(res, fps: float) -> None:
    print(f"wrote {res.out_dir}: {res.num_frames} frames at {fps:g} fps, "
          f"{res.num_segments} segments" + (f" (resumed at segment {res.resumed_from})"
                                            if res.resumed_from is not None else ""))


def _run_one(args: argparse.Namespace, daynight: str | None, out: Path, position: int,
             threads: int):
    """One drive in a worker process (``--workers``): own models, ``threads`` CPU threads."""
    torch.set_num_threads(threads)
    loaded = load_models(args)
    job, models, start = build_job(args, loaded, daynight, out)
    res = run_rollout(job, models, start, resume=args.resume, overwrite=args.overwrite,
                      progress=not args.no_progress, desc=f"rollout {daynight or out.name}",
                      position=position)
    return res, job.plan.output_fps


def run(args: argparse.Namespace) -> int:
    resolve_preset(args)
    targets = rollout_targets(args)
    if args.workers < 0:
        raise DriveSimInputError("must be >= 0", field="--workers", value=args.workers)
    for _, out in targets:  # refuse an existing output before loading or sampling anything
        prepare_output(out, resume=args.resume, overwrite=args.overwrite)
    workers = min(len(targets), args.workers or len(targets))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        with spawn_pool(workers) as pool:
            futures = [pool.submit(_run_one, args, dn, out, i, threads)
                       for i, (dn, out) in enumerate(targets)]
            for future in futures:  # a failed drive raises here
                _report(*future.result())
        return 0
    loaded = load_models(args)
    for daynight, out in targets:
        job, models, start = build_job(args, loaded, daynight, out)
        res = run_rollout(job, models, start, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.no_progress)
        _report(res, job.plan.output_fps)
    return 0
