"""`drivesim demo` (make demo): the whole tiny stack on the synthetic world, on CPU.

The training chain of `drivesim train` (``tools/chain.py``) on DATA=synthetic at size tiny,
limited to data -> autoencoder -> temporal decoder -> latent cache -> image LDM -> video LDM
with the demo's wall-time budgets, then 2-minute day and night rollouts and an oracle
evaluation against held-out synthetic clips. Each stage is a plain `drivesim` command (printed
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
_TRAIN_MINUTES = {"autoencoder": 3.5, "autoencoder_temporal": 0.5, "image_ldm": 4.5,
                  "video_ldm": 2.0}
DEMO_STAGES = ("data", "autoencoder", "autoencoder_temporal", "latents", "image_ldm", "video_ldm")
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


def demo_after_stages(runs: Path, *, seconds: float = 120.0, rollout_steps: int = 5) -> list[Stage]:
    """The rollouts (``runs/rollouts/demo``) and their evaluation after the training chain."""
    root = runs / "demo"
    data = root / "data"
    rollouts = runs / "rollouts" / "demo"
    report = root / "eval" / "report.json"
    video = root / "video_ldm" / "model.safetensors"
    return [
        Stage("rollouts", f"{seconds / 60:g}-minute day and night rollouts",
              ["rollout", "--preset", "demo", "--runs", str(runs), "--seconds", str(seconds),
               "--steps", str(rollout_steps), "--crowd", "crowded", *_TRAFFIC, *_BOX_GUIDANCE, "--workers", "2",
               "--overwrite", "--debug-video"],
              outputs=[rollouts / "day" / "clip.json", rollouts / "night" / "clip.json"], inputs=[video]),
        # both sides at the rollouts' frame rate (the video model's): frame differences of
        # 2 fps rollouts and 10 fps real clips are not comparable
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
    print(f"\nvideos:  {rollouts / 'day'}/  {rollouts / 'night'}/  (frames.mp4, debug video, clip.json)")
    print(f"report:  {runs / 'demo' / 'eval' / 'report.json'} (+ drift and sample PNGs beside it)")
    print(f"logs:    tensorboard --logdir {runs / 'demo'}")
    return 0
