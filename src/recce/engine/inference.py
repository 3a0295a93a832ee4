"""Batched inference: P(fake) for manifest crops (DataLoader workers) or for in-memory crops (detect, demo).

Both entry points share one forward loop and the dataset's eval transform with the detector's own preprocessing
(input size, normalisation). Scores stay on the device until the end, so the loop never waits for the GPU between
batches; only the optional maps are copied back per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from recce.checkpoints import unwrap
from recce.data.dataset import ManifestDataset, to_tensor
from recce.detectors import Detector, Preprocess, fake_probability
from recce.engine.graphs import ScoreGraph
from recce.engine.runtime import autocast, resolve_amp, resolve_device

FaceMaps = dict[str, np.ndarray]  # map name -> H x W float32 heatmap, or H x W x 3 RGB uint8 image


def preprocess_of(model: nn.Module, size: int | None = None) -> Preprocess:
    """The detector's preprocessing, at `size` when given (an explicit override of the input side)."""
    return unwrap(model).preprocess.at_size(size)


class _CropArrays(Dataset):
    """In-memory RGB crops through the dataset's eval transform (`to_tensor`, the same function); `landmarks`
    (per crop, five normalised points) feed the face-mask channel of detectors that take one."""

    def __init__(self, images: Sequence[np.ndarray], preprocess: Preprocess, landmarks: Sequence | None = None) -> None:
        if preprocess.face_mask and (landmarks is None or len(landmarks) != len(images)):
            raise ValueError("this detector takes a face mask: give the five landmarks of every crop")
        self.images = images
        self.preprocess = preprocess
        self.landmarks = landmarks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        landmarks = self.landmarks[index] if self.preprocess.face_mask else None
        return to_tensor(_checked_crop(self.images[index], index), self.preprocess, landmarks=landmarks)


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
    graph: ScoreGraph | None = None,
) -> tuple[np.ndarray, list[FaceMaps]]:
    """Scores of every batch, and per-image maps when asked; model already prepared by `_prepare`.

    Maps come from `explain`, which may need gradients (RFM's attention map), hence no_grad instead of
    inference_mode there. A `graph` (`recce.engine.graphs.cpu_graph`) gives the scores instead of the model.
    """
    scores: list[torch.Tensor] = []
    maps: list[FaceMaps] = []
    detector = unwrap(model)
    with torch.no_grad() if keep_maps else torch.inference_mode():
        for images in batches:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if graph is not None:
                scores.append(graph(images))
                continue
            with autocast(device, amp):
                output = detector.explain(images) if keep_maps else model(images)
            scores.append(fake_probability(output.logits))
            if keep_maps:
                maps.extend(face_maps(detector, output.maps, len(images)))
    if not scores:
        return np.empty(0, dtype=np.float64), maps
    return torch.cat(scores).cpu().numpy().astype(np.float64), maps


def face_maps(detector: Detector, maps: dict[str, torch.Tensor], count: int) -> list[FaceMaps]:
    """Per-image numpy maps: heatmaps as H x W float32, images denormalised to RGB uint8."""
    arrays = {}
    for name, kind in detector.map_kinds.items():
        if name not in maps:
            continue
        value = maps[name].detach().float()
        if kind == "image":
            value = (detector.preprocess.denormalise(value) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        else:
            value = value[:, 0]
        arrays[name] = value.cpu().numpy()
    return [{name: array[i] for name, array in arrays.items()} for i in range(count)]


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
        dataset = ManifestDataset(dataset_or_frame, preprocess=preprocess_of(model, size))
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
    landmarks: Sequence | None = None,
    graph: ScoreGraph | None = None,
) -> tuple[np.ndarray, list[FaceMaps] | None]:
    """P(fake) of RGB uint8 face crops (a list, or an N x H x W x 3 array); with `maps`, the detector's maps of each.

    `landmarks`: each crop's five (x, y) points normalised to the crop, for detectors whose input has a face mask.
    `graph`: the model's P(fake) graph (`recce.engine.graphs.cpu_graph`), run on the CPU in its place when no maps
    are asked for.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if graph is not None and (maps or resolve_device(device).type != "cpu"):
        graph = None  # the graph has no maps and was frozen for the CPU
    crops = _CropArrays(list(images), preprocess_of(model, size), landmarks)
    model, resolved, amp_mode, channels_last = _prepare(model, device, amp, channels_last)
    batches = (
        torch.stack([crops[i] for i in range(start, min(start + batch_size, len(crops)))])
        for start in range(0, len(crops), batch_size)
    )
    scores, image_maps = _forward(model, batches, resolved, amp_mode, channels_last, keep_maps=maps, graph=graph)
    return scores, image_maps if maps else None
