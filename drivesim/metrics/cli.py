"""`drivesim eval`: FVD / FID / oracle / C2ST metrics of fake videos against real ones -> report.json.

    drivesim eval --real data/test --fake runs/rollouts --metrics fvd,fid,oracle \\
        --out eval/report.json --i3d ~/weights/i3d_torchscript.pt \\
        --inception ~/weights/inception-2015-12-05.pt

Folders are clip-format datasets (manifest.jsonl or clip folders) or plain mp4 folders.
Writes report.json atomically plus drift.png and samples.png next to it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from drivesim.metrics.c2st import C2STConfig
from drivesim.metrics.evaluate import Evaluator, flat_metrics, parse_metrics
from drivesim.metrics.extractors import load_detector
from drivesim.metrics.frechet import FeatureStats
from drivesim.metrics.oracle.model import OracleConfig, default_cache_dir, load_or_train_oracle
from drivesim.metrics.plots import plot_drift, sample_grid, save_png
from drivesim.metrics.protocol import EvalProtocol
from drivesim.metrics.report import build_report, mark_weights, write_report
from drivesim.metrics.sources import dataset_fingerprint, list_sources
from drivesim.utils.args import hw_size
from drivesim.utils.io import DriveSimInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--real", required=True, help="real videos: clip-format dataset or mp4 folder")
    p.add_argument("--real-split", default=None, help="manifest split of the real set (e.g. test)")
    p.add_argument("--fake", required=True, help="generated videos: clip folders or mp4 folder")
    p.add_argument("--metrics", default="fvd,fid,oracle", help="comma list of fvd,fid,oracle,temporal,c2st")
    p.add_argument("--out", required=True, help="report.json path (plots are written beside it)")
    p.add_argument("--i3d", default=None, help="i3d_torchscript.pt (or env DRIVESIM_I3D)")
    p.add_argument("--inception", default=None, help="inception-2015-12-05.pt (or env DRIVESIM_INCEPTION)")
    p.add_argument("--allow-unknown-weights", action="store_true",
                   help="accept I3D / Inception files whose SHA-256 is not the published one "
                        "(the report marks those metrics as non-standard)")
    p.add_argument("--oracle", default=None, help="oracle checkpoint; default: cached/trained under --cache-dir")
    p.add_argument("--cache-dir", default=None, help="real-statistics and oracle cache (default ~/.cache/drivesim or DRIVESIM_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached real statistics")
    d = EvalProtocol()
    p.add_argument("--num-clips", type=int, default=d.num_clips, help="FVD clips per side")
    p.add_argument("--frames", type=int, default=d.frames_per_clip, help="frames per FVD clip")
    p.add_argument("--frame-stride", type=int, default=d.frame_stride)
    p.add_argument("--fps", type=float, default=None, help="sample clips at this rate (overrides --frame-stride)")
    p.add_argument("--clip-sampling", choices=("auto", "one_per_video", "consecutive"), default=d.clip_sampling,
                   help="FVD clips: one per video at a random offset (StyleGAN-V), back to back "
                        "from frame 0, or auto (one per video when a side has >= --num-clips videos)")
    p.add_argument("--seed", type=int, default=d.seed, help="clip offsets and the C2ST classifier")
    p.add_argument("--max-clips-per-video", type=int, default=None)
    p.add_argument("--resize", choices=("squash", "center_crop"), default=d.resize)
    p.add_argument("--fid-frames", type=int, default=d.fid_num_frames)
    p.add_argument("--fid-frame-stride", type=int, default=d.fid_frame_stride)
    p.add_argument("--oracle-real-frames", type=int, default=d.oracle_real_frames)
    p.add_argument("--window-seconds", type=float, default=d.window_seconds, help="drift window; 0 = none")
    p.add_argument("--min-window-clips", type=int, default=d.min_window_clips,
                   help="no per-window FVD below this many fake clips in the window")
    p.add_argument("--min-window-frames", type=int, default=d.min_window_frames,
                   help="no per-window FID below this many fake frames in the window")
    p.add_argument("--covariance", choices=("n-1", "n"), default=d.covariance,
                   help="Fréchet covariance normalisation: n-1 (np.cov, TTUR) or n (StyleGAN-V)")
    c = C2STConfig()
    p.add_argument("--c2st-steps", type=int, default=c.steps, help="C2ST classifier training steps per fold")
    p.add_argument("--c2st-clips-per-video", type=int, default=d.c2st_clips_per_video)
    p.add_argument("--c2st-max-clips", type=int, default=d.c2st_max_clips, help="C2ST clips per side")
    p.add_argument("--c2st-frame-size", type=hw_size("--c2st-frame-size"), default=c.frame_size, metavar="HxW",
                   help="frame variant's input size (default %(default)s; a coarser size leaves out fine "
                        "texture and blur and compares the scene's look: colours, layout)")
    p.add_argument("--c2st-clip-size", type=hw_size("--c2st-clip-size"), default=c.clip_size, metavar="HxW",
                   help="clip variant's input size (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tensorboard", default=None, help="also log scalars, drift curves and samples here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true")


def _protocol(args: argparse.Namespace) -> EvalProtocol:
    return EvalProtocol(
        num_clips=args.num_clips, frames_per_clip=args.frames, frame_stride=args.frame_stride,
        fps=args.fps, clip_sampling=args.clip_sampling, seed=args.seed,
        max_clips_per_video=args.max_clips_per_video, resize=args.resize,
        fid_num_frames=args.fid_frames, fid_frame_stride=args.fid_frame_stride,
        oracle_real_frames=args.oracle_real_frames,
        window_seconds=args.window_seconds if args.window_seconds else None,
        min_window_clips=args.min_window_clips, min_window_frames=args.min_window_frames,
        covariance=args.covariance, c2st_clips_per_video=args.c2st_clips_per_video,
        c2st_max_clips=args.c2st_max_clips,
        real_set=f"{Path(args.real).resolve()}" + (f" split={args.real_split}" if args.real_split else ""))


def _extractors(args: argparse.Namespace, metrics: tuple[str, ...]) -> tuple[dict, dict]:
    """Load detectors first, so missing or unknown weights fail before any video is read."""
    modules, info = {}, {}
    for metric, kind, path in (("fvd", "i3d", args.i3d), ("fid", "inception", args.inception)):
        if metric in metrics:
            modules[kind], weights = load_detector(kind, path, allow_unknown=args.allow_unknown_weights)
            info[kind] = weights.to_dict()
    return modules, info


def _cache_paths(args: argparse.Namespace, protocol: EvalProtocol, info: dict, num_real: int) -> dict[str, Path]:
    """Real-statistics cache files keyed by dataset + protocol (with the clip sampling the real
    side resolves to) + extractor file hash."""
    if args.no_cache:
        return {}
    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    fingerprint = dataset_fingerprint(args.real, args.real_split)
    kinds = {"fvd": "i3d", "fid": "inception"}
    return {m: root / "stats" / f"{m}-{protocol.key(m, fingerprint, info[k]['sha256'], protocol.sampling_for(num_real))}.npz"
            for m, k in kinds.items() if k in info}


def _listing(root: str, split: str | None, flag: str) -> list:
    """``list_sources`` with a missing or empty folder reported against its flag."""
    try:
        return list_sources(root, split)
    except DriveSimInputError as err:
        if err.field != "path":
            raise
        raise DriveSimInputError(err.message, path=err.path, field=flag, value=root) from err


def _progress(args: argparse.Namespace, total: int, desc: str):
    if args.no_progress:
        return lambda it: it
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, unit="video", file=sys.stderr)


def _evaluate(args: argparse.Namespace, out: Path) -> dict:
    metrics, protocol = parse_metrics(args.metrics), _protocol(args)
    modules, info = _extractors(args, metrics)
    real_list, fake_list = _listing(args.real, args.real_split, "--real"), _listing(args.fake, None, "--fake")
    num_videos = {True: len(real_list), False: len(fake_list)}
    oracle = None
    if "oracle" in metrics:
        oracle = load_or_train_oracle(OracleConfig(), path=args.oracle, cache_dir=args.cache_dir)
        info["oracle"] = {"file": args.oracle or "cache", "config": asdict(oracle.config)}
    caches = _cache_paths(args, protocol, info, num_videos[True])
    cached = {m: FeatureStats.load(p) for m, p in caches.items() if p.is_file()}
    ev = Evaluator(metrics, protocol=protocol, i3d=modules.get("i3d"), inception=modules.get("inception"),
                   oracle=oracle, real_stats=cached, batch_size=args.batch_size, num_videos=num_videos,
                   c2st=C2STConfig(steps=args.c2st_steps, seed=args.seed, frame_size=args.c2st_frame_size,
                                   clip_size=args.c2st_clip_size))
    for items, real, desc in ((real_list, True, "real"), (fake_list, False, "fake")):
        for _, opener in _progress(args, len(items), desc)(items):
            ev.add(opener(), real=real)
    result = mark_weights(ev.result(), info)
    result["protocol"] = protocol.to_dict()
    for m, stats in ev.real_stats().items():
        if m in caches and m not in cached and stats.count >= 2:
            stats.save(caches[m], overwrite=True)
    plots = _plots(args, out, result, fake_list)
    inputs = {"real": str(Path(args.real).resolve()), "real_split": args.real_split,
              "fake": str(Path(args.fake).resolve()), "real_videos": len(real_list),
              "fake_videos": len(fake_list), "real_stats_cache": {m: str(p) for m, p in caches.items()}}
    return build_report(result, inputs=inputs, extractors=info, plots=plots)


def _plots(args: argparse.Namespace, out: Path, result: dict, fake_list: list) -> list[str]:
    written = []
    drift = plot_drift(result, out.with_name(out.stem + "_drift.png"), overwrite=args.overwrite)
    if drift is not None:
        written.append(drift.name)
    grid = sample_grid([opener() for _, opener in fake_list[:4]])
    written.append(save_png(out.with_name(out.stem + "_samples.png"), grid, overwrite=args.overwrite).name)
    if args.tensorboard:
        _tensorboard(args.tensorboard, result, grid)
    return written


def _tensorboard(log_dir: str, result: dict, grid) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from drivesim.metrics.plots import drift_series

    with SummaryWriter(log_dir) as writer:
        for name, value in flat_metrics(result).items():
            writer.add_scalar(f"eval/{name}", value, 0)
        for name, (x, y) in drift_series(result).items():
            for t, v in zip(x, y):
                writer.add_scalar(f"eval_drift/{name}", v, int(t))
        writer.add_image("eval/samples", grid, 0, dataformats="HWC")


def run(args: argparse.Namespace) -> int:
    """Bad inputs raise ``DriveSimInputError``; ``drivesim`` prints them as one line, exit 2."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise DriveSimInputError("exists; pass --overwrite to replace it", path=out, field="--out")
    report = _evaluate(args, out)
    write_report(out, report, overwrite=args.overwrite)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in flat_metrics(report).items())
    print(f"wrote {out} ({summary})")
    return 0
