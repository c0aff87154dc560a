"""`drivesim demo` (make demo): the whole tiny stack on the synthetic world, on CPU.

The training chain of `drivesim train` (``tools/chain.py``) on DATA=synthetic at size tiny,
with the demo's wall-time budgets: data -> autoencoder -> temporal decoder -> latent cache ->
image LDM -> video LDM -> interpolation -> video upsampler. Then 2-minute day and night
rollouts through the first interpolation pass and the upsampler (2 fps key frames -> 8 fps,
64x128 -> 256x512) and their oracle evaluation (at the key frames) against held-out synthetic
clips, a 10-second rollout through the whole cascade (both passes: 32 fps), and a 2-minute
ego-motion rollout of the stop-and-go + curve preset (key frames). Each stage is a plain `drivesim` command (printed
before it runs, so a user can repeat any step by hand); finished stages are skipped on a re-run
(stamps), `--force` redoes them. The budget per training stage is `--minutes` scaled.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from drivesim.tools.chain import ChainSpec
from drivesim.tools.pipeline import Stage, StageFailed, banner
from drivesim.tools.runs import run_chain

# Wall-time budget per training stage in minutes at --minutes 20 (scaled linearly). The
# image LDM gets the largest LDM share: the video LDM freezes its spatial layers, so what a
# rollout frame looks like is the image model's (6 minutes draw road geometry that 3 do not;
# docs/benchmarks.md), and the temporal decoder stage gains little per minute on CPU.
# The cascade stages get short budgets (interpolation trains the temporal layers only; the
# upsampler is a small residual network): their in-between and upsampled frames inherit the key
# frames' look, and a CPU demo has 20 minutes in all (docs/benchmarks.md, "make demo").
_TRAIN_MINUTES = {"autoencoder": 3.0, "autoencoder_temporal": 0.5, "image_ldm": 3.75,
                  "video_ldm": 2.0, "interpolation": 1.0, "upsampler": 1.5}
DEMO_STAGES = ("data", "autoencoder", "autoencoder_temporal", "latents", "image_ldm", "video_ldm",
               "interpolation", "upsampler")
# The demo's world: dense traffic close to the camera (the tiny configs' synthetic source
# uses the same), so the scenario's vehicles are large enough to see at 64x128.
_TRAFFIC = ["--traffic-range", "60"]
# Box guidance 2 in the rollouts: oracle box recall 0.15 -> 0.40, precision 0.65 -> 0.73 with the
# same demo models, for a third guidance branch (rollout stage 75 -> 89 s; docs/benchmarks.md).
_BOX_GUIDANCE = ["--guidance-boxes", "2"]
_BUDGET_AT = 20.0
VIDEO_CONFIG = "configs/video_ldm/tiny.yaml"
# no sanity validation: the demo's configs are known good, and the step-0 samples it logs cost
# the video stage ~15 s of a 2-minute budget (validation still runs at the end)
_FIT_EXTRA = ("--trainer.enable_progress_bar", "true", "--trainer.limit_val_batches", "2",
              "--trainer.num_sanity_val_steps", "0")


def _config_fps(config: str) -> float:
    """The clip frame rate (``data.init_args.fps``) a training config uses."""
    import yaml

    return float(yaml.safe_load(Path(config).read_text())["data"]["init_args"]["fps"])


def demo_spec(runs: Path, *, minutes: float = _BUDGET_AT, clips: int = 32) -> ChainSpec:
    """The demo's part of the training chain: ``runs/demo`` on the synthetic world."""
    scale = minutes / _BUDGET_AT
    return ChainSpec(run=runs / "demo", data="synthetic", size="tiny", stages=DEMO_STAGES,
                     stage_minutes={k: v * scale for k, v in _TRAIN_MINUTES.items()}, extra=_FIT_EXTRA,
                     synthetic_clips=clips)


# The demo's cascade on 2 CPU cores: the 2-minute drives take one interpolation pass (x4, 8 fps)
# and the upsampler (2 steps per chunk): 197 s for both drives against 37 s for key frames only;
# both passes (x16, 32 fps) cost 4 s per second of drive, so they run on a 10-second drive.
# `make rollout` runs the whole cascade on the 2-minute drives.
CASCADE_SECONDS, UPSAMPLE_STEPS = 10.0, 2
# The ego-motion rollout: the stop-and-go + curve preset, its motion guided (scale 2).
EGO_SCENARIO, EGO_GUIDANCE = "synthetic:7:stop_and_go_curve", "2"


