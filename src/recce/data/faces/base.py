"""What every face detector returns, how one face is picked per frame, and how a detector is chosen."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("recce")

WEIGHTS_ENV = "RECCE_RETINAFACE_WEIGHTS"
DETECTOR_NAMES = ("auto", "haar", "retinaface", "retinaface-mobilenet0.25", "retinaface-resnet50")


@dataclass(frozen=True)
class Face:
    """One detected face; box corners and landmarks are in frame pixels and may lie outside the frame."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@runtime_checkable
class FaceDetector(Protocol):
    """Detects faces in RGB uint8 HxWx3 frames; each frame's faces come sorted by score, best first."""

    name: str

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]: ...


def check_frame(frame: np.ndarray) -> None:
    """Reject anything but an RGB uint8 HxWx3 array, so a wrong input fails loudly rather than silently."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        described = (
            f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        )
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got a {described}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"expected a non-empty frame, got shape {frame.shape}")


class WholeImage:
    """For ready-made face crops (what the official `inference.py` scores): the whole image is the face."""

    name = "none"

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        for frame in frames:
            check_frame(frame)
        return [[Face(box=(0.0, 0.0, float(f.shape[1]), float(f.shape[0])), score=1.0)] for f in frames]


def choose_face(faces: Sequence[Face], policy: str = "score", min_score: float = 0.0) -> Face | None:
    """The face to crop: the most confident ("score") or the biggest ("largest") of those >= min_score."""
    candidates = [face for face in faces if face.score >= min_score]
    if policy == "score":
        key = _by_score
    elif policy == "largest":
        key = _by_area
    else:
        raise ValueError(f"unknown face policy {policy!r}; use 'score' or 'largest'")
    return max(candidates, key=key, default=None)


def _by_score(face: Face) -> tuple[float, float]:
    return face.score, face.area


def _by_area(face: Face) -> tuple[float, float]:
    return face.area, face.score


def build_detector(
    name: str = "auto",
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    score_threshold: float = 0.6,
    batch_size: int = 16,
) -> FaceDetector:
    """Make a detector by name; "auto" prefers RetinaFace (the paper's detector) when it has weights.

    RetinaFace weights come from `weights` or the RECCE_RETINAFACE_WEIGHTS environment variable; the variant
    (mobilenet0.25 or resnet50) is read from the checkpoint's keys. Haar needs no weights and ignores
    `device` and `batch_size`. Faces scoring below `score_threshold` are dropped by either detector.
    """
    if name not in DETECTOR_NAMES:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
    weights = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    # The detector modules import this one, so they are imported here rather than at the top.
    if name == "haar" or (name == "auto" and weights is None):
        from recce.data.faces.haar import HaarDetector

        if name == "auto":
            logger.info("face detector: haar (no RetinaFace weights given and %s is not set)", WEIGHTS_ENV)
        return HaarDetector(score_threshold=score_threshold)
    if weights is None:
        raise ValueError(
            f"face detector {name!r} needs RetinaFace weights (mobilenet0.25_Final.pth or "
            f"Resnet50_Final.pth): pass weights or set {WEIGHTS_ENV}"
        )
    from recce.data.faces.retinaface import RetinaFaceDetector, load_retinaface
    from recce.engine.runtime import resolve_device

    resolved = resolve_device(device)
    model = load_retinaface(weights, device=resolved)
    detector = RetinaFaceDetector(model, score_threshold=score_threshold, batch_size=batch_size)
    if name not in ("auto", "retinaface") and name != detector.name:
        raise ValueError(f"{Path(weights)}: holds {detector.name} weights, but {name} was asked for")
    if name == "auto":
        logger.info("face detector: %s from %s on %s", detector.name, weights, resolved)
    return detector
