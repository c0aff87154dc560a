"""Video upsampler on held-out synthetic clips: PSNR, high-frequency energy, flicker, oracle recall.

    python benchmarks/eval_upsampler.py --model runs/demo/upsampler/model.safetensors \\
        [--data DIR] [--clips 8] [--seconds 4] [--steps 5] [--out runs/demo/eval_upsampler]

Without ``--data`` it exports ``--clips`` held-out drives (``drivesim data synth``, seed 4242,
lossless PNG frames) at the model's high resolution and frame rate into a temporary folder.
Every clip is area-downsampled by the model's scale (the ground-truth low-resolution frames)
and upsampled four ways, from the same noise:

- ``video``: the model as shipped, 8-frame chunks carrying 2 context frames (``drivesim.inference.upsampling``);
- ``per_frame``: the same weights with the temporal layers off (``image_only``: frames sampled
  independently), the paper's video-vs-per-frame contrast;
- ``no_context``: temporal layers on, chunks sampled independently (no frames carried);
- ``bicubic``: the reference.

Measures (luma in [0, 1]): PSNR against the real frames; high-frequency energy, the spectral
power above the low-resolution Nyquist frequency and the variance of the Laplacian, as ratios
to the real frames'; flicker, mean |(x_{t+1} - x_t) - (g_{t+1} - g_t)| against the real frames
g, over all consecutive pairs and over the pairs that straddle a chunk border (each sampler's
own borders; the per-frame and bicubic rows on the video's); oracle box recall
(``metrics/oracle``) of an oracle working at ``--oracle-size`` (default 128x256, twice the
low resolution: an oracle at 256x512 takes ~50 CPU minutes to train) on the upsampled frames,
against the default 64x128 oracle on the low-resolution frames, counting the same boxes at
both sizes. Prints a
table and writes ``eval_upsampler.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drivesim.data.clip_format import read_clip, read_manifest
from drivesim.inference import load_model
from drivesim.inference.upsampling import chunk_borders as chunk_starts
from drivesim.inference.upsampling import upsample_clip
from drivesim.metrics.oracle import OracleConfig, box_fidelity_frame, load_or_train_oracle
from drivesim.metrics.oracle.scores import BoxFidelity, vehicle_boxes
from drivesim.models.upsampler import downsample_frames, upsample_input
from drivesim.training.upsampler_module import frames_independent, psnr
from drivesim.utils.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
CHUNK, CONTEXT = 8, 2
VARIANTS = ("video", "per_frame", "no_context", "bicubic")
LOW_MIN_BOX_PIXELS = 12  # the oracle's default at the low resolution; scaled by s^2 at the high one


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="upsampler model file (kind 'upsampler')")
    p.add_argument("--data", help="clip folder at the high resolution (default: export held-out clips)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=4242, help="export seed (training draws other drives)")
    p.add_argument("--low-size", type=lambda t: tuple(int(v) for v in t.split("x")), default=(64, 128),
                   help="low resolution HxW of the exported clips (default 64x128: the demo's)")
    p.add_argument("--steps", type=int, default=5, help="sampler steps per chunk")
    p.add_argument("--aug-level", type=int, default=None, help="noise augmentation (default: the file's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle recall")
    p.add_argument("--oracle-size", type=lambda t: tuple(int(v) for v in t.split("x")), default=(128, 256),
                   help="working size HxW of the high-resolution oracle (default 128x256: trained once and "
                        "cached, ~10 CPU minutes; at 256x512 it takes ~50)")
    p.add_argument("--out", default=None, help="folder for eval_upsampler.json")
    return p.parse_args(argv)


def export_clips(out: Path, args: argparse.Namespace, fps: float, size: tuple[int, int]) -> Path:
    cmd = [sys.executable, "-m", "drivesim.cli", "data", "synth", "--out", str(out), "--clips", str(args.clips),
           "--seconds", str(args.seconds), "--fps", f"{fps:g}", "--size", f"{size[0]}x{size[1]}",
           "--seed", str(args.seed), "--format", "png", "--min-vehicles", "4", "--max-vehicles", "12",
           "--traffic-range", "60", "--val-fraction", "0", "--no-progress", "--overwrite"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return out


def load_clips(root: Path) -> list[tuple[torch.Tensor, list[np.ndarray]]]:
    """(frames [1,T,3,H,W] in [-1,1], vehicle boxes per frame) of every clip in ``root``."""
    out = []
    for entry in read_manifest(root):
        clip = read_clip(root / entry.path)
        rgb = torch.from_numpy(clip.frames(range(clip.num_frames))).permute(0, 3, 1, 2).float()
        boxes = [vehicle_boxes(clip.boxes[i], clip.classes[i]) for i in range(clip.num_frames)]
        out.append((rgb[None] / 127.5 - 1.0, boxes))
        clip.close()
    return out


def luma(frames: torch.Tensor) -> torch.Tensor:
    """[1,T,3,H,W] in [-1,1] -> BT.601 luma [T,H,W] in [0,1]."""
    x = (frames[0].clamp(-1, 1) + 1) / 2
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1)


def hf_power(grey: torch.Tensor, scale: int) -> float:
    """Mean spectral power above the low-resolution Nyquist frequency, [T,H,W] -> float."""
    spectrum = torch.fft.fft2(grey - grey.mean(dim=(1, 2), keepdim=True)).abs().pow(2)
    fy = torch.fft.fftfreq(grey.shape[1]).abs()[:, None]
    fx = torch.fft.fftfreq(grey.shape[2]).abs()[None, :]
    above = (fy > 0.5 / scale) | (fx > 0.5 / scale)                           # [H, W]
    return float(spectrum[:, above].sum() / grey[0].numel() ** 2)


def laplacian_var(grey: torch.Tensor) -> float:
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    return float(F.conv2d(grey[:, None], kernel).var(dim=(1, 2, 3)).mean())


def flicker(out: torch.Tensor, real: torch.Tensor, pairs: list[int]) -> float:
    """Mean |Δout - Δreal| over the consecutive pairs (i, i + 1) listed."""
    if not pairs:
        return float("nan")
    idx = torch.tensor(pairs)
    d_out, d_real = out[idx + 1] - out[idx], real[idx + 1] - real[idx]
    return float((d_out - d_real).abs().mean())


def chunk_borders(num_frames: int, context: int) -> list[int]:
    """i of the pairs (i, i + 1) whose frames come from two chunks: the last frame a chunk took
    from the one before (or produced, without context) and the chunk's first new frame. The
    per-frame and bicubic variants are scored on the video's borders."""
    return [start - 1 for start in chunk_starts(num_frames, CHUNK, context)]


