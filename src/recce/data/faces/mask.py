"""Soft face-attention masks from five landmarks, as Add-Net (ADDNet-2D) multiplies into its features.

The WildDeepfake paper shows its masks only as figures: black background, a mid-grey face, brighter eyes with
brows, nose and mouth, smooth edges. Its recipe is not published, so every shape and value here is this project's
choice, held in `MaskShape`. Landmarks are five (x, y) points in RetinaFace's order (left eye, right eye, nose,
left mouth corner, right mouth corner; "left" as seen in the image) in crop coordinates normalised to [0, 1].
Lengths are in units of the face itself: `d`, the distance between the eyes, across the face, and `h`, the height
from the eyes' midpoint down to the mouth's, along it; the face's axes follow the eye line, so a tilted face gets
a tilted mask.

A face detector without landmarks (OpenCV's Haar cascade) gets them approximated from its box by a canonical
layout (`box_landmarks`), recorded as such (`LANDMARKS_APPROXIMATED`) wherever landmarks are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from recce.data.faces.base import Face

LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")
LANDMARKS_DETECTED = "detected"  # the face detector's own landmarks (RetinaFace)
LANDMARKS_APPROXIMATED = "box"  # placed in the face box by `CANONICAL_LANDMARKS` (Haar has none)
LANDMARKS_ASSUMED = "crop"  # no face found in a crop: placed in the box the crop is assumed to be centred on

# Where the five points sit in a frontal face box of OpenCV's Haar cascade, as fractions of the box (x, y);
# measured by eye on the test photos (astronaut, Grace Hopper), a rough frontal-face average.
CANONICAL_LANDMARKS = ((0.31, 0.40), (0.69, 0.40), (0.50, 0.60), (0.35, 0.78), (0.65, 0.78))


@dataclass(frozen=True)
class MaskShape:
    """The mask's regions (ellipses in the face's frame) and grey levels; all this project's choices."""

    face_value: float = 0.5  # the face region's grey level
    eye_value: float = 1.0  # eyes with their brows
    nose_value: float = 0.85
    mouth_value: float = 1.0
    face_width: float = 1.05  # half-width of the face ellipse, in d
    face_top: float = 1.0  # forehead above the eyes, in h
    face_bottom: float = 1.6  # chin below the eyes, in h
    eye_width: float = 0.32  # half-width of each eye-and-brow ellipse, in d
    eye_height: float = 0.28  # its half-height, in h
    eye_lift: float = 0.12  # its centre above the eye, in h (so it covers the brow)
    nose_width: float = 0.22  # half-width of the nose ellipse (eye midpoint to nose tip), in d
    nose_margin: float = 0.1  # the nose ellipse reaches this far beyond the tip, in h
    mouth_margin: float = 0.1  # the mouth ellipse reaches this far beyond each corner, in d
    mouth_height: float = 0.2  # its half-height, in h
    blur: float = 0.1  # Gaussian blur of the edges: sigma in d

    def __post_init__(self) -> None:
        values = (self.face_value, self.eye_value, self.nose_value, self.mouth_value)
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"mask grey levels must lie in [0, 1], got {values}")
        sizes = {k: v for k, v in vars(self).items() if not k.endswith("_value")}
        if any(v < 0 for v in sizes.values()):
            raise ValueError(f"mask sizes must not be negative, got {sizes}")


def as_landmarks(values: Sequence[float] | np.ndarray, where: str = "landmarks") -> np.ndarray:
    """Five (x, y) points as a 5 x 2 float32 array from 10 numbers or 5 pairs; anything else is one clear error."""
    points = np.asarray(values, dtype=np.float32)
    if points.size != 10 or not np.isfinite(points).all():
        raise ValueError(f"{where}: expected 5 finite (x, y) landmarks, got {np.asarray(values).tolist()!r}")
    return points.reshape(5, 2)


def box_landmarks(box: Sequence[float]) -> np.ndarray:
    """The canonical five points placed in a face box (x1, y1, x2, y2), in the box's coordinates' units."""
    x1, y1, x2, y2 = (float(v) for v in box)
    layout = np.asarray(CANONICAL_LANDMARKS, dtype=np.float32)
    return np.stack([x1 + layout[:, 0] * (x2 - x1), y1 + layout[:, 1] * (y2 - y1)], axis=1)


def face_landmarks(face: Face) -> tuple[np.ndarray, str]:
    """A face's five points in frame pixels and where they come from: detected, or approximated from the box."""
    if face.landmarks is not None:
        return as_landmarks(face.landmarks), LANDMARKS_DETECTED
    return box_landmarks(face.box), LANDMARKS_APPROXIMATED


def render_mask(landmarks: Sequence[float] | np.ndarray, size: int, shape: MaskShape = MaskShape()) -> np.ndarray:
    """The size x size float32 mask in [0, 1] of a crop whose normalised landmarks are given."""
    points = as_landmarks(landmarks) * size
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    across = right_eye - left_eye
    d = max(float(np.hypot(*across)), 1e-3 * size)
    ex = across / d if np.hypot(*across) > 0 else np.array([1.0, 0.0], dtype=np.float32)
    ey = np.array([-ex[1], ex[0]], dtype=np.float32)  # down the face (image y grows downwards)
    eyes = (left_eye + right_eye) / 2
    mouth = (left_mouth + right_mouth) / 2
    h = max(float((mouth - eyes) @ ey), 0.3 * d)  # a degenerate layout still gets a face-shaped mask

    mask = np.zeros((size, size), dtype=np.float32)

    def paint(centre: np.ndarray, half_across: float, half_along: float, value: float) -> None:
        reach = max(half_across, half_along)  # only the pixels of the ellipse's bounding square are tested
        x0, y0 = (max(0, int(np.floor(c - reach))) for c in centre)
        x1, y1 = (min(size, int(np.ceil(c + reach)) + 1) for c in centre)
        if x1 <= x0 or y1 <= y0:
            return
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - centre[0]
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - centre[1]
        u = (xs * ex[0] + ys * ex[1]) / max(half_across, 1e-6)
        v = (xs * ey[0] + ys * ey[1]) / max(half_along, 1e-6)
        window = mask[y0:y1, x0:x1]
        np.maximum(window, np.where(u * u + v * v <= 1.0, np.float32(value), np.float32(0)), out=window)

    s = shape
    face_centre = eyes + ey * h * (s.face_bottom - s.face_top) / 2
    paint(face_centre, s.face_width * d, h * (s.face_top + s.face_bottom) / 2, s.face_value)
    for eye in (left_eye, right_eye):
        paint(eye - ey * s.eye_lift * h, s.eye_width * d, s.eye_height * h, s.eye_value)
    nose_length = max(float((nose - eyes) @ ey), 0.0)
    paint((eyes + nose) / 2, s.nose_width * d, nose_length / 2 + s.nose_margin * h, s.nose_value)
    mouth_half = float(np.hypot(*(right_mouth - left_mouth))) / 2
    paint(mouth, mouth_half + s.mouth_margin * d, s.mouth_height * h, s.mouth_value)
    if s.blur > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=s.blur * d, borderType=cv2.BORDER_CONSTANT)
    return np.clip(mask, 0.0, 1.0)
