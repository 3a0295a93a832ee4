"""Checkpoints: this project's `.safetensors` format and importers for official / DeepfakeBench RECCE weights.

Our format is one safetensors file: the weights plus, in its metadata, the architecture and model configuration
(and optional facts such as the training input size), so `load(path)` rebuilds the right model alone. Nothing is
ever unpickled beyond plain tensors (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

from recce.models import Recce, RecceConfig, Xception, XceptionConfig
from recce.weights import CheckpointError, is_safetensors, mismatch, read_state_dict, strip_prefix, tensor_dict

__all__ = ["CheckpointError", "build", "from_official", "load", "read_metadata", "read_state_dict", "save"]

FORMAT = "recce-forgery/1"
ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "recce": (Recce, RecceConfig),
    "xception": (Xception, XceptionConfig),
}


def build(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """Construct a model from its architecture name and configuration mapping."""
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    model_class, config_class = ARCHITECTURES[architecture]
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"unknown {architecture} configuration keys: {', '.join(unknown)}")
    return model_class(**config)


def save(model: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write weights + configuration atomically. `extra` (JSON-serialisable) is stored too, e.g. the input size."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "architecture": model.architecture,
        "config": json.dumps(dataclasses.asdict(model.config)),
        "extra": json.dumps(dict(extra or {})),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    safetensors.torch.save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Architecture, config and extra facts of one of our checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if not is_safetensors(path):
        raise CheckpointError(
            f"{path}: not a recce .safetensors checkpoint (convert official weights with `recce convert`)"
        )
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"{path}: damaged safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: safetensors file without recce metadata (convert official weights with `recce convert`)"
        )
    return {
        "architecture": metadata["architecture"],
        "config": json.loads(metadata["config"]),
        "extra": json.loads(metadata.get("extra", "{}")),
    }


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint of ours describes, load its weights, and return it in eval mode."""
    meta = read_metadata(path)
    model = build(meta["architecture"], meta["config"])
    _load_strict(model, read_state_dict(path), path)
    model.checkpoint_extra = meta["extra"]
    return model.to(map_location).eval()


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    expected = model.state_dict()
    problem = mismatch(expected, state)
    if problem:
        raise CheckpointError(f"{source}: weights do not fit a {model.architecture} model: {problem}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def from_official(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike,
    num_classes: int | None = None,
    **model_options: Any,
) -> Recce:
    """Build a `Recce` from official RECCE weights or DeepfakeBench's RecceDetector weights.

    Accepts a `torch.save`d dict with the weights under "model" or a bare state dict, with or without a `module.`
    prefix, or DeepfakeBench's `model.`-prefixed keys (its unused `backbone.*` is ignored). The timm 1000-way head
    `encoder.fc.*` the official model saves is dropped. `num_classes` is inferred from the head when not given;
    `model_options` go to the `Recce` constructor (e.g. `drop_rate`).
    """
    if isinstance(state_dict_or_path, Mapping):
        source = "state dict"
        state = tensor_dict(state_dict_or_path, source)
    else:
        source = str(state_dict_or_path)
        state = read_state_dict(state_dict_or_path)
    state = strip_prefix(state)
    if any(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    state = {k: v for k, v in state.items() if not k.startswith("encoder.fc.")}
    head = state.get("fc.weight")
    if head is None:
        raise CheckpointError(f"{source}: no RECCE classifier head (fc.weight) found; is this a RECCE checkpoint?")
    inferred = head.shape[0]
    if num_classes is not None and num_classes != inferred:
        raise CheckpointError(f"{source}: the head has {inferred} outputs, but num_classes={num_classes} was asked")
    if inferred not in (1, 2):
        raise CheckpointError(f"{source}: the head has {inferred} outputs; RECCE checkpoints have 1 or 2")
    model = Recce(num_classes=inferred, **model_options)
    _load_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source)
    return model.eval()
