"""`drivesim demo` (make demo): the whole tiny stack on the synthetic world, on CPU.

data -> autoencoder -> temporal decoder -> latent cache -> image LDM -> video LDM ->
2-minute day and night rollouts -> oracle evaluation against held-out synthetic clips.
Each stage is a plain `drivesim` command (printed before it runs, so a user can repeat any
step by hand); finished stages are skipped on a re-run (stamps), `--force` redoes them.
Training stages are bounded by wall time (`--trainer.max_time`) so the demo fits its
budget on a 2-core machine; the budget per stage is `--minutes` scaled.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from drivesim.tools.pipeline import Stage, StageFailed, banner, run_pipeline

# Wall-time budget per training stage in minutes at --minutes 20 (scaled linearly). The
# image LDM gets the largest LDM share: the video LDM freezes its spatial layers, so what a
# rollout frame looks like is the image model's (6 minutes draw road geometry that 3 do not;
# docs/benchmarks.md), and the temporal decoder stage gains little per minute on CPU.
_TRAIN_MINUTES = {"autoencoder": 3.5, "autoencoder_temporal": 0.5, "image_ldm": 4.5,
                  "video_ldm": 2.0}
# The demo's world: dense traffic close to the camera (the tiny configs' synthetic source
# uses the same), so the scenario's vehicles are large enough to see at 64x128.
_TRAFFIC = ["--traffic-range", "60"]
# Box guidance 2 in the rollouts: oracle box recall 0.15 -> 0.40, precision 0.65 -> 0.73 with the
# same demo models, for a third guidance branch (rollout stage 75 -> 89 s; docs/benchmarks.md).
_BOX_GUIDANCE = ["--guidance-boxes", "2"]
_BUDGET_AT = 20.0
VIDEO_CONFIG = "configs/video_ldm/tiny.yaml"


def _max_time(minutes: float) -> str:
    seconds = max(30, int(round(minutes * 60)))
    return f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"


def _config_fps(config: str) -> float:
    """The clip frame rate (``data.init_args.fps``) a training config uses."""
    import yaml

    return float(yaml.safe_load(Path(config).read_text())["data"]["init_args"]["fps"])


def _fit(name: str, config: str, root: Path, minutes: float, overrides: list[str]) -> Stage:
    out = root / name
    model_file = out / "model.safetensors"
    argv = ["fit", "--config", config, "--trainer.default_root_dir", str(out),
            "--trainer.max_time", _max_time(minutes), "--trainer.enable_progress_bar", "true",
            "--trainer.limit_val_batches", "2",
            # no sanity validation: the demo's configs are known good, and the step-0 samples it
            # logs cost the video stage ~15 s of a 2-minute budget (validation still runs at the end)
            "--trainer.num_sanity_val_steps", "0",
            "--model.init_args.model_file", str(model_file),
            # the pipeline runs a stage only when it is not finished (stamp) or on --force, and
            # then the stage's own earlier output must be replaced, not refused
            "--model.init_args.overwrite", "true", *overrides]
    return Stage(name=name, title=f"train {name} ({minutes:.1f} min budget)", argv=argv,
                 outputs=[model_file])


def demo_stages(runs: Path, *, minutes: float = _BUDGET_AT, seconds: float = 120.0,
                clips: int = 32, rollout_steps: int = 5) -> list[Stage]:
    """The demo's stages, all under ``runs/demo`` (rollouts under ``runs/rollouts/demo``)."""
    root = runs / "demo"
    scale = minutes / _BUDGET_AT
    data, latents = root / "data", root / "latents"
    ae, ae_t = root / "autoencoder" / "model.safetensors", root / "autoencoder_temporal" / "model.safetensors"
    img = root / "image_ldm" / "model.safetensors"
    clip_data = ["--data.init_args.source", "clips", "--data.init_args.root", str(data)]
    latent_data = ["--data.init_args.source", "latents", "--data.init_args.root", str(latents)]
    rollouts = runs / "rollouts" / "demo"
    report = root / "eval" / "report.json"
    return [
        Stage("data", "export the synthetic world (train/val clips, 64x128 @ 10 fps)",
              ["data", "synth", "--out", str(data), "--clips", str(clips), "--seconds", "12",
               "--fps", "10", "--size", "64x128", "--seed", "0", "--val-fraction", "0.25",
               "--night-fraction", "0.5", "--min-vehicles", "4", "--max-vehicles", "12", *_TRAFFIC,
               "--workers", "0", "--overwrite"],
              outputs=[data / "manifest.jsonl"]),
        _fit("autoencoder", "configs/autoencoder/tiny.yaml", root,
             _TRAIN_MINUTES["autoencoder"] * scale, clip_data),
        _fit("autoencoder_temporal", "configs/autoencoder/temporal_tiny.yaml", root,
             _TRAIN_MINUTES["autoencoder_temporal"] * scale,
             [*clip_data, "--model.init_args.init_from", str(ae)]),
        Stage("latents", "encode the dataset into latent shards",
              ["data", "encode", "--ckpt", str(ae_t), "--data", str(data), "--out", str(latents),
               "--overwrite"],
              outputs=[latents / "manifest.jsonl"]),
        _fit("image_ldm", "configs/image_ldm/tiny.yaml", root, _TRAIN_MINUTES["image_ldm"] * scale,
             [*latent_data, "--model.init_args.autoencoder_path", str(ae_t)]),
        _fit("video_ldm", VIDEO_CONFIG, root, _TRAIN_MINUTES["video_ldm"] * scale,
             [*latent_data, "--model.init_args.autoencoder_path", str(ae_t),
              "--model.init_args.init_from", str(img)]),
        Stage("rollouts", f"{seconds / 60:g}-minute day and night rollouts",
              ["rollout", "--preset", "demo", "--runs", str(runs), "--seconds", str(seconds),
               "--steps", str(rollout_steps), "--crowd", "crowded", *_TRAFFIC, *_BOX_GUIDANCE, "--workers", "2",
               "--overwrite", "--debug-video"],
              outputs=[rollouts / "day" / "clip.json", rollouts / "night" / "clip.json"]),
        # both sides at the rollouts' frame rate (the video model's): frame differences of
        # 2 fps rollouts and 10 fps real clips are not comparable
        Stage("eval", "oracle metrics of the rollouts against held-out synthetic clips",
              ["eval", "--real", str(data), "--real-split", "val", "--fake", str(rollouts),
               "--fps", f"{_config_fps(VIDEO_CONFIG):g}",
               "--metrics", "oracle", "--out", str(report), "--overwrite"],
              outputs=[report]),
    ]


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
    stages = demo_stages(runs, minutes=args.minutes, seconds=args.seconds, clips=args.clips,
                         rollout_steps=args.rollout_steps)
    start = time.monotonic()
    try:
        results = run_pipeline(stages, runs / "demo" / ".stamps", force=args.force)
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
