"""Training-step benchmark: our image UNet vs diffusers' UNet2DConditionModel.

Both networks get the same channels, blocks, attention levels, heads (32 channels per
head), token width and batch; ours also runs its label and box encoders. For each config
every implementation runs in its own subprocess (so peak memory is its own), timing
forward + backward of a squared-error loss. Printed: time per sample, peak memory of the
step, the ratio diffusers / ours, and achieved GFLOP/s (FLOPs counted with
torch.utils.flop_counter) against a measured fp32 matmul peak of this machine.

With ``--compile MODE`` the timing process also builds a ``torch.compile``d copy of each
network (``drivesim.models.compile.compile_network``, same weights) and steps all four in
turn: ours compiled, ours eager, diffusers eager, diffusers compiled. Times are then medians
of the interleaved steps, ratios the median of the per-step ratios, and the compile time is
the first compiled step (which compiles forward and backward) less a steady step.

Usage: python benchmarks/bench_unet.py [--configs tiny mid] [--device cpu|cuda]
       [--threads 1] [--iters 5] [--channels-last] [--compile default]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_memory import MEMORY_ENV, peak_rss_mib, reset_peak_rss, rss_mib

from drivesim.models.compile import COMPILE_MODES, compile_network

CONFIGS: dict[str, dict] = {
    # tiny: the CPU demo (64x128 frames -> 8x16x4 latents)
    "tiny": dict(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
                 attention_resolutions=(2, 4), token_dim=64, max_boxes=8, latent=(8, 16), batch=8),
    # mid: 128x256 frames -> 16x32x4 latents (the paper's resolution), a mid-size network
    "mid": dict(model_channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                attention_resolutions=(2, 4, 8), token_dim=256, max_boxes=16, latent=(16, 32),
                batch=4),
}
HEAD_CHANNELS = 32

Step = Callable[[], torch.Tensor]


def our_model_kwargs(cfg: dict) -> dict:
    keys = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
            "token_dim", "max_boxes")
    return {k: cfg[k] for k in keys} | {"num_head_channels": HEAD_CHANNELS}


def random_conditioning(batch: int, frames: int, max_boxes: int, generator: torch.Generator):
    from drivesim.models.conditioning import Conditioning

    c = torch.rand(batch, frames, max_boxes, 2, 2, generator=generator).sort(dim=-2).values
    boxes = torch.stack([c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]], dim=-1)
    classes = torch.randint(0, 7, (batch, frames, max_boxes), generator=generator)
    return Conditioning(boxes=boxes, box_classes=classes,
                        daynight=torch.randint(0, 3, (batch,), generator=generator),
                        crowd=torch.randint(0, 4, (batch,), generator=generator))


def build_ours(cfg: dict, device: torch.device, channels_last: bool) -> tuple[torch.nn.Module, Step]:
    from drivesim.models.unet import UNet

    g = torch.Generator().manual_seed(0)
    model = UNet(**our_model_kwargs(cfg)).to(device)
    b, (h, w) = cfg["batch"], cfg["latent"]
    x = torch.randn(b, 1, 4, h, w, generator=g).to(device)
    t = torch.rand(b, generator=g).mul(999).to(device)
    cond = random_conditioning(b, 1, cfg["max_boxes"], g).to(device)
    return model, lambda: model(x, t, cond).square().mean()


def diffusers_image_model(cfg: dict):
    from diffusers import UNet2DConditionModel

    chans = tuple(cfg["model_channels"] * m for m in cfg["channel_mult"])
    attn = [2 ** i in cfg["attention_resolutions"] for i in range(len(chans))]
    return UNet2DConditionModel(
        sample_size=cfg["latent"], in_channels=4, out_channels=4, block_out_channels=chans,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=cfg["num_res_blocks"], cross_attention_dim=cfg["token_dim"],
        attention_head_dim=tuple(c // HEAD_CHANNELS for c in chans),  # diffusers: = head count
        norm_num_groups=32, use_linear_projection=True, resnet_time_scale_shift="scale_shift")


def build_diffusers(cfg: dict, device: torch.device, channels_last: bool
                    ) -> tuple[torch.nn.Module, Step]:
    g = torch.Generator().manual_seed(0)
    model = diffusers_image_model(cfg).to(device)
    b, (h, w) = cfg["batch"], cfg["latent"]
    x = torch.randn(b, 4, h, w, generator=g).to(device)
    t = torch.rand(b, generator=g).mul(999).to(device)
    # label token + frame token + one token per box, as our UNet attends to
    tokens = torch.randn(b, 2 + cfg["max_boxes"], cfg["token_dim"], generator=g).to(device)
    return model, lambda: model(x, t, encoder_hidden_states=tokens).sample.square().mean()


BUILDERS = {"ours": build_ours, "diffusers": build_diffusers}


def saved_activation_mib(model: torch.nn.Module, step: Step) -> float:
    """Bytes the autograd graph keeps for backward, parameters excluded and storages
    counted once: a device-independent measure of the step's activation memory."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    del loss
    return sum(seen.values()) / 2**20


