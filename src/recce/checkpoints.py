"""Checkpoints: this project's `.safetensors` format and importers for official / DeepfakeBench RECCE weights.

Our format is one safetensors file: the weights plus, in its metadata, the architecture and model configuration
(and optional facts such as the training input size), so `load(path)` rebuilds the right model alone. Nothing is
ever unpickled beyond plain tensors (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from recce.models import Recce, RecceConfig, Xception, XceptionConfig

FORMAT = "recce-forgery/1"
ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "recce": (Recce, RecceConfig),
    "xception": (Xception, XceptionConfig),
}


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and the problem."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a `torch.save`d state dict (bare, or under "model" / "state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if _is_safetensors(path):
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as error:
            raise CheckpointError(f"{path}: damaged safetensors file ({error})") from None
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint (its zip directory is missing)")
    if head not in (b"PK", b"\x80\x02"):  # torch.save zip archive, or the legacy pickle format
        raise CheckpointError(f"{path}: not a PyTorch checkpoint nor a safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("Unsupported global:")[-1].strip().splitlines()[0][:160]
        raise CheckpointError(
            f"{path}: refused to load, it holds pickled objects other than plain tensors ({reason})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated/corrupt ({reason})") from None
    return _tensor_dict(obj, path)


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"


def _tensor_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict inside (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the state dict holds no tensors")
    return tensors


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
    if not _is_safetensors(path):
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
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(f"{source}: weights do not fit a {model.architecture} model: {'; '.join(parts)}")
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
        state = _tensor_dict(state_dict_or_path, Path(source))
    else:
        source = str(state_dict_or_path)
        state = read_state_dict(state_dict_or_path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
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
