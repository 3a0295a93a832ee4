"""Face crops: a square enlarged around the detected box, resized to the classifier's input size."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from recce.data.faces.base import check_frame

EDGE_MODES = ("clip", "pad")


def _square(box: Sequence[float], scale: float) -> tuple[int, int, int, int]:
    """Integer square (x1, y1, x2, y2) of side round(scale * max(w, h)) centred on the box, unclipped."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"face box {tuple(box)} has no area")
    if scale <= 0:
        raise ValueError(f"crop scale must be positive, got {scale}")
    side = max(1, round(scale * max(x2 - x1, y2 - y1)))
    left = round((x1 + x2) / 2 - side / 2)
    top = round((y1 + y2) / 2 - side / 2)
    return left, top, left + side, top + side


def crop_box(box: Sequence[float], frame_hw: tuple[int, int], scale: float = 1.3) -> tuple[int, int, int, int]:
    """The region (x1, y1, x2, y2) cut from the frame: the enlarged square, clipped to the frame.

    It stays square unless the square crosses a frame edge.
    """
    height, width = frame_hw
    left, top, right, bottom = _square(box, scale)
    clipped = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"face box {tuple(box)} lies outside the {width}x{height} frame")
    return clipped


def crop_face(
    frame: np.ndarray, box: Sequence[float], scale: float = 1.3, size: int = 299, edge: str = "clip"
) -> np.ndarray:
    """A size x size RGB crop of the square of side scale*max(w, h) around the face box.

    edge="clip" cuts only the in-frame part and resizes it, stretching it when the square crossed a frame edge
    (as the paper's pipeline did); edge="pad" fills the out-of-frame part with black so the face keeps its
    aspect ratio.
    """
    if edge not in EDGE_MODES:
        raise ValueError(f"unknown crop edge mode {edge!r}; use 'clip' or 'pad'")
    check_frame(frame)
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = crop_box(box, (height, width), scale)
    region = frame[y1:y2, x1:x2]
    if edge == "pad":
        left, top, right, bottom = _square(box, scale)
        region = cv2.copyMakeBorder(
            region, y1 - top, bottom - y2, x1 - left, right - x2, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
    if region.shape[:2] == (size, size):
        return region.copy()
    shrinking = region.shape[0] > size or region.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)


def crop_landmarks(
    points: np.ndarray, box: Sequence[float], frame_hw: tuple[int, int], scale: float = 1.3, edge: str = "clip"
) -> np.ndarray:
    """Frame-pixel (x, y) points as `crop_face` places them in its crop, normalised to [0, 1] of the crop's side."""
    if edge not in EDGE_MODES:
        raise ValueError(f"unknown crop edge mode {edge!r}; use 'clip' or 'pad'")
    left, top, right, bottom = crop_box(box, frame_hw, scale) if edge == "clip" else _square(box, scale)
    origin = np.array([left, top], dtype=np.float32)
    extent = np.array([right - left, bottom - top], dtype=np.float32)
    return (np.asarray(points, dtype=np.float32).reshape(-1, 2) - origin) / extent
