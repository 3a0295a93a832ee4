"""The Dataset over a manifest: face crops decoded in DataLoader workers, with the paper's transform.

Transform (RECCE's albumentations pipeline): cv2 read, BGR->RGB, optional perturbation, Resize(size, size)
bilinear without keeping the aspect ratio, HorizontalFlip(p) in training only, Normalize(mean 0.5, std 0.5)
to [-1, 1], CHW float32. The training sampler passes each row's augmentation seed with its index, so flips are
the same whatever the workers and when a run resumes; a bare index draws from torch's generator instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from recce.data import manifest
from recce.data.video import MediaError

Perturbation = Callable[[np.ndarray, int], np.ndarray]
META_COLUMNS = ("dataset", "split", "video", "frame", "method", "compression")


def row_seed(path: str) -> int:
    """A 32-bit seed from a crop's manifest path, the same in every process and run (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=4).digest(), "little")


def to_tensor(image: np.ndarray, size: int, flip: bool = False) -> torch.Tensor:
    """RGB uint8 → resized to size x size (bilinear, aspect not kept), optionally mirrored, in [-1, 1], CHW float32."""
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if flip:
        image = image[:, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return (tensor.to(torch.float32) - 127.5) / 127.5


class ManifestDataset(Dataset):
    """Face crops of a manifest as (image, label[, meta]).

    `frame_or_path` is a manifest file or a frame from `manifest.read`; a frame without its `abspath`
    column is read with `path` taken as it is (relative to the working directory).
    """

    def __init__(
        self,
        frame_or_path: pd.DataFrame | str | os.PathLike,
        *,
        size: int = 299,
        train: bool = False,
        flip_p: float = 0.5,
        perturbation: Perturbation | None = None,
        return_meta: bool = False,
        datasets: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
        methods: Sequence[str] | None = None,
        compressions: Sequence[str] | None = None,
    ) -> None:
        if isinstance(frame_or_path, pd.DataFrame):
            source, frame = "manifest frame", frame_or_path
        else:
            source, frame = str(frame_or_path), manifest.read(frame_or_path)
        filters = {"datasets": datasets, "splits": splits, "methods": methods, "compressions": compressions}
        self.frame = manifest.select(frame, **filters)
        if self.frame.empty:
            given = ", ".join(f"{k}={list(v)}" for k, v in filters.items() if v) or "no filters"
            raise ValueError(f"{source}: no rows match ({given})")
        self.size = size
        self.train = train
        self.flip_p = flip_p
        self.perturbation = perturbation
        self.return_meta = return_meta
        # numpy arrays, not lists of Python objects: forked workers then share pages instead of copying them
        paths = self.frame["abspath"] if "abspath" in self.frame else self.frame["path"]
        self._paths = paths.to_numpy(dtype=str)
        self._keys = self.frame["path"].to_numpy(dtype=str)
        self._labels = self.frame["label"].to_numpy(dtype=np.int64)
        self._meta = {c: self.frame[c].to_numpy(dtype=int if c == "frame" else str) for c in META_COLUMNS}

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def load_image(self, index: int) -> np.ndarray:
        """The crop as RGB uint8 after the optional perturbation, before resizing."""
        path = str(self._paths[index])
        try:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
        except cv2.error:  # e.g. a header claiming more pixels than OpenCV's limit
            image = None
        if image is None:
            raise MediaError(f"{path}: crop is missing or not a readable image")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.perturbation is not None:
            image = self.perturbation(image, row_seed(str(self._keys[index])))
        return image

    def transform(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """The paper's transform; the training flip is decided by `seed` when given."""
        flip = False
        if self.train:
            draw = torch.rand(()).item() if seed is None else np.random.default_rng(seed).random()
            flip = draw < self.flip_p
        return to_tensor(image, self.size, flip)

    def __getitem__(self, key: int | tuple[int, int]):
        """`key` is a row, or (row, augmentation seed) as the training sampler yields to make flips reproducible."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.transform(self.load_image(index), seed)
        label = int(self._labels[index])
        if not self.return_meta:
            return image, label
        meta = {name: values[index].item() for name, values in self._meta.items()}
        return image, label, {"path": str(self._paths[index]), **meta, "index": index}
