"""``drivesim data encode``: encode a clip dataset once into latent shards with an autoencoder.

    drivesim data encode --ckpt runs/x/autoencoder_temporal/model.safetensors \
        --data runs/data/synth --out runs/x/latents

The cache format and the resumable writer live in ``drivesim.data.latent_cache``; this tool
loads the autoencoder model file and hands its encoder in as a callable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from drivesim.data.latent_cache import DTYPES, LatentEncoder, encode_dataset
from drivesim.inference import load_model
from drivesim.models.autoencoder import AutoencoderKL
from drivesim.utils.args import hw_size


def autoencoder_hash(ae: AutoencoderKL) -> str:
    """sha256 (first 16 hex digits) of the hparams and every weight, scale factor included."""
    digest = hashlib.sha256(json.dumps(ae.hparams, sort_keys=True).encode())
    for name, tensor in sorted(ae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def latent_encoder(ae: AutoencoderKL) -> LatentEncoder:
    """The autoencoder as the cache's encoder: posterior moments per frame, no grad."""

    @torch.no_grad()
    def encode(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = ae.encode(video)  # [1, n, C, h, w] moments
        return posterior.mean, posterior.logvar

    return LatentEncoder(encode=encode, fingerprint=autoencoder_hash(ae), scale_factor=float(ae.scale_factor),
                         downsample_factor=ae.downsample_factor, hparams=ae.hparams,
                         device=ae.scale_factor.device)


def encode_with_autoencoder(ckpt: str | Path, data: str | Path, out: str | Path, *,
                            splits: Sequence[str] | None = None, size: tuple[int, int] | None = None,
                            clips_per_shard: int = 8, batch_frames: int = 16, dtype: str = "float32",
                            device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Encode ``data`` into ``out`` with the autoencoder model file ``ckpt`` (see ``encode_dataset``)."""
    ae = load_model(ckpt, "autoencoder", device=device).network
    return encode_dataset(latent_encoder(ae), data, out, splits=splits, size=size,
                          clips_per_shard=clips_per_shard, batch_frames=batch_frames, dtype=dtype,
                          overwrite=overwrite, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="autoencoder model file (.safetensors/.pt) or Lightning .ckpt")
    parser.add_argument("--data", required=True, help="clip dataset folder (with manifest.jsonl)")
    parser.add_argument("--out", required=True, help="latent cache folder")
    parser.add_argument("--splits", nargs="*", default=None, help="manifest splits to encode (default: all)")
    parser.add_argument("--size", type=hw_size("--size"), default=None, help="HxW frame size before encoding (default: clip size)")
    parser.add_argument("--clips-per-shard", type=int, default=8)
    parser.add_argument("--batch-frames", type=int, default=16, help="frames per encoder call")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage dtype of mean/logvar")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="re-encode a cache made with other settings")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    stats = encode_with_autoencoder(args.ckpt, args.data, args.out, splits=args.splits, size=args.size,
                                    clips_per_shard=args.clips_per_shard, batch_frames=args.batch_frames,
                                    dtype=args.dtype, device=args.device, overwrite=args.overwrite,
                                    progress=not args.no_progress)
    print(f"{args.out}: {stats['clips']} clips, {stats['shards_written']} shards written, "
          f"{stats['shards_skipped']} already done")
    return 0
