"""Face panels for the web app: the frame with the face's box, the crop, and each of the detector's named maps.

Maps are generic: an H x W x 3 uint8 array is shown as an image, an H x W float array as a heatmap scaled to its
own maximum (written under its name). Drawn with OpenCV, a few milliseconds per panel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from recce.engine.evaluate import atomic_path

TILE = 192  # tile height in pixels
LABEL = 26  # label strip above each tile
GAP = 8
BOX_COLOUR = (230, 40, 40)  # RGB


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((LABEL, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    return np.vstack([strip, tile])


def _frame_tile(frame: np.ndarray, box: Sequence[float]) -> np.ndarray:
    scale = TILE / frame.shape[0]
    width = max(1, round(frame.shape[1] * scale))
    tile = cv2.resize(frame, (width, TILE), interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = (round(v * scale) for v in box)
    cv2.rectangle(tile, (x1, y1), (x2, y2), BOX_COLOUR, 2, cv2.LINE_AA)
    return tile


def _map_tile(values: np.ndarray) -> tuple[np.ndarray, str]:
    """(RGB tile, caption suffix) of one map."""
    if values.ndim == 3:
        return cv2.resize(np.ascontiguousarray(values, np.uint8), (TILE, TILE), interpolation=cv2.INTER_LINEAR), ""
    heat = cv2.resize(np.asarray(values, np.float32), (TILE, TILE), interpolation=cv2.INTER_LINEAR)
    top = float(heat.max())
    scaled = np.clip(heat / top if top > 0 else heat, 0.0, 1.0)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB), f" (max {top:.3f})"


def face_panel(frame: np.ndarray, box: Sequence[float], crop: np.ndarray, maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """One row of labelled tiles as an RGB uint8 image."""
    tiles = [
        _label(_frame_tile(frame, box), "frame"),
        _label(cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_LINEAR), "face crop"),
    ]
    for name, values in maps.items():
        tile, suffix = _map_tile(values)
        tiles.append(_label(tile, f"{name}{suffix}"))
    gap = np.full((TILE + LABEL, GAP, 3), 255, np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.hstack(row)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the PNG")
