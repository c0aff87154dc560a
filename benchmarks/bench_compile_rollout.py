"""Rollout throughput with compiled networks: key frames per second, compiled vs eager.

Builds the demo stack from its configs (``configs/autoencoder/tiny.yaml`` with the temporal
decoder, ``configs/image_ldm/tiny.yaml``, ``configs/video_ldm/tiny.yaml``) with random weights
(the speed does not depend on them) and two ``drivesim.Simulator``s over the same weights:
eager, and compiled (``drivesim.models.compile.compile_network`` on the video UNet and, unless
``--video-only``, the autoencoder's encoder and decoder; the image model samples only the start
frame, so it stays eager in both). Rollouts have fixed shapes (every segment samples T frames, the context padded
to T), so each network compiles once per shape it meets. Compiled and eager rollouts of
``--seconds`` of drive alternate in one process (cold compile cache); printed: the compile
time (first compiled rollout less a steady one), key frames per second (medians), their
ratio, and the length of drive after which the compile time is repaid.

Usage: python benchmarks/bench_compile_rollout.py [--seconds 15] [--rounds 3] [--threads 1]
       [--steps 20] [--compile default] [--video-only]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.inference import ModelRecord, diffusion_record
from drivesim.models.autoencoder import AutoencoderKL
from drivesim.models.compile import COMPILE_MODES, compile_network
from drivesim.models.unet import UNet

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _init_args(name: str) -> tuple[dict, dict]:
    """(model init_args, data init_args) of a stage config."""
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    return cfg["model"]["init_args"], cfg["data"]["init_args"]


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter (zero-initialised branches too: a trained network's work)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def demo_records() -> dict[str, ModelRecord]:
    """Autoencoder, image and prediction records with the demo configs' networks."""
    ae_model, _ = _init_args("autoencoder/tiny.yaml")
    temporal, _ = _init_args("autoencoder/temporal_tiny.yaml")
    ae = AutoencoderKL(**ae_model["autoencoder"]["init_args"], temporal_decoder=True,
                       temporal_kernel=temporal["temporal_kernel"],
                       temporal_spatial_kernel=temporal["temporal_spatial_kernel"], scale_factor=1.0)
    image_model, _ = _init_args("image_ldm/tiny.yaml")
    video_model, video_data = _init_args("video_ldm/tiny.yaml")
    image = UNet(**image_model["unet"]["init_args"])
    video = UNet.from_image_unet(image, **video_model["temporal_layers"])
    schedule = DiscreteVPSchedule(video_model["num_train_steps"], video_model["schedule"],
                                  video_model["beta_start"], video_model["beta_end"])
    hparams = {"latent_size": video_model["latent_size"], "fps": video_data["fps"],
               "num_frames": video_data["frames"]}
    return {"autoencoder": ModelRecord(_randomise(ae, 1), "autoencoder", None, ae.hparams),
            "image": diffusion_record(_randomise(image, 2), schedule, video_model["prediction"], hparams),
            "video": diffusion_record(_randomise(video, 3), schedule, video_model["prediction"], hparams)}


def simulators(mode: str, video_only: bool):
    """(eager, compiled) simulators over copies of the same weights."""
    from drivesim.api import Simulator

    eager = demo_records()
    compiled = {role: copy.deepcopy(record) for role, record in eager.items()}
    compile_network(compiled["video"].network, mode)
    if not video_only:
        compile_network(compiled["autoencoder"].network, mode)  # its encoder and decoder
    compiled["image"] = eager["image"]
    return Simulator(**eager), Simulator(**compiled)


def timed_rollout(sim, args: argparse.Namespace) -> tuple[float, int]:
    """(seconds, key frames) of one drive of ``args.seconds``."""
    from drivesim.rollout.config import RolloutConfig

    config = RolloutConfig(seconds=args.seconds, steps=args.steps, seed=0)
    start = time.perf_counter()
    frames = sum(1 for _ in sim.rollout("synthetic:3", config=config))
    return time.perf_counter() - start, frames


def measure(args: argparse.Namespace) -> dict:
    """Alternating compiled / eager drives; the first compiled one compiles."""
    eager, compiled = simulators(args.compile, args.video_only)
    first, frames = timed_rollout(compiled, args)
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    for _ in range(args.rounds):
        for name, sim in (("eager", eager), ("compiled", compiled)):
            seconds, n = timed_rollout(sim, args)
            if n != frames:
                raise RuntimeError(f"{name} rollout made {n} frames, the first made {frames}")
            times[name].append(seconds)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {"first": first, "frames": frames, "times": times, "graphs": graphs}


def report(result: dict, args: argparse.Namespace) -> None:
    frames, times = result["frames"], result["times"]
    t_eager, t_comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_s = result["first"] - t_comp
    pairs = list(zip(times["eager"], times["compiled"], strict=True))  # one round each
    ratio = statistics.median(e / c for e, c in pairs)
    saved = statistics.median(e - c for e, c in pairs) / frames  # seconds saved per key frame
    compiled = "video UNet" if args.video_only else "video UNet + autoencoder"
    print(f"{args.seconds:g} s drives ({frames} key frames, {args.steps} steps per segment), "
          f"{args.threads} thread(s), compiled: {compiled} (mode {args.compile}), "
          f"median of {args.rounds} alternating rounds")
    print(f"  eager     {frames / t_eager:6.2f} key frames/s ({t_eager:6.1f} s per drive)")
    print(f"  compiled  {frames / t_comp:6.2f} key frames/s ({t_comp:6.1f} s per drive); "
          f"compile {compile_s:.0f} s ({result['graphs']} graphs)")
    print(f"  compiled/eager throughput {ratio:.2f}x, {1e3 * saved:.0f} ms saved per key frame "
          f"(medians of per-round ratios and differences)")
    if saved > 0:
        per_second = frames / args.seconds  # key frames per second of drive
        breakeven = compile_s / saved
        print(f"  compile time repaid after {breakeven:.0f} key frames = {breakeven / per_second:.0f} s of drive")
    else:
        print("  compiled is not faster: the compile time is never repaid")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compile", choices=[m for m in COMPILE_MODES if m != "reduce-overhead"],
                   default="default")
    p.add_argument("--video-only", action="store_true", help="compile the video UNet only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold start: the compile time a first run pays
        report(measure(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