def measure(model: torch.nn.Module, step: Step, device: torch.device, iters: int,
            warmup: int = 2) -> dict:
    """Fastest fwd+bwd seconds over ``iters`` (the minimum is the least disturbed by other
    load on a shared machine), peak extra memory (MiB) of the step, FLOPs of one step."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()

    def one() -> None:
        model.zero_grad(set_to_none=True)
        step().backward()

    for _ in range(warmup):  # also loads lazily-initialised kernels before the baseline
        one()
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_mib()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:  # RSS high-water mark since the reset (children run with bench_memory.MEMORY_ENV, see run_impl)
        peak = peak_rss_mib() - base
    with FlopCounterMode(display=False) as counter:
        one()
    return {"seconds": min(times), "median": statistics.median(times), "peak_mib": peak,
            "saved_mib": saved_activation_mib(model, step), "flops": counter.get_total_flops(),
            "params": sum(p.numel() for p in model.parameters())}


def matmul_peak_gflops(device: torch.device, n: int = 2048, reps: int = 8) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _timed_step(model: torch.nn.Module, step: Step, device: torch.device) -> float:
    model.train()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_alternating(runs: dict[str, tuple[torch.nn.Module, Step]], device: torch.device,
                     iters: int, warmup: int = 2) -> dict:
    """fwd+bwd seconds of every model for each of ``iters`` steps, stepping the models in turn
    within one process so that load from other processes on a shared machine hits all of them
    alike; ``first``: each model's first step (a compiled model compiles in it)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    first: dict[str, float] = {}
    peak = 0.0
    for i in range(warmup + iters):
        # the matmul peak is sampled between the steps too, under the same background load
        peak = max(peak, matmul_peak_gflops(device, reps=1))
        for name, (model, step) in runs.items():
            seconds = _timed_step(model, step, device)
            first.setdefault(name, seconds)
            if i >= warmup:
                times[name].append(seconds)
    return {"times": times, "first": first, "matmul_gflops": peak}


def build_runs(builders: dict, cfg: dict, args: argparse.Namespace, names: list[str]
               ) -> dict[str, tuple[torch.nn.Module, Step]]:
    """(model, step) per implementation; with ``--compile`` a compiled copy of each (built
    from the same seed: the same weights), ordered ours-compiled, ours, diffusers,
    diffusers-compiled."""
    device, runs = torch.device(args.device), {}
    for name in names:
        copies = [name] + ([f"{name}-compiled"] if args.compile else [])
        for label in (copies[::-1] if name == "ours" else copies):
            model, step = builders[name](cfg, device, args.channels_last)
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if label.endswith("-compiled"):
                compile_network(model, args.compile, device=device)
            runs[label] = (model, step)
    return runs


