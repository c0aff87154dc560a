"""Encode+decode throughput and peak memory: drivesim AutoencoderKL vs diffusers, same channels.

Image AE vs ``diffusers.AutoencoderKL`` and temporal decoder vs
``diffusers.AutoencoderKLTemporalDecoder``, random weights, built with the same widths,
blocks and latent channels, measured in the same run. Each measurement runs in a fresh
child process (so peak memory is per model); the runs alternate ours/theirs ``--repeats``
times and the best time is kept, which damps the noise of a shared machine.

Peak memory: CUDA ``max_memory_allocated``; on CPU the child's peak RSS growth during one
encode+decode after a warm-up pass (``VmHWM`` reset, minus the RSS before the pass), i.e.
activations + workspace, with glibc's mmap threshold fixed so that RSS follows live buffers.

    python benchmarks/bench_autoencoder.py --size 64x128 --base 32 --mult 1,2,2,4 --blocks 1
    python benchmarks/bench_autoencoder.py --temporal --frames 6
    python benchmarks/bench_autoencoder.py --temporal --interleave 20   # one process, alternating rounds

``--quality A.safetensors [B.safetensors ...]`` instead scores trained model files on held-out
synthetic clips (a seed stream disjoint from training and validation): PSNR (mean over
frames), SSIM and the flicker metric (docs/benchmarks.md); ``--latent-noise s``
decodes perturbed latents (the posterior mean plus ``s * std_c`` independent noise per frame);
``--image-only`` decodes with the temporal layers off, which separates what a temporal stage's
temporal blocks do from what its fine-tuned spatial decoder does.
The flicker is also split into static pixels (true change <= ``--motion-threshold``), where any
error change is the decoder's own, and moving ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench_memory import MEMORY_ENV, peak_rss_mib, reset_peak_rss, rss_mib


def _build(impl: str, args: argparse.Namespace):
    import torch

    mult = [int(m) for m in args.mult.split(",")]
    if impl == "ours":
        from drivesim.models.autoencoder import AutoencoderKL

        return AutoencoderKL(args.base, mult, args.blocks, args.latent, temporal_decoder=args.temporal,
                             temporal_spatial_kernel=args.temporal_spatial_kernel)
    import diffusers

    widths = [args.base * m for m in mult]
    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(mult),
                  block_out_channels=widths, layers_per_block=args.blocks, latent_channels=args.latent)
    if args.temporal:
        return diffusers.AutoencoderKLTemporalDecoder(**common)
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(up_block_types=("UpDecoderBlock2D",) * len(mult), norm_num_groups=32, **common)


def _step(impl: str, model, x):
    """One encode + decode of ``x [B, T, 3, H, W]`` (posterior mean), returns frames."""
    if impl == "ours":
        return model.decode(model.encode(x).mode())
    b, t = x.shape[:2]
    flat = x.flatten(0, 1)                                            # [B*T, 3, H, W]
    z = model.encode(flat).latent_dist.mode()
    if hasattr(model.decoder, "time_conv_out"):                       # temporal decoder needs num_frames
        return model.decode(z, num_frames=t).sample
    return model.decode(z).sample


def _setup(args: argparse.Namespace):
    """Thread count, device and the fixed input ``x [B, T, 3, H, W]`` in [-1, 1] of every timing run."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    gen = torch.Generator().manual_seed(0)
    return device, (torch.rand(args.batch, args.frames, 3, h, w, generator=gen) * 2 - 1).to(device)


def _params_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def worker(impl: str, args: argparse.Namespace) -> dict:
    import torch

    device, x = _setup(args)
    model = _build(impl, args).to(device).eval()
    with torch.no_grad():
        _step(impl, model, x)                                          # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.iters):
            _step(impl, model, x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.iters
    # CPU: the warm-up already set this process's peak RSS, so memory_worker measures it in a fresh child
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"impl": impl, "frames_per_s": args.batch * args.frames / seconds, "seconds": seconds,
            "peak_mb": peak_mb, "params_m": _params_m(model)}


