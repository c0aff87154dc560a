"""Training-step benchmark: our video UNet vs diffusers' UNetSpatioTemporalConditionModel.

Matched channels, blocks, attention levels, heads (32 channels per head), token width and
number of frames. Ours is the prediction-mode model (temporal layers + context path with 2
context frames, per-frame box tokens); diffusers' SVD UNet gets the same tokens as its
encoder states (its temporal transformer also cross-attends to them, extra work ours does
not do). Each implementation runs in its own subprocess, alternating over rounds; see
bench_unet.py for the columns.

Usage: python benchmarks/bench_video_unet.py [--configs tiny mid] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet import (
    HEAD_CHANNELS,
    our_model_kwargs,
    parse_args,
    random_conditioning,
    report,
    worker,
)

CONFIGS: dict[str, dict] = {
    # tiny: the CPU video config (64x128 frames -> 8x16 latents), T = 8
    "tiny": dict(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
                 attention_resolutions=(2, 4), token_dim=64, max_boxes=8, latent=(8, 16),
                 frames=8, batch=1),
    # mid: the paper's video setting, T = 10 latent frames of 16x32
    "mid": dict(model_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                attention_resolutions=(2, 4, 8), token_dim=128, max_boxes=16, latent=(16, 32),
                frames=10, batch=1),
}


def build_ours(cfg: dict, device: torch.device, channels_last: bool):
    from drivesim.models.unet import UNet

    g = torch.Generator().manual_seed(0)
    b, frames, (h, w) = cfg["batch"], cfg["frames"], cfg["latent"]
    model = UNet(**our_model_kwargs(cfg), temporal=True, max_frames=frames,
                 use_context=True).to(device)
    x = torch.randn(b, frames, 4, h, w, generator=g)
    cond = random_conditioning(b, frames, cfg["max_boxes"], g)
    cond = replace(cond, context=x[:, :2].clone(), context_mask=torch.ones(b, 2))
    cond = cond.to(device)
    x, t = x.to(device), torch.rand(b, generator=g).mul(999).to(device)
    return model, lambda: model(x, t, cond).square().mean()


def build_diffusers(cfg: dict, device: torch.device, channels_last: bool):
    from diffusers import UNetSpatioTemporalConditionModel

    chans = tuple(cfg["model_channels"] * m for m in cfg["channel_mult"])
    attn = [2 ** i in cfg["attention_resolutions"] for i in range(len(chans))]
    model = UNetSpatioTemporalConditionModel(
        sample_size=cfg["latent"], in_channels=4, out_channels=4, block_out_channels=chans,
        down_block_types=tuple("CrossAttnDownBlockSpatioTemporal" if a
                               else "DownBlockSpatioTemporal" for a in attn),
        up_block_types=tuple("CrossAttnUpBlockSpatioTemporal" if a
                             else "UpBlockSpatioTemporal" for a in reversed(attn)),
        addition_time_embed_dim=32, projection_class_embeddings_input_dim=96,
        layers_per_block=cfg["num_res_blocks"], cross_attention_dim=cfg["token_dim"],
        num_attention_heads=tuple(c // HEAD_CHANNELS for c in chans),
        num_frames=cfg["frames"]).to(device)
    g = torch.Generator().manual_seed(0)
    b, frames, (h, w) = cfg["batch"], cfg["frames"], cfg["latent"]
    x = torch.randn(b, frames, 4, h, w, generator=g).to(device)
    t = torch.rand(b, generator=g).mul(999).to(device)
    tokens = torch.randn(b, 2 + cfg["max_boxes"], cfg["token_dim"], generator=g).to(device)
    added = torch.randn(b, 3, generator=g).to(device)
    return model, lambda: model(x, t, tokens, added).sample.square().mean()


BUILDERS = {"ours": build_ours, "diffusers": build_diffusers}


def main(argv: list[str]) -> int:
    args = parse_args(argv, CONFIGS)
    if args.worker:
        return worker(BUILDERS, CONFIGS, args)
    return report(Path(__file__).resolve(), CONFIGS, "clip", args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
