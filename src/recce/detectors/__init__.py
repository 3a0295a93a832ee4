"""Forgery detectors: RECCE and the comparison detectors of the paper's tables, behind one interface.

Each detector is one module of this package that registers itself; `list_detectors()` names them and
`create_detector(name, **config)` builds one.
"""

from recce.detectors.base import Detector, DetectorConfigError, DetectorOutput, Preprocess, fake_probability
from recce.detectors.registry import create_detector, detector_class, list_detectors, register_detector

__all__ = [
    "Detector",
    "DetectorConfigError",
    "DetectorOutput",
    "Preprocess",
    "create_detector",
    "detector_class",
    "fake_probability",
    "list_detectors",
    "register_detector",
]
