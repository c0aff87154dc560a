"""KL autoencoder of LDM (Rombach et al. 2022, Sec. 3 / App. G) with the Video LDM temporal decoder.

Frames are encoded one by one (the encoder never mixes time); the decoder can carry
residual 3D-conv blocks blended with a learned alpha (Blattmann et al. 2023, Sec. 3.1.1),
which are the identity at init, so a fresh temporal decoder equals the image decoder.

Public boundaries use ``[B, T, C, H, W]``; inside, time is folded into the batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from drivesim.models.ae_blocks import (
    AttnBlock,
    Downsample,
    ResnetBlock,
    TemporalMix,
    Upsample,
    group_norm,
    inference_layout,
    silu,
)
from drivesim.utils.io import DriveSimInputError

MODEL_KIND = "autoencoder"
HPARAM_NAMES = frozenset({"base_channels", "ch_mult", "num_res_blocks", "latent_channels", "in_channels",
                          "dropout", "temporal_decoder", "temporal_kernel", "temporal_spatial_kernel", "patch_size"})


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))), tensors ``[B, T, C, h, w]``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def __post_init__(self) -> None:
        self.logvar = self.logvar.clamp(-30.0, 20.0)  # LDM's clamp: keeps exp() finite

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = mean + std * eps, eps ~ N(0, I) drawn from ``generator``."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over ``C, h, w``: ``[B, T]``, in float32
        (under bf16 autocast the moments are bf16, whose 8-bit mantissa would round the sum)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(2, 3, 4))


class Encoder(nn.Module):
    """``[N, 3, H, W] -> [N, 2 * latent_channels, H / f, W / f]`` (moments), f = 2 ** (len(ch_mult) - 1)."""

    def __init__(self, in_channels: int, base_channels: int, ch_mult: Sequence[int], num_res_blocks: int,
                 latent_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        widths = [base_channels * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.blocks.append(ResnetBlock(ch, width, dropout))
                ch = width
            stage.downsample = Downsample(ch) if level < len(widths) - 1 else nn.Identity()
            self.down.append(stage)
        self.mid_block_1 = ResnetBlock(ch, ch, dropout)
        self.mid_attn = AttnBlock(ch)
        self.mid_block_2 = ResnetBlock(ch, ch, dropout)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.blocks:
                h = block(h)
            h = stage.downsample(h)
        h = self.mid_block_2(self.mid_attn(self.mid_block_1(h)))
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``[(B T), latent, h, w] -> [(B T), 3, H, W]``; optional temporal mixes after the mid block and
    after every resolution level's res blocks (before its upsampling)."""

    def __init__(self, out_channels: int, base_channels: int, ch_mult: Sequence[int], num_res_blocks: int,
                 latent_channels: int, dropout: float = 0.0, temporal: bool = False, temporal_kernel: int = 3,
                 temporal_spatial_kernel: int = 3) -> None:
        super().__init__()
        widths = [base_channels * m for m in ch_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        self.mid_block_1 = ResnetBlock(ch, ch, dropout)
        self.mid_attn = AttnBlock(ch)
        self.mid_block_2 = ResnetBlock(ch, ch, dropout)
        mix = lambda c: TemporalMix(c, temporal_kernel, dropout, kernel_s=temporal_spatial_kernel)  # noqa: E731
        self.mid_temporal = mix(ch) if temporal else None
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.blocks.append(ResnetBlock(ch, widths[level], dropout))
                ch = widths[level]
            stage.temporal = mix(ch) if temporal else None
            stage.upsample = Upsample(ch) if level > 0 else nn.Identity()
            self.up.append(stage)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def temporal_mixes(self) -> list[TemporalMix]:
        mixes = [self.mid_temporal] + [stage.temporal for stage in self.up]
        return [m for m in mixes if m is not None]

    def forward(self, z: torch.Tensor, num_frames: int, image_only: bool = False) -> torch.Tensor:
        h = self.mid_block_2(self.mid_attn(self.mid_block_1(self.conv_in(z))))
        if self.mid_temporal is not None:
            h = self.mid_temporal(h, num_frames, image_only)
        for stage in self.up:
            for block in stage.blocks:
                h = block(h)
            if stage.temporal is not None:
                h = stage.temporal(h, num_frames, image_only)
            h = stage.upsample(h)
        return self.conv_out(silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder; ``scale_factor`` (a buffer, NaN until estimated) makes the
    scaled latents ``z * scale_factor`` roughly unit-variance for diffusion (LDM Sec. 4.3.2)."""

    def __init__(self, base_channels: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 4), num_res_blocks: int = 2,
                 latent_channels: int = 4, in_channels: int = 3, dropout: float = 0.0,
                 temporal_decoder: bool = False, temporal_kernel: int = 3, temporal_spatial_kernel: int = 3,
                 patch_size: int = 1, scale_factor: float | None = None, logvar_init: float = 0.0) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if len(ch_mult) < 1 or min(ch_mult) < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError(f"autoencoder: bad widths base_channels={base_channels} ch_mult={ch_mult} "
                             f"num_res_blocks={num_res_blocks}")
        if int(patch_size) not in (1, 2, 4):
            raise ValueError(f"autoencoder: patch_size must be 1, 2 or 4, got {patch_size!r}")
        p = int(patch_size)
        self._hparams = dict(base_channels=int(base_channels), ch_mult=list(ch_mult),
                             num_res_blocks=int(num_res_blocks), latent_channels=int(latent_channels),
                             in_channels=int(in_channels), dropout=float(dropout),
                             temporal_decoder=bool(temporal_decoder), temporal_kernel=int(temporal_kernel),
                             temporal_spatial_kernel=int(temporal_spatial_kernel), patch_size=p)
        # patch_size p > 1: space-to-depth before the encoder and depth-to-space after the decoder, so the
        # full-resolution convolutions (most of the FLOPs at small widths) run at 1/p resolution.
        self.encoder = Encoder(in_channels * p * p, base_channels, ch_mult, num_res_blocks, latent_channels,
                               dropout)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(in_channels * p * p, base_channels, ch_mult, num_res_blocks, latent_channels, dropout,
                               temporal=temporal_decoder, temporal_kernel=temporal_kernel,
                               temporal_spatial_kernel=temporal_spatial_kernel)
        if logvar_init:  # start with a small posterior std so early samples are not swamped by noise
            with torch.no_grad():
                self.quant_conv.bias[latent_channels:] += float(logvar_init)
        value = math.nan if scale_factor is None else float(scale_factor)
        self.register_buffer("scale_factor", torch.tensor(value, dtype=torch.float32))

    # ----------------------------------------------------------------- properties
    @property
    def hparams(self) -> dict:
        """Constructor arguments (without the scale factor, which lives in the state dict)."""
        return dict(self._hparams)

    @property
    def downsample_factor(self) -> int:
        return self._hparams["patch_size"] * 2 ** (len(self._hparams["ch_mult"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self._hparams["latent_channels"]

    @property
    def temporal_receptive_radius(self) -> int:
        """Frames either side that one output frame depends on: the sum of the temporal blocks'
        radii (each block = two convs of radius ``temporal_kernel // 2``); 0 for the image decoder."""
        return sum(m.receptive_radius for m in self.decoder.temporal_mixes())

    def has_scale_factor(self) -> bool:
        return bool(torch.isfinite(self.scale_factor).item())

    def set_scale_factor(self, value: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"scale_factor: must be a finite positive number, got {value!r}")
        self.scale_factor.fill_(float(value))

    def decoder_last_layer(self) -> torch.Tensor:
        """Weight used by the LDM adaptive GAN weight (gradient-norm ratio at the last layer)."""
        return self.decoder.conv_out.weight

    def temporal_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.decoder.temporal_mixes() for p in m.parameters()]

    # ----------------------------------------------------------------- checks
    def _check_video(self, x: torch.Tensor, field: str = "video") -> None:
        f = self.downsample_factor
        if x.ndim != 5 or x.shape[2] != self._hparams["in_channels"]:
            raise DriveSimInputError(f"expected [B, T, {self._hparams['in_channels']}, H, W]", field=field,
                                     value=tuple(x.shape))
        if x.shape[-2] % f or x.shape[-1] % f:
            raise DriveSimInputError(f"frame size H x W = {x.shape[-2]} x {x.shape[-1]} is not divisible by the "
                                     f"autoencoder downsampling factor f={f}", field=field, value=tuple(x.shape))

    def _check_latents(self, z: torch.Tensor, field: str = "latents") -> None:
        if z.ndim != 5 or z.shape[2] != self.latent_channels:
            raise DriveSimInputError(f"expected [B, T, {self.latent_channels}, h, w]", field=field,
                                     value=tuple(z.shape))

    def _require_scale(self) -> float:
        if not self.has_scale_factor():
            raise DriveSimInputError("the autoencoder has no estimated scale factor; run estimate_scale_factor "
                                     "(fit does it at the end) or load a finished model file",
                                     field="scale_factor", value=float(self.scale_factor))
        return float(self.scale_factor)

    # ----------------------------------------------------------------- encode / decode
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """``x [B, T, 3, H, W]`` in [-1, 1] -> q(z|x) with ``mean, logvar [B, T, C, H/f, W/f]``."""
        self._check_video(x)
        b = x.shape[0]
        x = rearrange(x, "b t c h w -> (b t) c h w")
        if self._hparams["patch_size"] > 1:
            x = F.pixel_unshuffle(x, self._hparams["patch_size"])
        moments = self.quant_conv(self.encoder(inference_layout(x)))
        moments = rearrange(moments.contiguous(), "(b t) c h w -> b t c h w", b=b)
        mean, logvar = moments.chunk(2, dim=2)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor, image_only: bool = False) -> torch.Tensor:
        """``z [B, T, C, h, w]`` (unscaled) -> frames ``[B, T, 3, h*f, w*f]``; ``image_only`` forces alpha = 1."""
        self._check_latents(z)
        b, t = z.shape[:2]
        h = self.post_quant_conv(inference_layout(rearrange(z, "b t c h w -> (b t) c h w")))
        out = self.decoder(h, num_frames=t, image_only=image_only)
        if self._hparams["patch_size"] > 1:
            out = F.pixel_shuffle(out, self._hparams["patch_size"])
        return rearrange(out.contiguous(), "(b t) c h w -> b t c h w", b=b)

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                image_only: bool = False) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z, image_only=image_only), posterior

    def encode_latents(self, x: torch.Tensor, sample: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion-space latents ``z * scale_factor``; the posterior mean unless ``sample``."""
        scale = self._require_scale()
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * scale

    def decode_latents(self, z_scaled: torch.Tensor, image_only: bool = False) -> torch.Tensor:
        return self.decode(z_scaled / self._require_scale(), image_only=image_only)

    def decode_chunked(self, z: torch.Tensor, chunk: int = 8, overlap: int | None = None, scaled: bool = False,
                       image_only: bool = False) -> Iterator[torch.Tensor]:
        """Decode ``z [B, T, C, h, w]`` in temporal chunks; yields ``[B, n, 3, H, W]`` (n <= chunk) in order.

        Each chunk is decoded with ``overlap`` extra latent frames of context on both sides that
        are then dropped, so memory depends on ``chunk + 2 * overlap``, not on T. The temporal
        convs zero-pad at a window edge, and the error from that travels inward one frame per
        conv; with ``overlap >= temporal_receptive_radius`` (the default) every kept frame is
        exactly what whole-clip decoding gives.
        """
        self._check_latents(z)
        if chunk < 1:
            raise ValueError(f"chunk: must be >= 1, got {chunk!r}")
        overlap = self.temporal_receptive_radius if overlap is None else int(overlap)
        if overlap < 0:
            raise ValueError(f"overlap: must be >= 0, got {overlap!r}")
        if scaled:
            z = z / self._require_scale()
        total = z.shape[1]
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            lo, hi = max(0, start - overlap), min(total, stop + overlap)
            frames = self.decode(z[:, lo:hi], image_only=image_only)
            yield frames[:, start - lo: stop - lo]


def _video_of(batch: torch.Tensor | dict) -> torch.Tensor:
    if isinstance(batch, dict):
        if "video" not in batch:
            raise DriveSimInputError("batch has no 'video' key", field="video", value=sorted(batch))
        return batch["video"]
    return batch


@torch.no_grad()
def estimate_scale_factor(ae: AutoencoderKL, batches: Iterable[torch.Tensor | dict],
                          generator: torch.Generator | None = None, max_batches: int | None = None) -> float:
    """1 / std of posterior samples over ``batches`` (videos ``[B, T, 3, H, W]`` or batch dicts),
    LDM's unit-variance rescaling (Sec. 4.3.2). Returns the value; does not set it."""
    total, total_sq, count = 0.0, 0.0, 0
    device = next(ae.parameters()).device
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        z = ae.encode(_video_of(batch).to(device)).sample(generator).double()
        total += float(z.sum())
        total_sq += float(z.pow(2).sum())
        count += z.numel()
    if count < 2:
        raise DriveSimInputError("no latents to estimate the scale factor from", field="batches", value=count)
    var = (total_sq - total * total / count) / (count - 1)
    return 1.0 / math.sqrt(max(var, 1e-12))


def build_autoencoder(hparams: dict, state_dict: dict, path: str | os.PathLike | None = None,
                      require_scale: bool = True) -> AutoencoderKL:
    """Rebuild an AutoencoderKL from a model file's hparams and state dict (strict)."""
    unknown = sorted(set(hparams) - HPARAM_NAMES)
    if unknown:
        raise DriveSimInputError("unknown autoencoder hyper-parameters", path=path, field="hparams", value=unknown)
    if "scale_factor" not in state_dict:
        raise DriveSimInputError("autoencoder weights carry no scale factor", path=path, field="scale_factor")
    ae = AutoencoderKL(**hparams)
    try:
        missing, unexpected = ae.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # tensor shapes disagree with the hyper-parameters
        raise DriveSimInputError(f"weights do not match the hyper-parameters: {str(err)[:300]}",
                                 path=path, field="state_dict") from err
    if missing or unexpected:
        raise DriveSimInputError(f"weights do not match the hyper-parameters: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}", path=path, field="state_dict")
    if require_scale and not ae.has_scale_factor():
        raise DriveSimInputError("the scale factor was never estimated (a mid-training checkpoint?)",
                                 path=path, field="scale_factor", value=float(ae.scale_factor))
    return ae.eval()


def load_autoencoder(path: str | os.PathLike, require_scale: bool = True) -> AutoencoderKL:
    """Load a model file (``.safetensors`` / ``.pt``) or a Lightning ``.ckpt`` of an AutoencoderModule.

    Nothing pickled is executed: safetensors, or ``torch.load(weights_only=True)``.
    """
    from drivesim.models.model_files import load_model_file

    hparams, state_dict = load_model_file(path, MODEL_KIND)
    return build_autoencoder(hparams, state_dict, path=path, require_scale=require_scale)
