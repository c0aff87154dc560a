"""Frame tensors to images: the one conversion from model output to uint8 RGB."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> uint8 ``[..., H, W, 3]`` (values clamped, rounded)."""
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected [..., 3, H, W] frames, got {tuple(frames.shape)}")
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