def worker(builders: dict, configs: dict, args: argparse.Namespace) -> int:
    """--worker timing: all models, alternating; --worker NAME: one model's memory/FLOPs."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, cfg = torch.device(args.device), configs[args.config]
    if args.worker == "timing":
        result = time_alternating(build_runs(builders, cfg, args, list(builders)), device, args.iters)
    else:
        model, step = builders[args.worker](cfg, device, args.channels_last)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        result = measure(model, step, device, args.iters) | {"batch": cfg["batch"]}
    print(json.dumps(result))
    return 0


def run_impl(script: Path, impl: str, config: str, args: argparse.Namespace,
             memory: bool = False) -> dict:
    iters = 1 if memory else args.iters  # memory runs need only one measured step
    cmd = [sys.executable, str(script), "--worker", impl, "--config", config,
           "--device", args.device, "--threads", str(args.threads), "--iters", str(iters)]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.compile and not memory:
        cmd += ["--compile", args.compile]
    env = {**os.environ, **MEMORY_ENV} if memory else dict(os.environ)  # see benchmarks/bench_memory.py
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        if args.compile:  # an empty compile cache per process: the compile time is a cold start's
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_impls(script: Path, name: str, args: argparse.Namespace) -> dict[str, dict]:
    """Memory / FLOPs from one run per eager implementation (a compiled copy does the same
    FLOPs), step times from ``rounds`` fresh processes that alternate all implementations
    step by step; ``seconds`` is the fastest step, or the median with ``--compile``."""
    rows = {impl: run_impl(script, impl, name, args, memory=True) for impl in ("ours", "diffusers")}
    times: dict[str, list[float]] = {}
    first: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        timing = run_impl(script, "timing", name, args)
        for impl, values in timing["times"].items():
            times.setdefault(impl, []).extend(values)
            first.setdefault(impl, []).append(timing["first"][impl])
        for impl in rows:
            rows[impl]["peak_gflops"] = max(rows[impl].get("peak_gflops", 0.0),
                                            timing["matmul_gflops"])
    for impl in times:
        base = rows[impl.removesuffix("-compiled")]
        rows[impl] = base | rows.get(impl, {}) | {"times": times[impl]}
        if impl.endswith("-compiled"):  # measured only on eager models
            rows[impl].update(peak_mib=float("nan"), saved_mib=float("nan"))
        stat = statistics.median if args.compile else min
        rows[impl]["seconds"] = stat(times[impl])
        rows[impl]["compile_s"] = statistics.median(first[impl]) - statistics.median(times[impl])
    return {impl: rows[impl] for impl in times}


def step_ratio(rows: dict[str, dict], slow: str, fast: str) -> float:
    """Median over the interleaved steps of time(slow) / time(fast): > 1 when ``fast`` is faster."""
    return statistics.median(a / b for a, b in zip(rows[slow]["times"], rows[fast]["times"], strict=True))


def print_rows(name: str, rows: dict[str, dict], unit: str) -> None:
    for impl, r in rows.items():
        per, peak = r["seconds"] / r["batch"], r["peak_gflops"]
        gflops = r["flops"] / r["seconds"] / 1e9
        compile_s = f"{r['compile_s']:8.0f}" if impl.endswith("-compiled") else f"{'-':>8}"
        print(f"{name:6} {impl:18} {r['params'] / 1e6:7.2f}M {per * 1e3:10.1f} "
              f"{r['peak_mib']:9.1f} {r['saved_mib'] / r['batch']:9.1f} "
              f"{r['flops'] / r['batch'] / 1e9:11.2f} {gflops:8.1f} {100 * gflops / peak:5.1f}% {compile_s}")


def print_summary(name: str, rows: dict[str, dict], args: argparse.Namespace) -> None:
    ours, ref = rows["ours"], rows["diffusers"]
    print(f"{name:6} matmul peak {ours['peak_gflops']:.1f} GFLOP/s; speed-up diffusers/ours "
          f"{step_ratio(rows, 'diffusers', 'ours') if args.compile else ref['seconds'] / ours['seconds']:.2f}x, "
          f"peak memory ours/diffusers {ours['peak_mib'] / max(ref['peak_mib'], 1e-9):.2f}x, "
          f"saved activations ours/diffusers {ours['saved_mib'] / ref['saved_mib']:.2f}x")
    if args.compile:
        print(f"{name:6} compiled ({args.compile}), medians of per-step ratios: ours-compiled vs ours "
              f"{step_ratio(rows, 'ours', 'ours-compiled'):.2f}x, vs diffusers eager "
              f"{step_ratio(rows, 'diffusers', 'ours-compiled'):.2f}x, vs diffusers compiled "
              f"{step_ratio(rows, 'diffusers-compiled', 'ours-compiled'):.2f}x; diffusers compiled vs "
              f"eager {step_ratio(rows, 'diffusers', 'diffusers-compiled'):.2f}x")


def report(script: Path, configs: dict, unit: str, args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    stat = "median" if args.compile else "fastest"
    print(f"device {device}, {args.threads} thread(s); {stat} of {args.iters} alternating "
          f"steps x {args.rounds} processes; %peak against the best fp32 matmul (2048^2) "
          f"timed between the steps" + (f"; compile mode {args.compile}" if args.compile else ""))
    print(f"{'config':6} {'impl':18} {'params':>8} {'ms/' + unit:>10} {'peak MiB':>9} "
          f"{'saved MiB/' + unit:>9} {'GFLOP/' + unit:>11} {'GFLOP/s':>8} {'%peak':>6} {'compile s':>8}")
    for name in args.configs:
        rows = measure_impls(script, name, args)
        print_rows(name, rows, unit)
        print_summary(name, rows, args)
    return 0


def parse_args(argv: list[str], configs: dict) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(configs), choices=list(configs))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", choices=COMPILE_MODES, default=None,
                   help="also time torch.compile'd copies of both networks in this mode")
    p.add_argument("--worker", choices=("ours", "diffusers", "timing"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv, CONFIGS)
    if args.worker:
        return worker(BUILDERS, CONFIGS, args)
    return report(Path(__file__).resolve(), CONFIGS, "sample", args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
