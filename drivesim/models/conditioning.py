"""Conditioning of the latent diffusion UNet: the `Conditioning` record and its encoders.

* `Conditioning` carries everything a denoiser is conditioned on (boxes, labels, per-frame
  ego motion, context frames) plus the per-sample drop flags used for classifier-free guidance.
* `LabelEncoder`: day/night and crowdedness -> learned embeddings, added to the timestep
  embedding and offered as one cross-attention token (docs/architecture.md, "Box and label
  conditioning").
* `BoxEncoder`: per-box tokens from Fourier features of the 4 normalised coordinates and a
  learned class embedding -> MLP, fused across the boxes of a frame by a small transformer
  (Video LDM, Blattmann et al. 2023, box-conditioned image model), learned null tokens for
  padding and for guidance dropout.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drivesim.data.labels import DAYNIGHT_NAMES, NUM_CLASSES, NUM_CROWD, PAD_CLASS

NUM_DAYNIGHT = len(DAYNIGHT_NAMES)
_TENSOR_FIELDS = ("boxes", "box_classes", "box_ids", "daynight", "crowd", "context",
                  "context_mask", "drop_boxes", "drop_labels", "regime", "lowres",
                  "ego_speed", "ego_yaw_rate", "ego_known", "drop_ego")
_DROP_FLAGS = ("drop_boxes", "drop_labels", "drop_ego")
EGO_KEYS = ("ego_speed", "ego_yaw_rate", "ego_known")  # batch keys (docs/architecture.md, batch contract)


def _check_range(name: str, value: Tensor, low: int, high: int) -> None:
    bad = (value < low) | (value >= high)
    if bool(bad.any()):
        raise ValueError(f"Conditioning.{name}: values must be in [{low}, {high}), "
                         f"got {value[bad].flatten()[:8].tolist()}")


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on; every field optional, batch size B, T frames.

    boxes [B,T,N,4] float (x1,y1,x2,y2 in [0,1]), box_classes [B,T,N] int64 (0 = padding),
    box_ids [B,T,N] int64 track ids, daynight [B] int64 in 0..2, crowd [B] int64 in 0..3,
    context [B,T',C,h,w] clean latents of context frames (T' <= T) with context_mask
    [B,T'] (1 = frame given), regime [B] int64 interpolation regime (the video upsampler: its
    noise-augmentation level), lowres [B,T,C,H,W] the upsampler's low-resolution frames, already
    upsampled to the output size and noise-augmented (never dropped), ego_speed / ego_yaw_rate
    [B,T] float (m/s; rad/s, left positive) with ego_known [B,T] bool (None = all known; an
    unknown frame gets the learned null ego embedding), drop_boxes / drop_labels / drop_ego
    [B] bool (classifier-free guidance: replace by the learned null embedding). A dropped
    context is an all-zero mask (S = 0, paper's context guidance). Instances are frozen and
    helpers return copies; tensors are never modified in place.
    """

    boxes: Tensor | None = None
    box_classes: Tensor | None = None
    box_ids: Tensor | None = None
    daynight: Tensor | None = None
    crowd: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None
    drop_boxes: Tensor | None = None
    drop_labels: Tensor | None = None
    regime: Tensor | None = None
    lowres: Tensor | None = None
    ego_speed: Tensor | None = None
    ego_yaw_rate: Tensor | None = None
    ego_known: Tensor | None = None
    drop_ego: Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_batch(cls, batch: dict[str, Any], **extra: Tensor | None) -> Conditioning:
        """Build from a DataModule batch (the batch contract's keys, docs/architecture.md);
        missing keys stay None."""
        keys = ("boxes", "box_classes", "box_ids", "daynight", "crowd", *EGO_KEYS)
        kwargs = {k: batch.get(k) for k in keys}
        if batch.get("boxes_known") is not None:  # unlabelled samples (data/mixed.py): the null box token
            kwargs["drop_boxes"] = ~batch["boxes_known"].bool()
        kwargs.update(extra)
        return cls(**kwargs)

    @property
    def batch_size(self) -> int | None:
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[0])
        return None

    def validate(self) -> None:
        """Raise ValueError naming the field and value for any malformed entry."""
        sizes = {n: getattr(self, n).shape[0] for n in _TENSOR_FIELDS if getattr(self, n) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Conditioning: batch sizes differ between fields: {sizes}")
        if self.boxes is not None:
            self._validate_boxes()
        for name, count in (("daynight", NUM_DAYNIGHT), ("crowd", NUM_CROWD)):
            value = getattr(self, name)
            if value is not None:
                if value.dim() != 1 or value.is_floating_point():
                    raise ValueError(f"Conditioning.{name}: expected int64 [B], got "
                                     f"{value.dtype} {tuple(value.shape)}")
                _check_range(name, value, 0, count)
        for name in _DROP_FLAGS:
            value = getattr(self, name)
            if value is not None and (value.dim() != 1 or value.dtype != torch.bool):
                raise ValueError(f"Conditioning.{name}: expected bool [B], got "
                                 f"{value.dtype} {tuple(value.shape)}")
        if self.context is not None:
            if self.context.dim() != 5:
                raise ValueError(f"Conditioning.context: expected [B,T,C,h,w], got "
                                 f"{tuple(self.context.shape)}")
            mask = self.context_mask
            if mask is None or tuple(mask.shape) != tuple(self.context.shape[:2]):
                raise ValueError(f"Conditioning.context_mask: expected shape "
                                 f"{tuple(self.context.shape[:2])} (context [B,T]), got "
                                 f"{None if mask is None else tuple(mask.shape)}")
        if self.lowres is not None and (self.lowres.dim() != 5 or not self.lowres.is_floating_point()):
            raise ValueError(f"Conditioning.lowres: expected float [B,T,C,H,W], got "
                             f"{self.lowres.dtype} {tuple(self.lowres.shape)}")
        if any(getattr(self, name) is not None for name in EGO_KEYS):
            self._validate_ego()

    def _validate_ego(self) -> None:
        speed, yaw, known = self.ego_speed, self.ego_yaw_rate, self.ego_known
        if speed is None or yaw is None:
            raise ValueError("Conditioning.ego_speed / ego_yaw_rate: give both or neither, got "
                             f"ego_speed {'set' if speed is not None else None}, ego_yaw_rate "
                             f"{'set' if yaw is not None else None}")
        for name, value in (("ego_speed", speed), ("ego_yaw_rate", yaw)):
            if value.dim() != 2 or not value.is_floating_point() or value.shape != speed.shape:
                raise ValueError(f"Conditioning.{name}: expected float [B,T] like ego_speed "
                                 f"{tuple(speed.shape)}, got {value.dtype} {tuple(value.shape)}")
        if known is not None and (known.dtype != torch.bool or known.shape != speed.shape):
            raise ValueError(f"Conditioning.ego_known: expected bool {tuple(speed.shape)}, got "
                             f"{known.dtype} {tuple(known.shape)}")
        given = torch.ones_like(speed, dtype=torch.bool) if known is None else known
        for name, value in (("ego_speed", speed), ("ego_yaw_rate", yaw)):
            bad = given & ~torch.isfinite(value)
            if bool(bad.any()):
                raise ValueError(f"Conditioning.{name}: non-finite value {value[bad][:4].tolist()} "
                                 f"at (sample, frame) {bad.nonzero()[0].tolist()}")

    def _validate_boxes(self) -> None:
        boxes = self.boxes
        if boxes.dim() != 4 or boxes.shape[-1] != 4:
            raise ValueError(f"Conditioning.boxes: expected [B,T,N,4], got {tuple(boxes.shape)}")
        if self.box_classes is None or self.box_classes.shape != boxes.shape[:3]:
            raise ValueError(f"Conditioning.box_classes: expected shape {tuple(boxes.shape[:3])}, "
                             f"got {None if self.box_classes is None else tuple(self.box_classes.shape)}")
        if self.box_ids is not None and self.box_ids.shape != boxes.shape[:3]:
            raise ValueError(f"Conditioning.box_ids: expected shape {tuple(boxes.shape[:3])}, "
                             f"got {tuple(self.box_ids.shape)}")
        nan = torch.isnan(boxes)
        if bool(nan.any()):
            where = nan.nonzero()[0].tolist()
            raise ValueError(f"Conditioning.boxes: NaN coordinate at index {where}")
        outside = (boxes < 0) | (boxes > 1)
        if bool(outside.any()):
            raise ValueError(f"Conditioning.boxes: coordinates must be in [0, 1], got "
                             f"{boxes[outside][:8].tolist()}")
        _check_range("box_classes", self.box_classes, 0, NUM_CLASSES)

    # -- helpers --------------------------------------------------------------------------
    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        """Copy on ``device``; ``dtype`` applies to floating fields (boxes, context) only."""
        moved = {}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                value = value.to(device, dtype=dtype if value.is_floating_point() else None)
            moved[name] = value
        return Conditioning(**moved)

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        """Concatenate along the batch; a field must be set in all items or in none
        (drop flags missing in some items are filled with False)."""
        if not items:
            raise ValueError("Conditioning.cat: empty list")
        out = {}
        for f in fields(Conditioning):
            values = [getattr(c, f.name) for c in items]
            if all(v is None for v in values):
                out[f.name] = None
                continue
            if f.name in _DROP_FLAGS:
                values = [_flags(c, f.name) for c in items]
            if any(v is None for v in values):
                raise ValueError(f"Conditioning.cat: field '{f.name}' is set in some items only")
            out[f.name] = torch.cat(values, dim=0)
        return Conditioning(**out)

    def with_dropped(self, boxes: bool | Tensor | None = None, labels: bool | Tensor | None = None,
                     context: bool | Tensor | None = None, ego: bool | Tensor | None = None) -> Conditioning:
        """A copy with the given conditions dropped (True = all samples, or a [B] bool mask).

        Drops accumulate with the flags already set. A dropped context zeroes its mask.
        """
        b = self.batch_size
        if b is None:
            raise ValueError("Conditioning.with_dropped: conditioning holds no tensors")
        changes: dict[str, Tensor] = {}
        for name, request in (("drop_boxes", boxes), ("drop_labels", labels), ("drop_ego", ego)):
            if request is not None:
                flags = _flags(self, name)
                changes[name] = flags | _as_mask(request, b, name).to(flags.device)
        if context is not None and self.context_mask is not None:
            keep = ~_as_mask(context, b, "context").to(self.context_mask.device)
            changes["context_mask"] = self.context_mask * keep[:, None].to(self.context_mask.dtype)
        return replace(self, **changes)


def _flags(cond: Conditioning, name: str) -> Tensor:
    value = getattr(cond, name)
    if value is not None:
        return value
    device = next(getattr(cond, n).device for n in _TENSOR_FIELDS if getattr(cond, n) is not None)
    return torch.zeros(cond.batch_size, dtype=torch.bool, device=device)


def _as_mask(request: bool | Tensor, batch: int, name: str) -> Tensor:
    if isinstance(request, bool):
        return torch.full((batch,), request, dtype=torch.bool)
    if request.shape != (batch,):
        raise ValueError(f"Conditioning.with_dropped: {name} mask must be [{batch}], "
                         f"got {tuple(request.shape)}")
    return request.to(torch.bool)


LAYOUT_CHANNELS = NUM_CLASSES - 1  # one coverage map per non-padding class


def _cell_overlap(lo: Tensor, hi: Tensor, cells: int) -> Tensor:
    """Fraction of each of ``cells`` equal cells on [0, 1] covered by [lo, hi]:
    lo, hi [M, N] -> [M, N, cells] in [0, 1]."""
    edges = torch.arange(cells + 1, device=lo.device, dtype=lo.dtype) / cells
    overlap = torch.minimum(hi[..., None], edges[1:]) - torch.maximum(lo[..., None], edges[:-1])
    return overlap.clamp(min=0.0) * cells


def box_layout(cond: Conditioning | None, batch: int, frames: int, height: int, width: int,
               device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boxes rasterised onto the latent grid: ``[(B T), LAYOUT_CHANNELS, height, width]``.

    Channel c - 1 holds, for class c, the fraction of each latent cell covered by that
    class's boxes (summed over boxes, clamped to 1), so a box smaller than a cell still
    leaves a proportional trace. Dropped or absent boxes give the all-zero (null) layout,
    the spatial counterpart of the null box tokens, so guidance on boxes drops both.
    """
    zeros = torch.zeros(batch * frames, LAYOUT_CHANNELS, height, width, device=device, dtype=dtype)
    if cond is None or cond.boxes is None:
        return zeros
    if cond.boxes.shape[1] != frames:
        raise ValueError(f"Conditioning.boxes: {cond.boxes.shape[1]} frames, latents have {frames}")
    boxes = cond.boxes.to(device=device, dtype=dtype).flatten(0, 1)  # [(B T), N, 4]
    classes = cond.box_classes.to(device).flatten(0, 1)               # [(B T), N]
    cover = torch.einsum("mnh,mnw->mnhw", _cell_overlap(boxes[..., 1], boxes[..., 3], height),
                         _cell_overlap(boxes[..., 0], boxes[..., 2], width))  # [M, N, h, w]
    onehot = F.one_hot(classes, NUM_CLASSES)[..., PAD_CLASS + 1:].to(dtype)   # [M, N, C]
    layout = torch.einsum("mnc,mnhw->mchw", onehot, cover).clamp(max=1.0)
    keep = ~_flags(cond, "drop_boxes").to(device).repeat_interleave(frames)  # [(B T)]
    return layout * keep[:, None, None, None].to(dtype)


def truncate_boxes(boxes: Tensor, classes: Tensor, ids: Tensor | None, max_boxes: int
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keep at most ``max_boxes`` per frame, the largest by area (warns when dropping any).

    boxes [M,N,4], classes [M,N], ids [M,N] -> the same with N' = min(N, max_boxes). Under
    ``torch.compile`` the warning is skipped: counting the real boxes reads a tensor value,
    which would split the compiled graph.
    """
    n = boxes.shape[1]
    if n <= max_boxes:
        return boxes, classes, ids
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    area = torch.where(classes == PAD_CLASS, torch.full_like(area, -1.0), area)
    real = 0 if torch.compiler.is_compiling() else int((classes != PAD_CLASS).sum(dim=1).max())
    if real > max_boxes:
        warnings.warn(f"BoxEncoder: {real} boxes in a frame exceed max_boxes={max_boxes}; "
                      f"keeping the {max_boxes} largest by area", stacklevel=3)
    keep = area.topk(max_boxes, dim=1).indices.sort(dim=1).values  # [M, max_boxes]
    boxes = torch.gather(boxes, 1, keep[..., None].expand(-1, -1, 4))  # [M, max_boxes, 4]
    classes = torch.gather(classes, 1, keep)
    ids = None if ids is None else torch.gather(ids, 1, keep)
    return boxes, classes, ids


def fourier_features(x: Tensor, num_freqs: int) -> Tensor:
    """[..., D] in [0,1] -> [..., D * (2 * num_freqs + 1)]: x, sin(2^k pi x), cos(2^k pi x)."""
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = (x[..., None] * freqs).flatten(-2)  # [..., D, F] -> [..., (D F)]
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class LabelEncoder(nn.Module):
    """Day/night (3 values) + crowdedness (4 buckets) -> (embedding [B,E], token [B,1,D]).

    The last row of each table is the learned null embedding used when a sample's labels
    are dropped (classifier-free guidance) or absent.
    """

    def __init__(self, embed_dim: int, token_dim: int) -> None:
        super().__init__()
        self.daynight = nn.Embedding(NUM_DAYNIGHT + 1, embed_dim)
        self.crowd = nn.Embedding(NUM_CROWD + 1, embed_dim)
        self.to_token = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, token_dim))

    def forward(self, cond: Conditioning | None, batch: int, device: torch.device
                ) -> tuple[Tensor, Tensor]:
        daynight = torch.full((batch,), NUM_DAYNIGHT, dtype=torch.long, device=device)
        crowd = torch.full((batch,), NUM_CROWD, dtype=torch.long, device=device)
        if cond is not None:
            drop = _flags(cond, "drop_labels").to(device) if cond.batch_size else None
            if cond.daynight is not None:
                daynight = torch.where(drop, daynight, cond.daynight.to(device))
            if cond.crowd is not None:
                crowd = torch.where(drop, crowd, cond.crowd.to(device))
        emb = self.daynight(daynight) + self.crowd(crowd)  # [B, E]
        return emb, self.to_token(emb)[:, None]  # [B, E], [B, 1, D]


