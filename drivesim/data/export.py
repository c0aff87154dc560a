"""``drivesim data synth``: export the synthetic world to the clip format.

    drivesim data synth --out DIR --clips N --seconds S --fps F --size HxW --seed K \\
        [--night-fraction 0.5] [--format mp4|png|jpg] [--val-fraction 0.1] \\
        [--ego-programs 0.5] [--overwrite | --skip-existing] [--workers N]

Clip ``i`` is ``DIR/synth_{i:06d}``; its drive (world seed, day/night, vehicle count,
weather) is ``SyntheticDataset(seed=K).scenario(i)``, so the export is reproducible and
sample ``i`` of the streaming dataset shows the same drive. ``--ego-programs`` is the share of
clips whose ego follows a random program of stops, speed changes and curves (the others drive
as the world's own driver does); every frame stores the ego's exact speed and yaw rate.
Each clip is written atomically;
the manifest is written last. A killed run is resumed with ``--skip-existing``.
``--workers N`` renders N clips at a time in separate processes (the renderer and the H.264
writer are single-threaded); the files do not depend on N.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from drivesim.data.clip_format import (
    MANIFEST,
    ClipWriter,
    ManifestEntry,
    assign_split,
    manifest_entry,
    read_clip,
    write_manifest,
)
from drivesim.data.datasets import EGO_PROGRAM_FRACTION, SyntheticDataset, world_config
from drivesim.data.world.config import DEFAULT_TRAFFIC_RANGE
from drivesim.utils.args import hw_size
from drivesim.utils.io import DriveSimInputError
from drivesim.utils.parallel import spawn_pool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--clips", type=int, default=8, help="number of clips")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each clip")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate")
    parser.add_argument("--size", type=hw_size("--size", minimum=16), default=(128, 256), help="HxW, e.g. 128x256")
    parser.add_argument("--seed", type=int, default=0, help="base seed (clip i uses a seed derived from it)")
    parser.add_argument("--night-fraction", type=float, default=0.5, help="probability that a clip is at night")
    parser.add_argument("--min-vehicles", type=int, default=0)
    parser.add_argument("--max-vehicles", type=int, default=12)
    parser.add_argument("--traffic-range", type=float, default=DEFAULT_TRAFFIC_RANGE,
                        help="metres ahead of the ego within which traffic is simulated (shorter = closer vehicles)")
    parser.add_argument("--weathers", default="clear", help="comma list drawn uniformly: clear,rain,fog")
    parser.add_argument("--ego-programs", type=float, default=EGO_PROGRAM_FRACTION,
                        help="share of clips whose ego drives a random program of stops, speed changes and "
                             "curves (0: every ego drives as the world's own driver)")
    parser.add_argument("--format", choices=("mp4", "png", "jpg"), default="mp4", help="frame storage")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the last clips go to split 'val'")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace existing clips and manifest")
    group.add_argument("--skip-existing", action="store_true", help="keep finished clips (resume)")
    parser.add_argument("--workers", type=int, default=1,
                        help="clips rendered in parallel processes (0: one per CPU core; default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def export_clip(clip_dir: Path, scenario: dict, *, frames: int, fps: float, size: tuple[int, int],
                frames_format: str, overwrite: bool) -> None:
    """Render one drive of ``frames`` frames into ``clip_dir`` (atomic)."""
    from drivesim.data.world import DrivingWorld

    h, w = size
    world = DrivingWorld(world_config(scenario, height=h, width=w, fps=fps))
    labels = {"daynight": "night" if scenario["night"] else "day", "weather": scenario["weather"],
              "seed": scenario["seed"], "num_vehicles": scenario["num_vehicles"],
              "traffic_range": scenario["traffic_range"], "source": "synthetic"}
    if scenario.get("ego_program") is not None:
        labels["ego_program"] = scenario["ego_program"]
    with ClipWriter(clip_dir, fps=fps, height=h, width=w, labels=labels, frames_format=frames_format,
                    overwrite=overwrite) as writer:  # crowd: computed from the visible vehicles
        world.skip(scenario["warmup"])
        for _ in range(frames):
            f = world.step()
            writer.add_frame(f.rgb, boxes=f.boxes, classes=f.classes, track_ids=f.track_ids,
                             visibility=f.visibility, ego_speed=f.ego_speed, ego_yaw_rate=f.ego_yaw_rate)


def _existing_entry(clip_dir: Path, root: Path, split: str, scenario: dict, frames: int, fps: float,
                    size: tuple[int, int]) -> ManifestEntry:
    """Manifest entry of a finished clip; refuses one made with other settings."""
    clip = read_clip(clip_dir)
    found = (clip.labels.get("seed"), clip.labels.get("num_vehicles"), clip.labels.get("traffic_range", DEFAULT_TRAFFIC_RANGE),
             clip.labels.get("ego_program"), clip.num_frames, clip.fps, (clip.height, clip.width))
    wanted = (scenario["seed"], scenario["num_vehicles"], scenario["traffic_range"], scenario.get("ego_program"),
              frames, fps, size)
    if found != wanted:
        raise DriveSimInputError(f"existing clip was made with other settings (seed, vehicles, traffic range, "
                                 f"ego program, frames, fps, size) "
                                 f"{found} != {wanted}; use --overwrite", path=clip_dir / "clip.json",
                                 field="labels.seed", value=found)
    return manifest_entry(clip, root, split)


def run(args: argparse.Namespace) -> int:
    out, size = Path(args.out), args.size
    frames = round(args.seconds * args.fps)
    if args.clips < 1 or frames < 1 or not args.fps > 0 or not 0 <= args.val_fraction < 1 or args.workers < 0 \
            or not 0 <= args.ego_programs <= 1:
        print(f"drivesim data synth: need --clips >= 1, --seconds * --fps >= 1, 0 <= --val-fraction < 1, "
              f"--workers >= 0 and 0 <= --ego-programs <= 1 (got {args.clips}, {args.seconds} s x {args.fps} fps, "
              f"{args.val_fraction}, {args.workers}, {args.ego_programs})", file=sys.stderr)
        return 2
    ids = [f"synth_{i:06d}" for i in range(args.clips)]
    taken = [p for p in [out / MANIFEST, *(out / c for c in ids)] if p.exists()]
    if taken and not (args.overwrite or args.skip_existing):
        print(f"drivesim data synth: {taken[0]} exists; pass --overwrite to replace or --skip-existing "
              f"to resume", file=sys.stderr)
        return 2
    source = SyntheticDataset(seed=args.seed, night_fraction=args.night_fraction, min_vehicles=args.min_vehicles,
                              max_vehicles=args.max_vehicles, weathers=tuple(args.weathers.split(",")),
                              traffic_range=args.traffic_range, ego_program_fraction=args.ego_programs)
    splits = [assign_split(i, args.clips, args.val_fraction) for i in range(args.clips)]
    entries: list[ManifestEntry | None] = [None] * args.clips
    todo = []  # (index, clip folder, scenario) of the clips to render
    for i, clip_id in enumerate(ids):
        clip_dir, scenario = out / clip_id, source.scenario(i)
        if args.skip_existing and clip_dir.exists():
            try:  # a finished clip made with these settings is kept
                entries[i] = _existing_entry(clip_dir, out, splits[i], scenario, frames, args.fps, size)
            except DriveSimInputError as err:
                print(f"drivesim data synth: {err}", file=sys.stderr)
                return 1
        else:
            todo.append((i, clip_dir, scenario))
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    kw = dict(frames=frames, fps=args.fps, size=size, frames_format=args.format, overwrite=args.overwrite)
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="synth clips", unit="clip",
               disable=args.no_progress)

    def finished(i: int) -> None:
        entries[i] = manifest_entry(read_clip(out / ids[i]), out, splits[i])
        bar.update()

    if workers == 1 or len(todo) <= 1:
        for i, clip_dir, scenario in todo:
            export_clip(clip_dir, scenario, **kw)
            finished(i)
    else:
        with spawn_pool(min(workers, len(todo))) as pool:
            futures = [(i, pool.submit(export_clip, d, sc, **kw)) for i, d, sc in todo]
            for i, future in futures:
                future.result()  # in order; a failed clip raises here, the manifest is not written
                finished(i)
    bar.close()
    path = write_manifest(out, entries, overwrite=True)
    n_val = sum(e.split == "val" for e in entries)
    print(f"wrote {len(entries)} clips ({len(entries) - n_val} train, {n_val} val) x {frames} frames "
          f"at {args.fps:g} fps, {size[0]}x{size[1]} -> {path}")
    return 0