def pair_worker(args: argparse.Namespace) -> dict:
    """Both models in one process, timed alternately (order flipped every round) for ``--interleave``
    rounds: slow drifts of a shared machine's speed hit both alike, and the median of the per-round
    ratios is far steadier than a ratio of bests from separate processes."""
    import statistics

    import torch

    device, x = _setup(args)
    models = {impl: _build(impl, args).to(device).eval() for impl in ("ours", "diffusers")}
    seconds: dict[str, list[float]] = {impl: [] for impl in models}
    with torch.no_grad():
        for impl, model in models.items():
            _step(impl, model, x)                                      # warm-up
        for i in range(args.interleave):
            for impl in (("ours", "diffusers") if i % 2 else ("diffusers", "ours")):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                _step(impl, models[impl], x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[impl].append(time.perf_counter() - start)
    ratios = [d / o for o, d in zip(seconds["ours"], seconds["diffusers"])]
    out = {impl: {"impl": impl, "frames_per_s": args.batch * args.frames / statistics.median(v),
                  "seconds": statistics.median(v), "peak_mb": float("nan"),
                  "params_m": _params_m(models[impl])}
           for impl, v in seconds.items()}
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"models": out, "ratio_median": statistics.median(ratios), "ratio_quartiles": [q[0], q[2]]}


def memory_worker(impl: str, args: argparse.Namespace) -> float:
    """CPU peak RSS growth (MiB) of one encode+decode after a warm-up pass: activations + workspace,
    like CUDA's ``max_memory_allocated`` after its reset. The warm-up takes the one-time costs
    (oneDNN kernel JIT, primitive caches, lazily loaded libraries) out of the figure; they made
    a first-pass measurement swing by up to 18 MiB from run to run. The high-water mark is then
    reset (``/proc/self/clear_refs``: 5); where the kernel refuses, the first pass is measured."""
    import torch

    torch.set_num_threads(args.threads)
    model = _build(impl, args).eval()
    h, w = (int(v) for v in args.size.split("x"))
    x = torch.rand(args.batch, args.frames, 3, h, w) * 2 - 1
    with torch.no_grad():
        if reset_peak_rss():
            _step(impl, model, x)                                        # warm-up
            reset_peak_rss()
        base = rss_mib()  # not the high-water mark, which model construction may have raised
        _step(impl, model, x)
    return peak_rss_mib() - base


def quality(paths: list[str], args: argparse.Namespace) -> None:
    """PSNR / SSIM / flicker of each model file on the same held-out synthetic clips."""
    import torch
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    from drivesim.data.datasets import SyntheticDataset
    from drivesim.models.autoencoder import load_autoencoder
    from drivesim.models.autoencoder_losses import flicker, flicker_split

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    data = SyntheticDataset(frames=args.frames, fps=10.0, height=h, width=w, samples=args.clips,
                            seed=args.quality_seed, resample_each_epoch=False, min_vehicles=args.min_vehicles,
                            max_vehicles=args.max_vehicles, traffic_range=args.traffic_range)
    clips = [s["video"] for s in data]                                   # each [T, 3, H, W]
    for path in paths:
        ae = load_autoencoder(path)
        psnr, ssim, flick, split = [], [], [], []
        with torch.no_grad():
            latents = [ae.encode(video[None]).mode() for video in clips]      # each [1, T, C, h, w]
            if args.latent_noise:
                # per-frame independent latent error, s * std_c (std of each latent channel over all
                # clips): a stand-in for a diffusion model's residual latent error, the flicker source
                # the temporal decoder exists for. Same noise for every model file.
                std = torch.cat(latents).transpose(0, 2).flatten(1).std(dim=1).view(1, 1, -1, 1, 1)
                gen = torch.Generator().manual_seed(args.quality_seed)
                latents = [z + args.latent_noise * std * torch.randn(z.shape, generator=gen) for z in latents]
            for video, z in zip(clips, latents):
                x = video[None]
                recon = ae.decode(z, image_only=args.image_only).clamp(-1, 1)
                a, b = (recon[0] + 1) / 2, (x[0] + 1) / 2                 # [T, 3, H, W] in [0, 1]
                psnr.append(peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean())
                ssim.append(structural_similarity_index_measure(a, b, data_range=1.0))
                if x.shape[1] > 1:
                    flick.append(flicker(recon * 0.5, x * 0.5))  # [0, 1] pixel units
                    split.append(torch.stack(flicker_split(a[None], b[None], args.motion_threshold)))
        mean = lambda v: float(torch.stack(v).mean()) if v else float("nan")  # noqa: E731
        noise = f", latent noise {args.latent_noise:g} x std_c" if args.latent_noise else ""
        noise += ", temporal layers off (alpha = 1)" if args.image_only else ""
        print(f"{path}: PSNR {mean(psnr):.2f} dB  SSIM {mean(ssim):.4f}  flicker {mean(flick):.5f} "
              f"({args.clips} held-out clips x {args.frames} frames, {args.size}{noise})")
        if split:  # where the flicker is: content that barely changes vs content that moves
            static, moving, frac = torch.stack(split).nanmean(dim=0).tolist()
            print(f"    flicker on static pixels {static:.5f}, on moving pixels {moving:.5f} "
                  f"({100 * frac:.1f}% of pixels change by > {args.motion_threshold:g})")


