"""The registry of forgery detectors: `register_detector` on each class, `create_detector(name, **config)`."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from recce.detectors.base import Detector, DetectorConfigError, Preprocess, build_dataclass

_DETECTORS: dict[str, type[Detector]] = {}
_NOT_DETECTORS = {"base", "registry", "layers"}


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector known by its `name`."""
    if not cls.name or cls.name in _DETECTORS:
        raise ValueError(f"detector name {cls.name!r} is empty or already registered")
    _DETECTORS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every detector module of this package once (each registers itself)."""
    import recce.detectors as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_DETECTORS and not module.name.startswith("_"):
            importlib.import_module(f"recce.detectors.{module.name}")


def list_detectors() -> list[str]:
    _discover()
    return list(_DETECTORS)


def detector_class(name: str) -> type[Detector]:
    _discover()
    if name not in _DETECTORS:
        raise DetectorConfigError(f"unknown detector {name!r} (known: {', '.join(_DETECTORS)})")
    return _DETECTORS[name]


def create_detector(
    name: str, *, pretrained: str | None = None, preprocess: Preprocess | None = None, **config: Any
) -> Detector:
    """A detector from its name and `Config` values; `pretrained` loads the backbone's ImageNet weights."""
    cls = detector_class(name)
    detector = cls(build_dataclass(cls.Config, config, "model"), preprocess)
    if pretrained:
        detector.load_pretrained(pretrained)
    return detector
