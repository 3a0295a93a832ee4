"""Batched inference: P(fake) for manifest crops (DataLoader workers) or for in-memory crops (detect, demo).

Both entry points share one forward loop and the dataset's eval transform (resize to the model's input size with
cv2 INTER_LINEAR, then (x / 255 - 0.5) / 0.5). Scores stay on the device until the end, so the loop never waits
for the GPU between batches; only the optional reconstruction/attention maps are copied back per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from recce.data.dataset import ManifestDataset, to_tensor
from recce.engine.runtime import autocast, resolve_amp, resolve_device
from recce.models import fake_probability

DEFAULT_INPUT_SIZE = 299


class ImageMaps(NamedTuple):
    """What RECCE saw of one crop, at the model's input size (None for the plain Xception baseline)."""

    reconstruction: np.ndarray | None  # H x W x 3 RGB uint8, the decoder output x̂ mapped back from [-1, 1]
    attention: np.ndarray | None  # h x w float32 in [0, 1], the reconstruction-guided attention on the block8 grid


def input_size(model: nn.Module, override: int | None = None) -> int:
    """The side the model expects: an explicit override, else the checkpoint's `input_size`, else 299."""
    if override is not None:
        return int(override)
    return int(getattr(model, "checkpoint_extra", {}).get("input_size", DEFAULT_INPUT_SIZE))


class _CropArrays(Dataset):
    """In-memory RGB crops through the dataset's eval transform (`to_tensor`, the same function)."""

    def __init__(self, images: Sequence[np.ndarray], size: int) -> None:
        self.images = images
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(_checked_crop(self.images[index], index), self.size)


def _checked_crop(image: np.ndarray, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image {index}: expected an RGB uint8 H x W x 3 crop, got {image.dtype} {image.shape}")
    return image


def _prepare(
    model: nn.Module, device: str | torch.device, amp: str, channels_last: bool | None
) -> tuple[nn.Module, torch.device, str, bool]:
    resolved = resolve_device(device)
    amp_mode = resolve_amp(amp, resolved)
    if channels_last is None:
        channels_last = resolved.type == "cuda"
    model = model.to(resolved).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, resolved, amp_mode, channels_last


def _forward(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    amp: str,
    channels_last: bool,
    keep_maps: bool,
) -> tuple[np.ndarray, list[ImageMaps]]:
    """Scores of every batch, and per-image maps when asked; model already prepared by `_prepare`."""
    scores: list[torch.Tensor] = []
    maps: list[ImageMaps] = []
    with torch.inference_mode():
        for images in batches:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                output = model(images)
            scores.append(fake_probability(output.logits))
            if keep_maps:
                maps.extend(_maps_of(output.reconstruction, output.attention, len(images)))
    if not scores:
        return np.empty(0, dtype=np.float64), maps
    return torch.cat(scores).cpu().numpy().astype(np.float64), maps


def _maps_of(reconstruction: torch.Tensor | None, attention: torch.Tensor | None, count: int) -> list[ImageMaps]:
    recon = None
    if reconstruction is not None:
        pixels = ((reconstruction.float() * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)
        recon = pixels.permute(0, 2, 3, 1).cpu().numpy()
    attn = None if attention is None else attention.float()[:, 0].cpu().numpy()
    return [ImageMaps(None if recon is None else recon[i], None if attn is None else attn[i]) for i in range(count)]


def score_frames(
    model: nn.Module,
    dataset_or_frame: ManifestDataset | pd.DataFrame,
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    amp: str = "auto",
    workers: int = 2,
    channels_last: bool | None = None,
    progress: bool = True,
    size: int | None = None,
    desc: str = "scoring",
) -> pd.DataFrame:
    """The manifest rows, in order, plus `score` = P(fake).

    A frame (from `manifest.read`/`select`) is loaded at `size`, else the model's input size. The model is moved
    to the device and put in eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(dataset_or_frame, ManifestDataset):
        dataset = dataset_or_frame
    else:
        dataset = ManifestDataset(dataset_or_frame, size=input_size(model, size))
    model, resolved, amp_mode, channels_last = _prepare(model, device, amp, channels_last)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=resolved.type == "cuda",
    )
    batches = (images for images, *_ in loader)
    bar = tqdm(batches, total=len(loader), desc=desc, unit="batch", disable=not progress, leave=False)
    scores, _ = _forward(model, bar, resolved, amp_mode, channels_last, keep_maps=False)
    scored = dataset.frame.copy()
    scored["score"] = scores
    return scored


def score_images(
    model: nn.Module,
    images: np.ndarray | Sequence[np.ndarray],
    *,
    size: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    amp: str = "auto",
    channels_last: bool | None = None,
    maps: bool = False,
) -> tuple[np.ndarray, list[ImageMaps] | None]:
    """P(fake) of RGB uint8 face crops (a list, or an N x H x W x 3 array); with `maps`, what RECCE saw of each."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    crops = _CropArrays(list(images), input_size(model, size))
    model, resolved, amp_mode, channels_last = _prepare(model, device, amp, channels_last)
    batches = (
        torch.stack([crops[i] for i in range(start, min(start + batch_size, len(crops)))])
        for start in range(0, len(crops), batch_size)
    )
    scores, image_maps = _forward(model, batches, resolved, amp_mode, channels_last, keep_maps=maps)
    return scores, image_maps if maps else None