def _child(mode: str, impl: str, argv: list[str]) -> dict:
    env = {**os.environ, **MEMORY_ENV} if mode == "memory" else None  # see benchmarks/bench_memory.py
    out = subprocess.run([sys.executable, __file__, *argv, f"--{mode}", impl], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="64x128")
    p.add_argument("--base", type=int, default=32)
    p.add_argument("--mult", default="1,2,2,4")
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--latent", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--temporal", action="store_true", help="temporal decoder vs AutoencoderKLTemporalDecoder")
    p.add_argument("--temporal-spatial-kernel", type=int, default=3,
                   help="ours: 3 = the paper's (3, 3, 3) convs, 1 = SVD-style (3, 1, 1) like diffusers")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--interleave", type=int, default=0, metavar="N",
                   help="time both models in one process, alternating for N rounds; report the median "
                        "per-round ratio (steadier on a shared machine than the default best-of-repeats)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quality", nargs="+", default=None, metavar="MODEL_FILE",
                   help="score model files on held-out synthetic clips instead of timing")
    p.add_argument("--clips", type=int, default=16, help="--quality: number of held-out clips")
    p.add_argument("--quality-seed", type=int, default=777_777, help="--quality: held-out seed stream")
    p.add_argument("--traffic-range", type=float, default=60.0, help="--quality: world traffic range (tiny configs: 60)")
    p.add_argument("--min-vehicles", type=int, default=4, help="--quality: vehicles per drive, as the tiny configs")
    p.add_argument("--max-vehicles", type=int, default=12)
    p.add_argument("--latent-noise", type=float, default=0.0,
                   help="--quality: decode the posterior mean plus s * std_c * per-frame noise (0: the mean)")
    p.add_argument("--image-only", action="store_true",
                   help="--quality: decode with the temporal layers off (alpha = 1): a temporal model file's "
                        "fine-tuned spatial decoder alone, the ablation of its temporal blocks")
    p.add_argument("--motion-threshold", type=float, default=0.03,
                   help="--quality: a pixel 'moves' when its true frame change exceeds this ([0, 1] units)")
    p.add_argument("--worker", choices=("ours", "diffusers"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory", choices=("ours", "diffusers"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--pair", choices=("both",), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0
    if args.quality:
        quality(args.quality, args)
        return 0
    if args.memory:
        print(json.dumps({"peak_mb": memory_worker(args.memory, args)}))
        return 0
    if args.pair:
        print(json.dumps(pair_worker(args)))
        return 0
    pair = _child("pair", "both", argv) if args.interleave else None
    best: dict[str, dict] = pair["models"] if pair else {}
    for _ in range(args.repeats if not pair else 0):
        for impl in ("ours", "diffusers"):
            r = _child("worker", impl, argv)
            if impl not in best or r["seconds"] < best[impl]["seconds"]:
                best[impl] = r
    if args.device == "cpu":
        for impl in ("ours", "diffusers"):
            best[impl]["peak_mb"] = _child("memory", impl, argv)["peak_mb"]
    kind = "temporal decoder vs AutoencoderKLTemporalDecoder" if args.temporal else "image AE vs AutoencoderKL"
    if args.temporal:
        k = args.temporal_spatial_kernel
        kind += f" (ours with (3, {k}, {k}) temporal convs)"
    print(f"{kind}: {args.batch}x{args.frames} frames {args.size}, base {args.base}, mult {args.mult}, "
          f"{args.blocks} blocks, {args.device}, {args.threads} thread(s)")
    for impl in ("ours", "diffusers"):
        r = best[impl]
        print(f"  {impl:9s} {r['frames_per_s']:8.2f} frames/s  peak {r['peak_mb']:8.1f} MiB  "
              f"{r['params_m']:.2f} M params")
    ours, theirs = best["ours"], best["diffusers"]
    if pair:
        lo, hi = pair["ratio_quartiles"]
        print(f"  throughput ratio ours/diffusers: {pair['ratio_median']:.2f}x (median of {args.interleave} "
              f"interleaved rounds in one process; quartiles {lo:.2f}-{hi:.2f}x)")
    else:
        print(f"  throughput ratio ours/diffusers: {ours['frames_per_s'] / theirs['frames_per_s']:.2f}x")
    print(f"  peak memory ratio ours/diffusers: {ours['peak_mb'] / max(theirs['peak_mb'], 1e-6):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
