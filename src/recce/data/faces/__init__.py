"""Face detection (RetinaFace, Haar) and face crops for the RECCE pipeline."""

from recce.data.faces.base import Face, FaceDetector, WholeImage, build_detector, choose_face
from recce.data.faces.crop import crop_box, crop_face
from recce.data.faces.haar import HaarDetector

# RetinaFace needs torch; importing it only when one of its names is asked for keeps a face-free job (an
# extraction rerun with nothing left to do, `--face-detector none|haar`) from paying torch's import (0.9 GB here).
_RETINAFACE = (
    "CheckpointError",
    "RetinaFace",
    "RetinaFaceDetector",
    "decode_boxes",
    "decode_landmarks",
    "load_retinaface",
    "postprocess",
    "prior_boxes",
)


def __getattr__(name: str) -> object:
    if name in _RETINAFACE:
        from recce.data.faces import retinaface

        return getattr(retinaface, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Face",
    "FaceDetector",
    "HaarDetector",
    "RetinaFace",
    "RetinaFaceDetector",
    "WholeImage",
    "build_detector",
    "choose_face",
    "crop_box",
    "crop_face",
    "decode_boxes",
    "decode_landmarks",
    "load_retinaface",
    "postprocess",
    "prior_boxes",
]
