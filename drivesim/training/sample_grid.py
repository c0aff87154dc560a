"""Validation sample grids of the diffusion stages: clips x frames with the boxes drawn, to TensorBoard."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[B, T, 3, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3]."""
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b t c h w -> b t h w c").cpu().numpy()


def sample_grid(frames: torch.Tensor, batch: dict[str, Any]) -> np.ndarray:
    """Grid uint8 [B*H, T*W, 3]: one row per clip, one column per frame, boxes drawn on."""
    from drivesim.data.boxes import draw_boxes

    rgb = frames_to_uint8(frames)
    if "boxes" in batch:
        boxes = batch["boxes"].detach().cpu().numpy()
        classes = batch["box_classes"].detach().cpu().numpy()
        ids = batch["box_ids"].detach().cpu().numpy() if "box_ids" in batch else None
        rgb = np.stack([np.stack([draw_boxes(rgb[b, t], boxes[b, t], classes[b, t],
                                             None if ids is None else ids[b, t])
                                  for t in range(rgb.shape[1])]) for b in range(rgb.shape[0])])
    return rearrange(rgb, "b t h w c -> (b h) (t w) c")


def log_sample_grid(logger: Any, tag: str, frames: torch.Tensor, batch: dict[str, Any],
                    step: int) -> None:
    """Log a sample grid (clips x frames, boxes drawn) to TensorBoard when that logger is used."""
    experiment = getattr(logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "add_image"):
        return
    experiment.add_image(tag, sample_grid(frames, batch), step, dataformats="HWC")
