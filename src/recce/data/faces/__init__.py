"""Face detection (RetinaFace, Haar) and face crops for the RECCE pipeline."""

from recce.data.faces.base import Face, FaceDetector, WholeImage, build_detector, choose_face
from recce.data.faces.crop import crop_box, crop_face
from recce.data.faces.haar import HaarDetector
from recce.data.faces.retinaface import (
    CheckpointError,
    RetinaFace,
    RetinaFaceDetector,
    decode_boxes,
    decode_landmarks,
    load_retinaface,
    postprocess,
    prior_boxes,
)

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
