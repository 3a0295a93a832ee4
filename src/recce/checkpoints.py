"""Checkpoints: one `.safetensors` file per detector, whatever the detector, and importers for published weights.

The file holds the weights and, in its metadata, the detector's name, its configuration, its preprocessing, the
head type, the output names, the package version and the training provenance, so `load(path)` rebuilds any
detector alone. Files written by the first format (`recce-forgery/1`: architecture, config, extra) still load.
Nothing beyond plain tensors is ever unpickled (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from recce import __version__
from recce.detectors import Detector, DetectorConfigError, Preprocess, detector_class
from recce.detectors.base import build_dataclass
from recce.weights import (
    CheckpointError,
    check_shapes,
    is_safetensors,
    load_strict,
    read_state_dict,
    save_safetensors,
    tensor_dict,
)

__all__ = ["CheckpointError", "build", "from_official", "import_weights", "load", "read_metadata", "save"]

FORMAT = "recce-forgery/2"
LEGACY_FORMAT = "recce-forgery/1"


def unwrap(model: nn.Module) -> Detector:
    """The detector inside a DistributedDataParallel and/or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def build(name: str, config: Mapping[str, Any], preprocess: Preprocess | None = None) -> Detector:
    """A detector from its registry name and configuration mapping (as stored in a checkpoint)."""
    try:
        cls = detector_class(name)
        return cls(build_dataclass(cls.Config, config, "model"), preprocess)
    except DetectorConfigError as error:
        raise CheckpointError(str(error)) from None


def save(
    model: nn.Module,
    path: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write weights and metadata atomically; `provenance` (JSON-serialisable) records how the weights were made.

    `dtype` (e.g. torch.float16) stores the floating-point weights at that precision (half the file); they are
    cast back to the detector's precision when loaded.
    """
    detector = unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "detector": detector.name,
        "config": json.dumps(dataclasses.asdict(detector.config)),
        "preprocess": json.dumps(detector.preprocess.to_dict()),
        "head": detector.head,
        "outputs": json.dumps(["p_fake", *detector.map_kinds]),
        "version": __version__,
        "provenance": json.dumps(dict(provenance or {})),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in detector.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return save_safetensors(state, path, metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Detector name, config, preprocessing (a `Preprocess`), head, version and provenance of one of our files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if not is_safetensors(path):
        raise CheckpointError(
            f"{path}: not a recce .safetensors checkpoint (convert published weights with `recce convert`)"
        )
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"{path}: damaged safetensors file ({error})") from None
    try:
        if metadata.get("format") == LEGACY_FORMAT:
            extra = json.loads(metadata.get("extra", "{}"))
            config = json.loads(metadata["config"])
            return {
                "detector": metadata["architecture"],
                "config": config,
                "preprocess": Preprocess(input_size=int(extra.get("input_size", 299))),
                "head": "sigmoid" if config.get("num_classes", 1) == 1 else "softmax",
                "version": "0.1.0",
                "provenance": extra,
            }
        if metadata.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: safetensors file without recce metadata (convert published weights with `recce convert`)"
            )
        return {
            "detector": metadata["detector"],
            "config": json.loads(metadata["config"]),
            "preprocess": Preprocess.from_dict(json.loads(metadata["preprocess"])),
            "head": metadata["head"],
            "version": metadata["version"],
            "provenance": json.loads(metadata.get("provenance", "{}")),
        }
    except (KeyError, TypeError, ValueError, DetectorConfigError) as error:
        raise CheckpointError(f"{path}: damaged recce metadata ({error.__class__.__name__}: {error})") from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Detector:
    """Rebuild the detector a checkpoint of ours describes, load its weights, and return it in eval mode."""
    meta = read_metadata(path)
    model = build(meta["detector"], meta["config"], meta["preprocess"])
    check_shapes(path, model.state_dict())  # from the header, before any tensor is read
    load_strict(model, read_state_dict(path), path)
    return model.to(map_location).eval()


def import_weights(
    name: str, state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike, **options: Any
) -> Detector:
    """A detector built from published weights of its kind (the authors' files, DeepfakeBench's), in eval mode."""
    if isinstance(state_dict_or_path, Mapping):
        source = "state dict"
        state = tensor_dict(state_dict_or_path, source)
    else:
        source = str(state_dict_or_path)
        state = read_state_dict(state_dict_or_path)
    try:
        cls = detector_class(name)
    except DetectorConfigError as error:
        raise CheckpointError(str(error)) from None
    return cls.from_reference(state, source, **options)


def from_official(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike,
    num_classes: int | None = None,
    **options: Any,
) -> Detector:
    """RECCE from the official weights or DeepfakeBench's RecceDetector weights (see `Recce.from_reference`)."""
    return import_weights("recce", state_dict_or_path, num_classes=num_classes, **options)