def demo_after_stages(runs: Path, *, seconds: float = 120.0, rollout_steps: int = 5) -> list[Stage]:
    """The rollouts (key frames under ``runs/rollouts/demo``, the cascade and ego drives beside
    it) and the key-frame rollouts' evaluation after the training chain."""
    root = runs / "demo"
    data = root / "data"
    rollouts = runs / "rollouts" / "demo"
    cascade, ego = runs / "rollouts" / "demo-cascade", runs / "rollouts" / "demo-ego"
    report = root / "eval" / "report.json"
    video = root / "video_ldm" / "model.safetensors"
    common = ["--steps", str(rollout_steps), "--crowd", "crowded", *_TRAFFIC, *_BOX_GUIDANCE, "--overwrite"]
    key_frames = ["--interp-passes", "0", "--no-upsample"]
    upsample = ["--upsample-steps", str(UPSAMPLE_STEPS)]
    cascade_models = [root / "interpolation" / "model.safetensors", root / "upsampler" / "model.safetensors"]
    return [
        Stage("rollouts", f"{seconds / 60:g}-minute day and night rollouts (x4 interpolation: 8 fps; x4 upsampler)",
              ["rollout", "--preset", "demo", "--runs", str(runs), "--seconds", str(seconds), *common,
               "--interp-passes", "1", *upsample, "--workers", "2", "--debug-video"],
              outputs=[rollouts / "day" / "clip.json", rollouts / "night" / "clip.json"],
              inputs=[video, *cascade_models]),
        Stage("cascade", f"a {CASCADE_SECONDS:g}-second rollout through the whole cascade (32 fps, 4x resolution)",
              ["rollout", "--run", str(root), "--scenario", "synthetic:3", "--seconds", f"{CASCADE_SECONDS:g}",
               *common, "--interp-passes", "2", *upsample, "--out", str(cascade)],
              outputs=[cascade / "clip.json"], inputs=[video, *cascade_models]),
        Stage("ego", f"a {seconds / 60:g}-minute ego-motion rollout ({EGO_SCENARIO})",
              ["rollout", "--run", str(root), "--scenario", EGO_SCENARIO, "--seconds", str(seconds), *common,
               *key_frames, "--guidance-ego", EGO_GUIDANCE, "--debug-video", "--out", str(ego)],
              outputs=[ego / "clip.json"], inputs=[video]),
        # both sides at the key-frame rate (the video model's; the 8 fps rollouts' every fourth
        # frame): frame differences of 2 fps and 10 fps video are not comparable
        Stage("eval", "oracle metrics of the rollouts against held-out synthetic clips",
              ["eval", "--real", str(data), "--real-split", "val", "--fake", str(rollouts),
               "--fps", f"{_config_fps(VIDEO_CONFIG):g}",
               "--metrics", "oracle", "--out", str(report), "--overwrite"],
              outputs=[report], inputs=[rollouts / "day" / "clip.json", rollouts / "night" / "clip.json"]),
    ]


def demo_stages(runs: Path, *, minutes: float = _BUDGET_AT, seconds: float = 120.0,
                clips: int = 32, rollout_steps: int = 5) -> list[Stage]:
    """The demo's stages, all under ``runs/demo`` (rollouts under ``runs/rollouts/demo``)."""
    from drivesim.tools.chain import chain_stages

    return [*chain_stages(demo_spec(runs, minutes=minutes, clips=clips)),
            *demo_after_stages(runs, seconds=seconds, rollout_steps=rollout_steps)]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default="runs", help="output root (default: runs)")
    parser.add_argument("--force", action="store_true", help="redo finished stages")
    parser.add_argument("--minutes", type=float, default=_BUDGET_AT,
                        help="overall budget the training stages are scaled to (default 20)")
    parser.add_argument("--seconds", type=float, default=120.0, help="rollout length (default 120)")
    parser.add_argument("--clips", type=int, default=32, help="synthetic clips to export")
    parser.add_argument("--rollout-steps", type=int, default=5, help="sampler steps per segment")


def run(args: argparse.Namespace) -> int:
    runs = Path(args.runs)
    start = time.monotonic()
    try:
        results = run_chain(demo_spec(runs, minutes=args.minutes, clips=args.clips), force=args.force,
                            on_change="rerun",
                            extra_stages=demo_after_stages(runs, seconds=args.seconds,
                                                           rollout_steps=args.rollout_steps))
    except StageFailed as err:
        print(f"\ndemo stopped: {err}")
        return 1
    banner(f"demo finished in {(time.monotonic() - start) / 60:.1f} min")
    for r in results:
        print(f"  {r.name:22s} {'skipped' if r.skipped else f'{r.seconds:6.0f} s'}")
    rollouts = runs / "rollouts" / "demo"
    print(f"\nvideos:  {rollouts / 'day'}/  {rollouts / 'night'}/  (8 fps, 256x512: frames.mp4, debug video, "
          "clip.json)")
    print(f"         {runs / 'rollouts' / 'demo-cascade'}/ (32 fps, 256x512)  "
          f"{runs / 'rollouts' / 'demo-ego'}/ (stop-and-go + curve, 2 fps)")
    print(f"report:  {runs / 'demo' / 'eval' / 'report.json'} (+ drift and sample PNGs beside it)")
    print(f"logs:    tensorboard --logdir {runs / 'demo'}")
    return 0
