"""OpenCV's frontal-face Haar cascade: the fallback detector that needs no downloaded weights."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from recce.data.faces.base import Face, check_frame

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class HaarDetector:
    """FaceDetector on OpenCV's bundled Viola-Jones cascade; coarser boxes than RetinaFace and no landmarks.

    Score: detectMultiScale3 reports, per detection, the raw boosted sum of the cascade's last stage
    (levelWeights, about -3 to +6 for the default cascade; larger means more face-like). It is mapped into
    (0, 1) with the logistic function, so 0 maps to 0.5 and typical clear faces (weights 4 to 6) score above
    0.98. It ranks faces within a frame; it is not a calibrated probability.
    """

    name = "haar"

    def __init__(
        self,
        score_threshold: float = 0.6,
        min_face_fraction: float = 0.1,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
    ) -> None:
        self.score_threshold = score_threshold
        self.min_face_fraction = min_face_fraction
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascades out of the main package
            raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascades; install opencv-python-headless 4.x")
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load its bundled {CASCADE_FILE} from {cv2.data.haarcascades}")

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(frame) for frame in frames]

    def _detect_one(self, frame: np.ndarray) -> list[Face]:
        check_frame(frame)
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        # The smallest face searched is a fraction of the short side: tiny windows cost most, mostly misfire.
        min_side = max(24, round(self.min_face_fraction * min(gray.shape)))
        rects, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        faces = [
            Face(
                box=(float(x), float(y), float(x + w), float(y + h)),
                score=float(1.0 / (1.0 + np.exp(-weight))),
            )
            for (x, y, w, h), weight in zip(np.reshape(rects, (-1, 4)), np.ravel(weights), strict=True)
        ]
        faces = [face for face in faces if face.score >= self.score_threshold]
        return sorted(faces, key=lambda face: face.score, reverse=True)
