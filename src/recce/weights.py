"""Reading weight files safely, and saying precisely why weights do not fit a network.

Shared by RECCE checkpoints, training states, ImageNet Xception weights and RetinaFace weights. Nothing beyond
plain tensors is ever unpickled (`torch.load(..., weights_only=True)`), and a small hostile file cannot make us
allocate much: `torch.save` archives with compressed records are refused and the rest are memory-mapped (a
tensor is read when used, after its shape was checked), safetensors shapes can be checked from the header
alone (`check_shapes`), and metadata values are checked against plausible ranges (`check_metadata`).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

# plausible values of the facts a checkpoint's metadata may state; anything outside is a forged or broken file
METADATA_RANGES: dict[str, tuple[int, int]] = {"input_size": (16, 1024), "num_classes": (1, 2)}


class CheckpointError(ValueError):
    """A file that is not usable weights; the message names the file and the problem, on one line."""


def is_safetensors(path: Path) -> bool:
    head = _head(path, 9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a `torch.save`d state dict (bare, or under "model" / "state_dict")."""
    path = Path(path)
    _check_exists(path)
    if is_safetensors(path):
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as error:
            raise CheckpointError(f"{path}: damaged safetensors file ({error})") from None
    return tensor_dict(load_torch_file(path), path)


def load_torch_file(path: str | os.PathLike, mmap: bool = True) -> Any:
    """A `torch.save`d object holding only plain data and tensors; anything else is a one-line CheckpointError.

    Zip archives (every torch.save since PyTorch 1.6) are refused when a record is compressed (torch.save never
    compresses, so a 47 MB file cannot inflate to gigabytes while loading) and memory-mapped unless `mmap` is
    False (for state that is updated in place and outlives the file, such as optimiser moments).
    """
    path = Path(path)
    _check_exists(path)
    head = _head(path, 2)
    if head == b"PK" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint (its zip directory is missing)")
    if head not in (b"PK", b"\x80\x02"):  # torch.save zip archive, or the legacy pickle format
        raise CheckpointError(f"{path}: not a PyTorch checkpoint nor a safetensors file")
    if head == b"PK":
        _check_records(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head == b"PK")
    except pickle.UnpicklingError as error:
        reason = str(error).split("Unsupported global:")[-1].strip().splitlines()[0][:160]
        raise CheckpointError(
            f"{path}: refused to load, it holds pickled objects other than plain tensors ({reason})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, TypeError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated/corrupt ({reason})") from None


def _check_records(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint ({error})") from None
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: refused, record {record.filename!r} is compressed ({record.compress_size} bytes that "
                f"claim {record.file_size}); torch.save writes records uncompressed"
            )


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors file, read from its header without reading any tensor."""
    path = Path(path)
    _check_exists(path)
    if not is_safetensors(path):
        raise CheckpointError(f"{path}: not a safetensors file")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as error:
        raise CheckpointError(f"{path}: damaged safetensors file ({error})") from None


def check_shapes(path: str | os.PathLike, expected: Mapping[str, Sequence[int] | torch.Tensor]) -> None:
    """Refuse a safetensors file whose tensors (from its header) differ from `expected` in names or shapes, before
    a byte of them is read; `expected` maps names to shapes or tensors (e.g. `model.state_dict()`)."""
    problem = mismatch(expected, header_shapes(path))
    if problem:
        raise CheckpointError(f"{path}: weights do not fit the model: {problem}")


def check_metadata(values: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse metadata facts outside their plausible range (METADATA_RANGES), e.g. a forged input size of 100000
    that would make each face cost gigabytes."""
    for key, (low, high) in METADATA_RANGES.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CheckpointError(f"{source}: metadata {key}={value!r} is not an integer within {low}..{high}")


def metadata_json(metadata: Mapping[str, str], key: str, source: str | os.PathLike, default: Any = None) -> Any:
    """A JSON value stored under `key` in safetensors metadata; absent (without a default) or malformed JSON is a
    one-line CheckpointError rather than a KeyError or JSONDecodeError."""
    if key not in metadata:
        if default is not None:
            return default
        raise CheckpointError(f"{source}: metadata lacks {key!r}")
    try:
        return json.loads(metadata[key])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: metadata {key!r} is not valid JSON ({error})") from None


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> Path:
    """Write atomically (temporary name, then rename) with the permissions the umask gives every other output
    (the safetensors library creates files readable by their owner only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    safetensors.torch.save_file(dict(tensors), str(tmp), metadata=dict(metadata))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


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


def _shape(value: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def mismatch(
    expected: Mapping[str, torch.Tensor | Sequence[int]], given: Mapping[str, torch.Tensor | Sequence[int]]
) -> str | None:
    """None when `given` fits `expected` exactly, else a one-line summary of missing/unexpected/reshaped keys.

    Values are tensors or shapes."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and _shape(given[k]) != _shape(expected[k])]
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
