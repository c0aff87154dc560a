"""ADM-style latent UNet, image and video (Dhariwal & Nichol 2021; LDM; Video LDM).

`UNet(temporal=False)` is the image model: it treats the T frames of [B, T, C, h, w]
independently (frames folded into the batch). `UNet(temporal=True)` is the video model of
Video LDM (Blattmann et al. 2023): every spatial ResBlock is followed by a residual (3,1,1)
3D-conv block and every spatial transformer by temporal attention, blended by a learned
alpha; with ``use_context`` the context frames c_S enter the 3D-conv blocks, and with
``num_regimes`` an interpolation regime label is added to the time embedding. With ``use_ego``
(image or video) each frame's ego speed and yaw rate are embedded and added to that frame's
time embedding (``models/ego_embedding.py``).

Contract (docs/architecture.md): forward(x [B,T,C,h,w], t [B] float timesteps in
[0, num_steps), cond: Conditioning | None) -> [B,T,C,h,w]. The network never sees the
noise schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from drivesim.models.attention import heads_for
from drivesim.models.conditioning import (
    LAYOUT_CHANNELS,
    BoxEncoder,
    Conditioning,
    LabelEncoder,
    box_layout,
)
from drivesim.models.context import ContextEncoder, build_context_input, nearest_context
from drivesim.models.ego_embedding import EgoEncoder
from drivesim.models.temporal import VideoResBlock, VideoSpatialTransformer, check_frames
from drivesim.models.unet_blocks import (
    BlockState,
    Downsample,
    ResBlock,
    SpatialTransformer,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_,
)

PARAMETER_GROUPS = ("spatial", "temporal", "conditioning", "context", "ego")


def parameter_group(name: str) -> str:
    """Group of a parameter / state-dict key: ego > context > temporal > conditioning > spatial."""
    if name.startswith("ego_encoder."):
        return "ego"
    if name.startswith(("context_encoder.", "regime_embed.", "context_input.")) or ".context_in." in name:
        return "context"
    if ".temporal." in name or ".blend." in name:
        return "temporal"
    if name.startswith(("label_encoder.", "box_encoder.")) or ".attn_cross." in name \
            or ".norm_cross." in name:
        return "conditioning"
    return "spatial"


class UNet(nn.Module):
    """ADM UNet over latents [B, T, C, h, w]; the constructor arguments are the config.

    attention_resolutions are downsample factors (1 = full latent resolution); heads are
    given by ``num_head_channels`` (paper: 32) or ``num_heads``. Box/label tokens of
    ``token_dim`` reach every spatial transformer through zero-initialised cross-attention.
    ``box_layout`` (beyond the paper) also rasterises the boxes onto the latent grid, one
    coverage map per class (``conditioning.box_layout``), concatenated to the input: a direct
    spatial signal that a small model learns in a few hundred steps, where the tokens alone
    take far longer. Its input weights start at zero. ``context_input`` (beyond the paper,
    like SVD's concatenated conditioning frame) adds a zero-initialised conv of every frame's
    nearest context latent (``context.nearest_context``) to the stem output, next to the
    paper's pathway into the temporal 3D-conv blocks. ``use_ego`` adds a per-frame ego-motion
    embedding (speed, yaw rate; ``ego_fourier_freqs`` octaves) to the time embedding, zero at
    init (``models/ego_embedding.py``); without it ego fields of the conditioning are ignored.
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 4, model_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2, 4), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (2, 4), num_head_channels: int = 32,
                 num_heads: int = -1, transformer_depth: int = 1, dropout: float = 0.0,
                 norm_groups: int = 32, use_checkpoint: bool = False,
                 use_labels: bool = True, use_boxes: bool = True, token_dim: int = 128,
                 max_boxes: int = 16, box_fourier_freqs: int = 8, box_fusion_layers: int = 1,
                 use_track_ids: bool = False, temporal: bool = False, max_frames: int = 16,
                 alpha_mode: str = "per_frame", temporal_position: str = "sinusoidal",
                 temporal_ff: bool = True, image_only: bool = False, use_context: bool = False,
                 context_channels: int = 32, num_regimes: int = 0,
                 attention_backend: str = "auto", box_layout: bool = False,
                 context_input: bool = False, use_ego: bool = False, ego_fourier_freqs: int = 6) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: (list(v) if isinstance(v, (tuple, list)) else v)
                                       for k, v in locals().items()
                                       if k not in ("self", "__class__")}
        if (use_context or num_regimes) and not temporal:
            raise ValueError("use_context / num_regimes need temporal=True (video model)")
        if context_input and not use_context:
            raise ValueError("context_input needs use_context=True")
        self.in_channels, self.temporal, self.max_frames = in_channels, temporal, max_frames
        self.num_levels, self.image_only = len(channel_mult), image_only
        self.use_checkpoint = use_checkpoint
        emb_dim = 4 * model_channels
        self.model_channels = model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.label_encoder = LabelEncoder(emb_dim, token_dim) if use_labels else None
        self.box_encoder = (BoxEncoder(token_dim, max_boxes, box_fourier_freqs, box_fusion_layers,
                                       use_track_ids=use_track_ids) if use_boxes else None)
        self.regime_embed = zero_(nn.Embedding(num_regimes, emb_dim)) if num_regimes else None
        self.ego_encoder = (EgoEncoder(emb_dim, ego_fourier_freqs, context_channels if use_context else 0)
                            if use_ego else None)
        self.context_encoder = (ContextEncoder(in_channels, context_channels, len(channel_mult))
                                if use_context else None)
        self._blocks = dict(emb_dim=emb_dim, dropout=dropout, norm_groups=norm_groups,
                            heads=(num_heads, num_head_channels), depth=transformer_depth,
                            token_dim=token_dim if (use_labels or use_boxes) else None,
                            backend=attention_backend, context_channels=context_channels
                            if use_context else 0, alpha_mode=alpha_mode,
                            temporal_position=temporal_position, temporal_ff=temporal_ff)
        self.box_layout = bool(box_layout)
        if self.box_layout and not use_boxes:
            raise ValueError("box_layout needs use_boxes=True")
        extra = LAYOUT_CHANNELS if self.box_layout else 0
        self.conv_in = nn.Conv2d(in_channels + extra, model_channels, 3, padding=1)
        if extra:  # the layout starts with no effect (like the zero-initialised cross-attention)
            with torch.no_grad():
                self.conv_in.weight[:, in_channels:].zero_()
        # input-level context pathway (beyond the paper, as SVD): the nearest context latent of
        # every frame, zero-initialised so a fresh video UNet still equals the image UNet; no
        # bias, so S = 0 (no context) adds exactly nothing
        self.context_input = (zero_(nn.Conv2d(in_channels + 1, model_channels, 3, padding=1, bias=False))
                              if context_input else None)
        self._build(model_channels, tuple(channel_mult), num_res_blocks, set(attention_resolutions))
        self.out = nn.Sequential(group_norm(model_channels, norm_groups), nn.SiLU(),
                                 zero_(nn.Conv2d(model_channels, out_channels, 3, padding=1)))
        del self._blocks

    # -- construction ---------------------------------------------------------------------
    def _res(self, channels: int, out_channels: int) -> nn.Module:
        o = self._blocks
        if self.temporal:
            return VideoResBlock(channels, o["emb_dim"], out_channels, o["dropout"],
                                 o["norm_groups"], o["context_channels"], o["alpha_mode"],
                                 self.max_frames)
        return ResBlock(channels, o["emb_dim"], out_channels, o["dropout"], o["norm_groups"])

    def _attn(self, channels: int) -> nn.Module:
        o = self._blocks
        heads, dim_head = heads_for(channels, *o["heads"])
        args = (channels, heads, dim_head, o["depth"], o["token_dim"], o["dropout"],
                o["norm_groups"], o["backend"])
        if self.temporal:
            return VideoSpatialTransformer(*args, o["alpha_mode"], self.max_frames,
                                           o["temporal_position"], o["temporal_ff"])
        return SpatialTransformer(*args)

    def _build(self, mc: int, mult: tuple[int, ...], num_res: int, attn_ds: set[int]) -> None:
        """ADM layout: levels of num_res (ResBlock [+ attention]) then Downsample; a middle
        ResBlock-attention-ResBlock; mirrored decoder with num_res + 1 blocks per level fed
        by skip connections."""
        self.input_blocks, skip_channels = nn.ModuleList(), [mc]
        ch, ds = mc, 1
        for level, m in enumerate(mult):
            for _ in range(num_res):
                layers = [self._res(ch, m * mc)]
                ch = m * mc
                if ds in attn_ds:
                    layers.append(self._attn(ch))
                self.input_blocks.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(nn.ModuleList([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = nn.ModuleList([self._res(ch, ch), self._attn(ch), self._res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res + 1):
                layers = [self._res(ch + skip_channels.pop(), m * mc)]
                ch = m * mc
                if ds in attn_ds:
                    layers.append(self._attn(ch))
                if level and i == num_res:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(nn.ModuleList(layers))

    @classmethod
    def from_image_unet(cls, image_unet: UNet, **overrides: Any) -> UNet:
        """Video UNet with the image UNet's config (+ overrides) and its spatial weights."""
        if image_unet.temporal:
            raise ValueError("from_image_unet: the source UNet already has temporal layers")
        config = {**image_unet.config, "temporal": True, **overrides}
        model = cls(**config)
        model.load_spatial_state_dict(image_unet.state_dict())
        return model

    def load_spatial_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load an image-model state dict (spatial + conditioning keys, and its ego encoder if
        it has one), strict on those keys; temporal / context parameters (and the ego parameters
        the image model lacks) keep their (identity) init."""
        video_keys = [k for k in state_dict if parameter_group(k) in ("temporal", "context")]
        if video_keys:
            raise ValueError(f"load_spatial_state_dict: the state dict is a video model "
                             f"(temporal keys such as {video_keys[:3]}); load it with "
                             f"load_state_dict into UNet(temporal=True)")
        own = self.state_dict()
        wanted = {k for k in own if parameter_group(k) in ("spatial", "conditioning")}
        # an image model's ego encoder comes along (a video model's context head of it starts new)
        wanted |= {k for k in own if parameter_group(k) == "ego" and k in state_dict}
        missing, unexpected = sorted(wanted - state_dict.keys()), sorted(state_dict.keys() - wanted)
        shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                  for k in wanted & state_dict.keys() if state_dict[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"load_spatial_state_dict: image weights do not match this UNet's "
                             f"config; missing {missing[:5]}, unexpected {unexpected[:5]}, "
                             f"shape mismatches {shapes[:5]}")
        self.load_state_dict(state_dict, strict=False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Partition of all parameters into spatial / temporal / conditioning / context / ego."""
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAMETER_GROUPS}
        for name, p in self.named_parameters():
            groups[parameter_group(name)].append(p)
        return groups

    # -- forward ------------------------------------------------------------------------
    def _check_input(self, x: Tensor, t: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"UNet: x must be [B,T,C,h,w], got shape {tuple(x.shape)}")
        if x.shape[2] != self.in_channels:
            raise ValueError(f"UNet: latents have {x.shape[2]} channels, the UNet expects "
                             f"{self.in_channels}")
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"UNet: latent size {tuple(x.shape[-2:])} must be divisible by "
                             f"{factor} ({self.num_levels} levels)")
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNet: t must be [B]=[{x.shape[0]}], got {tuple(t.shape)}")
        if self.temporal:
            check_frames(x.shape[1], self.max_frames, "UNet")

    def _embed(self, t: Tensor, cond: Conditioning | None, b: int, frames: int,
               device: torch.device, ego_emb: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """-> emb [(B T), E] and tokens [(B T), L, D] (label token + box tokens) or None;
        ``ego_emb`` [(B T), E] is added per frame."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels))  # [B, E]
        tokens = []
        if self.label_encoder is not None:
            label_emb, label_token = self.label_encoder(cond, b, device)  # [B,E], [B,1,D]
            emb = emb + label_emb
            tokens.append(label_token.repeat_interleave(frames, dim=0))  # [(B T), 1, D]
        if self.regime_embed is not None:
            if cond is None or cond.regime is None:
                raise ValueError("UNet: this interpolation model needs cond.regime [B]")
            emb = emb + self.regime_embed(cond.regime.to(device))
        if self.box_encoder is not None:
            tokens.append(self.box_encoder(cond, b, frames, device))  # [(B T), 1+N, D]
        emb = emb.repeat_interleave(frames, dim=0)  # [B, E] -> [(B T), E]
        if ego_emb is not None:  # per frame: frame t's motion into frame t's embedding
            emb = emb + ego_emb.to(emb.dtype)  # [(B T), E]
        return emb, (torch.cat(tokens, dim=1).to(emb.dtype) if tokens else None)

    def _run(self, layer: nn.Module, h: Tensor, state: BlockState) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(layer, h, state, use_reentrant=False)
        return layer(h, state)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        """x [B,T,C,h,w] noisy latents, t [B] float timesteps, cond -> [B,T,C_out,h,w]."""
        self._check_input(x, t)
        # Dense strides: a channels-last view (what a conv encoder returns) crashes the CPU
        # backward of the temporal convs in torch 2.13 and is slower elsewhere.
        x = x.contiguous()
        b, frames = x.shape[:2]
        ego_emb, ego_context = (None, None) if self.ego_encoder is None else \
            self.ego_encoder(cond, b, frames, x.device)  # [(B T), E], [(B T), Cc] | None
        emb, tokens = self._embed(t, cond, b, frames, x.device, ego_emb)
        state = BlockState(emb=emb, tokens=tokens, frames=frames, image_only=self.image_only)
        has_context = cond is not None and cond.context is not None
        if has_context and self.context_encoder is None:
            raise ValueError("UNet: context frames given but this UNet has use_context=False")
        c_s = None
        if self.context_encoder is not None and not self.image_only:  # image_only (alpha = 1) ignores context
            c_s = build_context_input(cond, x)                            # [B, T, C+1, h, w]
            state.context = self.context_encoder(c_s)
            if ego_context is not None:  # each frame's motion at every resolution of the temporal blocks
                state.context = {hw: f + ego_context[:, :, None, None].to(f.dtype) for hw, f in state.context.items()}
        x_in = x.flatten(0, 1)  # [B, T, C, h, w] -> [(B T), C, h, w]
        if self.box_layout:  # [(B T), C + LAYOUT_CHANNELS, h, w]: boxes rasterised on the latent grid
            x_in = torch.cat([x_in, box_layout(cond, b, frames, *x.shape[-2:], x.device, x_in.dtype)], dim=1)
        h = self.conv_in(x_in)
        if self.context_input is not None and c_s is not None:
            h = h + self.context_input(nearest_context(c_s).flatten(0, 1))  # [(B T), C+1, h, w]
        skips = [h]
        for block in self.input_blocks:
            for layer in block:
                h = self._run(layer, h, state)
            skips.append(h)
        for layer in self.middle_block:
            h = self._run(layer, h, state)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in block:
                h = self._run(layer, h, state)
        return self.out(h).unflatten(0, (b, frames))  # [(B T), C, h, w] -> [B, T, C, h, w]


VideoUNet = UNet  # the video model is UNet(temporal=True); VideoUNet.from_image_unet(...) reads well
