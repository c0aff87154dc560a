"""Box utilities: normalised ``x1, y1, x2, y2`` boxes in [0, 1] (docs/architecture.md,
"Batch contract").

Boxes are numpy arrays of shape ``[..., 4]``. Pixel boxes use the convention that the
image spans ``[0, W] x [0, H]`` (pixel edges, not centres), so normalising is a division.
Every validator names the file, field and offending value (``DriveSimInputError``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from drivesim.data.labels import NUM_CLASSES, PAD_CLASS
from drivesim.utils.io import DriveSimInputError

# Coordinates within this distance outside [0, 1] are rounding noise from converters and are
# clipped silently; anything further is a labelling bug and is rejected.
BOX_TOLERANCE = 1e-3

# RGB colours per class id (index 0 = padding, never drawn).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (0, 200, 255), (255, 140, 0), (255, 220, 0),
    (255, 60, 200), (120, 255, 60), (200, 200, 200),
)


def normalize_boxes(boxes_px: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel ``[..., 4]`` boxes -> normalised ``[..., 4]`` float32 (no clipping)."""
    scale = np.array([width, height, width, height], dtype=np.float64)
    return (np.asarray(boxes_px, dtype=np.float64) / scale).astype(np.float32)


def denormalize_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised ``[..., 4]`` boxes -> pixel ``[..., 4]`` float32."""
    scale = np.array([width, height, width, height], dtype=np.float64)
    return (np.asarray(boxes, dtype=np.float64) * scale).astype(np.float32)


def clip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Clip normalised boxes to [0, 1] (returns a new float32 array)."""
    return np.clip(np.asarray(boxes, dtype=np.float32), 0.0, 1.0)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas ``[...]`` of ``[..., 4]`` boxes (0 for inverted boxes)."""
    b = np.asarray(boxes, dtype=np.float32)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def validate_boxes(boxes: object, *, path: str | os.PathLike | None = None, field: str = "boxes",
                   tol: float = BOX_TOLERANCE) -> np.ndarray:
    """Check ``[n, 4]`` normalised boxes and return them clipped to [0, 1] as float32.

    Rejects a wrong shape, NaN/inf, coordinates more than ``tol`` outside [0, 1] and
    inverted boxes (x2 < x1 or y2 < y1).
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DriveSimInputError(f"boxes must be numbers: {err}", path=path, field=field,
                                 value=boxes) from err
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DriveSimInputError(f"boxes must have shape [n, 4], got {list(arr.shape)}",
                                 path=path, field=field, value=boxes)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DriveSimInputError(f"box {i} is NaN or infinite", path=path, field=f"{field}[{i}]",
                                 value=arr[i].tolist())
    outside = ((arr < -tol) | (arr > 1 + tol)).any(axis=1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DriveSimInputError("box coordinates must be normalised to [0, 1]", path=path,
                                 field=f"{field}[{i}]", value=arr[i].tolist())
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise DriveSimInputError("box must satisfy x1 <= x2 and y1 <= y2", path=path,
                                 field=f"{field}[{i}]", value=arr[i].tolist())
    return clip_boxes(arr)


def validate_classes(classes: object, n: int, *, path: str | os.PathLike | None = None,
                     field: str = "classes") -> np.ndarray:
    """Check ``[n]`` class ids are integers in 1..NUM_CLASSES-1 (0 is padding only)."""
    arr = np.asarray(classes)
    if arr.shape != (n,) or (n and not np.issubdtype(arr.dtype, np.integer)):
        raise DriveSimInputError(f"expected {n} integer class ids", path=path, field=field,
                                 value=classes)
    bad = (arr < 1) | (arr >= NUM_CLASSES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DriveSimInputError(f"class id must be in 1..{NUM_CLASSES - 1}", path=path,
                                 field=f"{field}[{i}]", value=int(arr[i]))
    return arr.astype(np.int64)


@dataclass(frozen=True)
class PaddedBoxes:
    """Fixed-size box set: ``boxes [N, 4]``, ``classes [N]``, ``ids [N]``, ``mask [N]`` bool."""

    boxes: np.ndarray
    classes: np.ndarray
    ids: np.ndarray
    mask: np.ndarray


def pad_boxes(boxes: np.ndarray, classes: np.ndarray, ids: np.ndarray, max_boxes: int,
              *, warn: bool = True) -> PaddedBoxes:
    """Pad (zeros, class 0) or truncate ``n`` boxes to ``max_boxes``.

    Truncation keeps the ``max_boxes`` largest boxes (by area; stable order among ties) and
    warns, because silently losing road users changes what the model is conditioned on.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = boxes.shape[0]
    if n > max_boxes:
        if warn:
            warnings.warn(f"{n} boxes > max_boxes={max_boxes}: keeping the {max_boxes} largest",
                          stacklevel=2)
        keep = np.sort(np.argsort(-box_areas(boxes), kind="stable")[:max_boxes])
        boxes, classes, ids, n = boxes[keep], classes[keep], ids[keep], max_boxes
    out = PaddedBoxes(np.zeros((max_boxes, 4), np.float32), np.zeros(max_boxes, np.int64),
                      np.zeros(max_boxes, np.int64), np.zeros(max_boxes, bool))
    out.boxes[:n], out.classes[:n], out.ids[:n], out.mask[:n] = boxes, classes, ids, True
    return out


@dataclass(frozen=True)
class ResizeCrop:
    """Resize ``src`` (h, w) to cover ``out`` (h, w) keeping the aspect ratio, then crop.

    ``resized`` is the size after resizing; ``top``/``left`` the crop offset in it.
    """

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    top: int
    left: int
    out_hw: tuple[int, int]

    @classmethod
    def center(cls, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> ResizeCrop:
        (sh, sw), (oh, ow) = src_hw, out_hw
        scale = max(oh / sh, ow / sw)
        rh, rw = max(oh, round(sh * scale)), max(ow, round(sw * scale))
        return cls(src_hw, (rh, rw), (rh - oh) // 2, (rw - ow) // 2, out_hw)

    def apply_image(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``[h, w, 3]`` -> ``[out_h, out_w, 3]``."""
        (rh, rw), (oh, ow) = self.resized_hw, self.out_hw
        if (rh, rw) != rgb.shape[:2]:
            shrink = rh < rgb.shape[0]
            rgb = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return rgb[self.top:self.top + oh, self.left:self.left + ow]

    def apply_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised ``[..., 4]`` source boxes -> (normalised output boxes, kept mask ``[...]``).

        Resizing the whole frame leaves normalised coordinates unchanged; the crop maps
        ``x' = (x * rw - left) / ow`` (same for y). Boxes left with zero area are not kept.
        """
        (rh, rw), (oh, ow) = self.resized_hw, self.out_hw
        scale = np.array([rw / ow, rh / oh, rw / ow, rh / oh], dtype=np.float64)
        shift = np.array([self.left / ow, self.top / oh, self.left / ow, self.top / oh])
        out = clip_boxes(np.asarray(boxes, dtype=np.float64) * scale - shift)
        return out, box_areas(out) > 0


def draw_boxes(rgb: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               track_ids: np.ndarray | None = None, *, thickness: int = 1) -> np.ndarray:
    """Return a copy of uint8 ``[H, W, 3]`` RGB with boxes in class colours and track ids.

    Padding entries (class 0) are skipped. The input frame is not modified.
    """
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    px = np.round(denormalize_boxes(np.asarray(boxes).reshape(-1, 4), w, h)).astype(int)
    classes = np.asarray(classes).reshape(-1)
    ids = np.zeros_like(classes) if track_ids is None else np.asarray(track_ids).reshape(-1)
    for (x1, y1, x2, y2), cls, tid in zip(px, classes, ids):
        if cls == PAD_CLASS:
            continue
        colour = CLASS_COLOURS[int(cls) % len(CLASS_COLOURS)]
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thickness)
        if tid:
            cv2.putText(out, str(int(tid)), (x1 + 1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_PLAIN,
                        0.6, colour, 1, cv2.LINE_AA)
    return out
