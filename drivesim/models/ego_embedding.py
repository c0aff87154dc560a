"""Per-frame ego-motion conditioning: speed and yaw rate -> an embedding added to each frame's
timestep embedding, and (video UNets) a per-frame feature added to the context pathway of the
temporal layers (docs/architecture.md, "Ego-motion conditioning").

Like Vista's action conditioning (Gao et al. 2024: scalars -> sinusoidal features -> MLP ->
zero-initialised projection) and SVD's motion / fps embeddings (added to the time
embedding), but per frame: spatial layers fold the frames into the batch (``(b t)``), so
frame t's timestep embedding carries frame t's motion into every ResBlock. The spatial
layers are frozen in the video stage, so the motion also enters where motion is made: the
temporal 3D-conv blocks, whose context input (a zero-initialised (3, 1, 1) conv,
``temporal.TemporalConvBlock``) sees each frame's motion next to its neighbours'. The
time-embedding projection is zero-initialised and its null embedding (unknown motion, or
dropped for classifier-free guidance) starts at zero, and the context inputs start at zero,
so adding the encoder leaves a pretrained network's output unchanged at init.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from drivesim.models.conditioning import Conditioning, fourier_features
from drivesim.models.unet_blocks import zero_

# Input scales: typical speeds (0-30 m/s) and yaw rates (+-0.5 rad/s) land in about [-1, 1]
# before the Fourier features; larger values stay distinguishable through the linear term.
SPEED_SCALE = 30.0   # m/s
YAW_SCALE = 0.5      # rad/s


def ego_inputs(cond: Conditioning | None, batch: int, frames: int, device: torch.device
               ) -> tuple[Tensor, Tensor]:
    """(values [(B T), 2] scaled speed and yaw rate, use [(B T)] bool: known and not dropped).

    Absent ego motion (``cond`` None or ``cond.ego_speed`` None) reads as unknown everywhere.
    """
    if cond is None or cond.ego_speed is None:
        return (torch.zeros(batch * frames, 2, device=device),
                torch.zeros(batch * frames, dtype=torch.bool, device=device))
    if cond.ego_speed.shape[1] != frames:
        raise ValueError(f"Conditioning.ego_speed: {cond.ego_speed.shape[1]} frames, latents have {frames}")
    speed = cond.ego_speed.to(device=device, dtype=torch.float32) / SPEED_SCALE   # [B, T]
    yaw = cond.ego_yaw_rate.to(device=device, dtype=torch.float32) / YAW_SCALE   # [B, T]
    values = torch.stack([speed, yaw], dim=-1).flatten(0, 1)                     # [(B T), 2]
    known = (torch.ones_like(cond.ego_speed, dtype=torch.bool) if cond.ego_known is None
             else cond.ego_known).to(device)                                     # [B, T]
    drop = cond.drop_ego.to(device) if cond.drop_ego is not None else torch.zeros(
        batch, dtype=torch.bool, device=device)                                  # [B]
    use = known & ~drop[:, None]                                                 # [B, T]
    return values, use.flatten()                                                 # [(B T), 2], [(B T)]


class EgoEncoder(nn.Module):
    """Ego speed and yaw rate of every frame -> (embedding ``[(B T), E]`` for the time embedding,
    context feature ``[(B T), Cc]`` for the temporal layers or None).

    Fourier features of the two scaled values (``num_freqs`` octaves) -> MLP -> a
    zero-initialised projection to the time embedding and (``context_channels`` > 0) a linear
    projection to the context pathway's channels. Frames whose motion is unknown or dropped
    get the learned null vectors (``null``, ``null_context``; zero at init), so the null is a
    trained "no ego motion given" state and not a speed of 0.
    """

    def __init__(self, embed_dim: int, num_freqs: int = 6, context_channels: int = 0) -> None:
        super().__init__()
        self.num_freqs = int(num_freqs)
        in_dim = 2 * (2 * self.num_freqs + 1)
        self.mlp = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim),
                                 nn.SiLU())
        self.to_emb = zero_(nn.Linear(embed_dim, embed_dim))
        self.null = nn.Parameter(torch.zeros(embed_dim))
        # not zero: the context inputs it feeds start at zero, and a zero pair would never train
        self.to_context = nn.Linear(embed_dim, context_channels) if context_channels else None
        self.null_context = nn.Parameter(torch.zeros(context_channels)) if context_channels else None

    def forward(self, cond: Conditioning | None, batch: int, frames: int, device: torch.device
                ) -> tuple[Tensor, Tensor | None]:
        """-> (emb [(B T), E], context [(B T), Cc] or None), float32, rows in the ``(b t)`` order
        of the folded frames."""
        values, use = ego_inputs(cond, batch, frames, device)              # [(B T), 2], [(B T)]
        hidden = self.mlp(fourier_features(values, self.num_freqs))         # [(B T), E]
        emb = torch.where(use[:, None], self.to_emb(hidden), self.null)
        if self.to_context is None:
            return emb, None
        return emb, torch.where(use[:, None], self.to_context(hidden), self.null_context)
