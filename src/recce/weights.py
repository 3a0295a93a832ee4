"""Reading weight files safely, and saying precisely why weights do not fit a network.

Shared by RECCE checkpoints, ImageNet Xception weights and RetinaFace weights. Nothing beyond plain tensors is
ever unpickled (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch


class CheckpointError(ValueError):
    """A file that is not usable weights; the message names the file and the problem, on one line."""


def is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a `torch.save`d state dict (bare, or under "model" / "state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if is_safetensors(path):
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
    return tensor_dict(obj, path)


def tensor_dict(obj: Any, source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object (bare, or under "model" / "state_dict" / "model_state_dict")."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state dict inside (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: the state dict holds no tensors")
    return tensors


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in state.items()}


def mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """None when `given` fits `expected` exactly, else a one-line summary of missing/unexpected/reshaped keys."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = [
        f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", reshaped))
        if keys
    ]
    return "; ".join(parts) or None


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load `state` into `model` exactly (cast to the model's dtypes), or one line on what does not fit."""
    expected = model.state_dict()
    problem = mismatch(expected, state)
    if problem:
        name = getattr(model, "name", "") or type(model).__name__
        raise CheckpointError(f"{source}: weights do not fit a {name} detector: {problem}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