def upsample_variants(record, low: torch.Tensor, args: argparse.Namespace, seconds: dict[str, float]
                      ) -> dict[str, torch.Tensor]:
    """The four upsamplings of ``low`` [1,T,3,h,w] (the same noise for the three samplers); adds
    each sampler's wall and CPU (process) time to ``seconds``."""
    kw = dict(steps=args.steps, aug_level=args.aug_level)
    runs = {"video": (CONTEXT, False), "no_context": (0, False), "per_frame": (0, True)}
    out = {}
    for name, (context, per_frame) in runs.items():
        start, cpu = time.perf_counter(), time.process_time()
        with frames_independent(record.network, per_frame):
            gen = torch.Generator().manual_seed(args.seed)  # the same noise for every variant
            out[name] = upsample_clip(record, low, chunk=CHUNK, context=context, generator=gen, **kw)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        seconds[f"{name}_cpu"] = seconds.get(f"{name}_cpu", 0.0) + time.process_time() - cpu
    out["bicubic"] = upsample_input(low, record.network.scale)
    return out


def oracle_recall(oracle, frames: torch.Tensor, boxes: list[np.ndarray], min_pixels: int) -> BoxFidelity:
    rgb = ((frames[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    total = BoxFidelity()
    for prob, frame_boxes in zip(oracle.vehicle_prob(rgb), boxes):
        total.add(box_fidelity_frame(prob, frame_boxes, min_pixels))
    return total


def evaluate(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    record = load_model(args.model, "upsampler")
    network, hparams = record.network, record.hparams
    s = network.scale
    with tempfile.TemporaryDirectory(prefix="eval_upsampler_") as tmp:
        if args.data:
            clips = load_clips(Path(args.data))
        else:
            size = (args.low_size[0] * s, args.low_size[1] * s)
            clips = load_clips(export_clips(Path(tmp) / "clips", args, float(hparams.get("fps") or 8.0), size))
    oracles = None if args.no_oracle else _oracles(args.oracle_size, args.low_size)
    sums: dict[str, dict[str, float]] = {v: {} for v in (*VARIANTS, "real", "low")}
    seconds: dict[str, float] = {}
    for gt, boxes in clips:
        low = downsample_frames(gt, s)
        outs = upsample_variants(record, low, args, seconds)
        seconds["frames"] = seconds.get("frames", 0) + gt.shape[1]
        _score_clip(sums, outs, gt, low, boxes, s, oracles)
    return _report(sums, len(clips), seconds, args, hparams)


def _oracles(high: tuple[int, int], low: tuple[int, int]) -> dict:
    """Oracles (``metrics/oracle``, trained once and cached) working at the two sizes."""
    return {"high": load_or_train_oracle(OracleConfig(height=high[0], width=high[1])),
            "low": load_or_train_oracle(OracleConfig(height=low[0], width=low[1])),
            "ratio": high[0] // low[0]}  # boxes of >= 12 low-res pixels: the same boxes at both sizes


def _add(sums: dict[str, float], **values: float) -> None:
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + value


def _score_clip(sums, outs, gt, low, boxes, scale, oracles) -> None:
    real = luma(gt)
    pairs = list(range(gt.shape[1] - 1))
    for name, frames in [*outs.items(), ("real", gt)]:
        grey = luma(frames)
        _add(sums[name], hf=hf_power(grey, scale), lap=laplacian_var(grey))
        if name != "real":
            borders = chunk_borders(gt.shape[1], 0 if name == "no_context" else CONTEXT)
            _add(sums[name], psnr=float(psnr(frames, gt).mean()), flicker=flicker(grey, real, pairs),
                 border_flicker=flicker(grey, real, borders))
        if oracles is not None:
            fid = oracle_recall(oracles["high"], frames, boxes, LOW_MIN_BOX_PIXELS * oracles["ratio"] ** 2)
            _add(sums[name], recalled=fid.recalled, boxes=fid.boxes)
    if oracles is not None:
        fid = oracle_recall(oracles["low"], low, boxes, LOW_MIN_BOX_PIXELS)
        _add(sums["low"], recalled=fid.recalled, boxes=fid.boxes)


def _report(sums, n: int, seconds: dict, args: argparse.Namespace, hparams: dict) -> dict:
    real_hf, real_lap = sums["real"]["hf"], sums["real"]["lap"]
    rows = {}
    for name, acc in sums.items():
        row = {k: acc[k] / n for k in ("psnr", "flicker", "border_flicker") if k in acc}
        if "hf" in acc:
            row.update(hf_ratio=acc["hf"] / real_hf, laplacian_ratio=acc["lap"] / real_lap)
        if acc.get("boxes"):
            row["oracle_recall"] = acc["recalled"] / acc["boxes"]
        rows[name] = row
    return {"model": str(args.model), "clips": n, "steps": args.steps, "seed": args.seed,
            "aug_level": args.aug_level if args.aug_level is not None else hparams["aug_level"],
            "scale": hparams["scale"], "chunk": CHUNK, "context": CONTEXT, "threads": args.threads,
            "seconds_per_frame": {k: v / seconds["frames"] for k, v in seconds.items() if k != "frames"},
            "variants": rows}


def print_table(report: dict) -> None:
    print(f"{report['clips']} clips, {report['steps']} steps, aug level {report['aug_level']}, "
          f"x{report['scale']}, chunks of {report['chunk']} with {report['context']} context frames")
    keys = ("psnr", "hf_ratio", "laplacian_ratio", "flicker", "border_flicker", "oracle_recall")
    print(f"{'variant':>11} " + " ".join(f"{k:>15}" for k in keys))
    for name, row in report["variants"].items():
        print(f"{name:>11} " + " ".join(f"{row[k]:15.4f}" if k in row else f"{'-':>15}" for k in keys))
    rows = report["variants"]
    print(f"PSNR video - bicubic: {rows['video']['psnr'] - rows['bicubic']['psnr']:+.2f} dB; "
          f"flicker video / per-frame: {rows['video']['flicker'] / rows['per_frame']['flicker']:.2f}, "
          f"at chunk borders {rows['video']['border_flicker'] / rows['per_frame']['border_flicker']:.2f} "
          f"(no context carried: {rows['no_context']['border_flicker'] / rows['per_frame']['border_flicker']:.2f})")
    cost = report["seconds_per_frame"]
    print("seconds per output frame (wall; _cpu: process CPU time): "
          + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = evaluate(args)
    print_table(report)
    if args.out:
        path = Path(args.out) / "eval_upsampler.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, report, overwrite=True)
        print(f"wrote {path}")
    else:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
