"""Per-frame oracle scores, defined precisely (docs/evaluation.md restates them).

Box fidelity compares the oracle's vehicle-probability map ``P`` (at the oracle resolution)
with the conditioned vehicle boxes of the frame:

- a conditioned box of at least ``min_box_pixels`` pixels is *recalled* when the mean of ``P``
  inside it exceeds 0.5;
- a predicted blob (8-connected component of ``P > 0.5`` with at least ``min_box_pixels``
  pixels) is a *true positive* when at least half of its pixels lie inside the union of the
  conditioned vehicle boxes;
- mask IoU is the IoU of ``P > 0.5`` with that union (frames where both are empty are skipped).

Temporal consistency uses the mean absolute grey-level difference of consecutive frames
(``frame_differences``) and, for motion coherence, the *warp residual* (``warp_residuals``):
frame t warped onto frame t+1 by dense optical flow (Farneback), mean |warped - x_{t+1}|.
Change that follows a motion field (the road scrolling, a vehicle moving) is explained by
the flow and leaves a small residual; change that does not (texture boiling, flicker,
objects popping in and out) remains. Frame differences alone are blind to this: a clip whose
content boils at the right rate has real-looking difference statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from drivesim.data.labels import VEHICLE_CLASSES


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of normalised ``x1, y1, x2, y2`` boxes ``[N, 4]`` as a bool ``[H, W]`` mask.

    A pixel belongs to a box when its centre lies inside it.
    """
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, c1 = _pixel_span(x1, x2, width)
        r0, r1 = _pixel_span(y1, y2, height)
        mask[r0:r1, c0:c1] = True
    return mask


def _pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixels i with centre (i + 0.5) / size in [lo, hi)."""
    start = int(np.clip(np.ceil(lo * size - 0.5), 0, size))
    stop = int(np.clip(np.ceil(hi * size - 0.5), 0, size))
    return start, max(start, stop)


def vehicle_boxes(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Keep the vehicle rows (classes car/truck/bus) of padded ``[N, 4]`` / ``[N]`` arrays."""
    keep = np.isin(np.asarray(classes), VEHICLE_CLASSES)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[keep]


@dataclass
class BoxFidelity:
    """Counts summed over frames; ``summary()`` gives precision / recall / mean IoU."""

    boxes: int = 0
    recalled: int = 0
    blobs: int = 0
    true_blobs: int = 0
    iou_sum: float = 0.0
    iou_frames: int = 0

    def add(self, other: BoxFidelity) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        return {"recall": self.recalled / self.boxes if self.boxes else None,
                "precision": self.true_blobs / self.blobs if self.blobs else None,
                "mean_iou": self.iou_sum / self.iou_frames if self.iou_frames else None,
                "boxes": self.boxes, "blobs": self.blobs, "frames": self.iou_frames}


def box_fidelity_frame(prob: np.ndarray, boxes: np.ndarray, min_box_pixels: int = 12) -> BoxFidelity:
    """Score one probability map ``[H, W]`` against normalised vehicle boxes ``[N, 4]``."""
    h, w = prob.shape
    pred = prob > 0.5
    union = boxes_to_mask(boxes, h, w)
    out = BoxFidelity()
    for box in boxes:
        inside = boxes_to_mask(box[None], h, w)
        if inside.sum() >= min_box_pixels:
            out.boxes += 1
            out.recalled += int(prob[inside].mean() > 0.5)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(pred.astype(np.uint8), connectivity=8)
    for label in range(1, count):  # 0 is the background
        if stats[label, cv2.CC_STAT_AREA] < min_box_pixels:
            continue
        blob = labels == label
        out.blobs += 1
        out.true_blobs += int(union[blob].mean() >= 0.5)
    either = (pred | union).sum()
    if either:
        out.iou_sum, out.iou_frames = float((pred & union).sum() / either), 1
    return out


def grey_small(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` -> float grey ``[n, height, width]`` in [0, 1] (area resize)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="area")
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601 luma
    return (x * weights).sum(dim=1)


def frame_differences(grey: torch.Tensor) -> np.ndarray:
    """Mean |x_{t+1} - x_t| of consecutive grey frames ``[n, h, w]`` -> ``[n - 1]``."""
    if grey.shape[0] < 2:
        return np.zeros(0)
    return (grey[1:] - grey[:-1]).abs().mean(dim=(1, 2)).double().numpy()


def warp_residuals(grey: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flow-compensated change of consecutive grey frames ``[n, h, w]`` in [0, 1].

    Returns ``(residual, raw)``, each ``[n - 1]``: for every pair, the mean absolute
    difference between x_{t+1} and x_t backward-warped onto it by Farneback optical flow
    (computed from x_{t+1} to x_t, so every target pixel samples its source; borders
    replicate), and the raw mean |x_{t+1} - x_t| for reference. Deterministic (OpenCV,
    single image pair at a time).
    """
    g = grey.detach().cpu().numpy() if isinstance(grey, torch.Tensor) else np.asarray(grey)
    if g.ndim != 3:
        raise ValueError(f"warp_residuals: expected grey frames [n, h, w], got shape {g.shape}")
    n, h, w = g.shape
    if n < 2:
        return np.zeros(0), np.zeros(0)
    g = np.clip(g.astype(np.float32), 0.0, 1.0)
    u8 = np.round(g * 255.0).astype(np.uint8)
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    residual, raw = np.zeros(n - 1), np.zeros(n - 1)
    for i in range(n - 1):
        # flow[y, x] = displacement from x_{t+1} at (y, x) to its match in x_t
        flow = cv2.calcOpticalFlowFarneback(u8[i + 1], u8[i], None, pyr_scale=0.5, levels=3, winsize=9,
                                            iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
        warped = cv2.remap(g[i], cols + flow[..., 0], rows + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        residual[i] = float(np.abs(warped - g[i + 1]).mean())
        raw[i] = float(np.abs(g[i] - g[i + 1]).mean())
    return residual, raw


def wasserstein_1d(a: np.ndarray, b: np.ndarray, quantiles: int = 1000) -> float:
    """W1 between two empirical 1-D distributions: integral of |Q_a(u) - Q_b(u)| over u."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("wasserstein_1d needs two non-empty samples")
    u = (np.arange(quantiles) + 0.5) / quantiles
    return float(np.abs(np.quantile(a, u) - np.quantile(b, u)).mean())