class BoxEncoder(nn.Module):
    """Boxes of each frame -> tokens [B*T, 1 + max_boxes, D].

    Token 0 is a learned frame token (``frame_token``; ``drop_token`` when the sample's
    boxes are dropped for guidance); tokens 1.. are one per box: Fourier features of the
    coordinates + class embedding -> MLP. Padding slots (class 0) and the boxes of a dropped
    sample are masked out of the fusing transformer and read as the learned ``pad_token``.
    """

    def __init__(self, token_dim: int, max_boxes: int = 16, num_freqs: int = 8,
                 fusion_layers: int = 1, fusion_heads: int = 4, use_track_ids: bool = False,
                 max_track_ids: int = 1024) -> None:
        super().__init__()
        if token_dim % fusion_heads:
            raise ValueError(f"BoxEncoder: token_dim {token_dim} not divisible by "
                             f"fusion_heads {fusion_heads}")
        self.max_boxes, self.num_freqs, self.token_dim = max_boxes, num_freqs, token_dim
        self.class_embed = nn.Embedding(NUM_CLASSES, token_dim)
        in_dim = 4 * (2 * num_freqs + 1) + token_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, token_dim), nn.SiLU(),
                                 nn.Linear(token_dim, token_dim))
        self.frame_token = nn.Parameter(torch.randn(token_dim) * 0.02)
        self.drop_token = nn.Parameter(torch.randn(token_dim) * 0.02)
        self.pad_token = nn.Parameter(torch.randn(token_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(token_dim, fusion_heads, 2 * token_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, fusion_layers, enable_nested_tensor=False)
        # Optional track-id embedding (hashed): lets the tokens of one vehicle be matched
        # across frames; used by the video model's spatial cross-attention per frame.
        self.max_track_ids = max_track_ids
        self.track_embed = nn.Embedding(max_track_ids, token_dim) if use_track_ids else None

    def forward(self, cond: Conditioning | None, batch: int, frames: int, device: torch.device
                ) -> Tensor:
        """-> tokens [B*T, 1 + max_boxes, D]; fewer boxes are padded, more are truncated, so
        the token count (and the attention it feeds) never depends on N."""
        if cond is None or cond.boxes is None:  # no boxes given = unknown = dropped
            drop = torch.ones(batch, dtype=torch.bool, device=device)
            boxes = torch.zeros(batch * frames, self.max_boxes, 4, device=device)
            classes = torch.zeros(batch * frames, self.max_boxes, dtype=torch.long, device=device)
            return self._encode(boxes, classes, None, drop.repeat_interleave(frames))
        if cond.boxes.shape[1] != frames:
            raise ValueError(f"Conditioning.boxes: {cond.boxes.shape[1]} frames, latents have {frames}")
        boxes = cond.boxes.to(device).flatten(0, 1)          # [B, T, N, 4] -> [(B T), N, 4]
        classes = cond.box_classes.to(device).flatten(0, 1)  # [B, T, N] -> [(B T), N]
        ids = None if cond.box_ids is None else cond.box_ids.to(device).flatten(0, 1)
        boxes, classes, ids = truncate_boxes(boxes, classes, ids, self.max_boxes)
        missing = self.max_boxes - boxes.shape[1]  # pad N up to max_boxes with class 0
        boxes, classes = F.pad(boxes, (0, 0, 0, missing)), F.pad(classes, (0, missing))
        ids = None if ids is None else F.pad(ids, (0, missing))
        drop = _flags(cond, "drop_boxes").to(device).repeat_interleave(frames)  # [(B T)]
        return self._encode(boxes, classes, ids, drop)

    def _encode(self, boxes: Tensor, classes: Tensor, ids: Tensor | None, drop: Tensor) -> Tensor:
        """boxes [M,N,4], classes/ids [M,N], drop [M] bool -> tokens [M, 1+N, D]."""
        pad = (classes == PAD_CLASS) | drop[:, None]  # [BT, N]
        feats = torch.cat([fourier_features(boxes, self.num_freqs), self.class_embed(classes)], -1)
        tokens = self.mlp(feats)  # [BT, N, D]
        if self.track_embed is not None and ids is not None:
            tokens = tokens + self.track_embed(ids.remainder(self.max_track_ids))
        first = torch.where(drop[:, None], self.drop_token, self.frame_token)[:, None]  # [BT,1,D]
        tokens = torch.cat([first, tokens], dim=1)  # [BT, 1+N, D]
        key_pad = F.pad(pad, (1, 0), value=False)  # the first token is never masked
        fused = self.fusion(tokens, src_key_padding_mask=key_pad)
        return torch.where(key_pad[..., None], self.pad_token.to(fused.dtype), fused)
