"""The Dataset over a manifest: face crops decoded in DataLoader workers, with the paper's transform.

Transform (RECCE's albumentations pipeline, generalised by the detector's `Preprocess`): cv2 read, BGR->RGB,
optional perturbation, Resize to the load size bilinear without keeping the aspect ratio, a crop to the input size
(random in training, centred otherwise; none when both sizes agree), HorizontalFlip(p) in training only,
Normalize(mean, std), CHW float32; with `preprocess.face_mask`, a 4th channel: the face mask drawn from the crop's
landmarks at the load size, cropped and flipped with the image. The training sampler passes each row's
augmentation seed with its index, so flips are the same whatever the workers and when a run resumes; a bare index
draws from torch's generator instead.
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
from recce.data.faces.mask import as_landmarks, render_mask
from recce.data.video import MediaError
from recce.detectors.base import Preprocess

Perturbation = Callable[[np.ndarray, int], np.ndarray]
RECCE_PREPROCESS = Preprocess()
META_COLUMNS = ("dataset", "split", "video", "frame", "method", "compression")


def row_seed(path: str) -> int:
    """A 32-bit seed from a crop's manifest path, the same in every process and run (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=4).digest(), "little")


def to_tensor(
    image: np.ndarray,
    preprocess: Preprocess,
    flip: bool = False,
    offset: tuple[int, int] | None = None,
    landmarks: np.ndarray | None = None,
) -> torch.Tensor:
    """RGB uint8 → resized (bilinear, aspect not kept), cropped at `offset` (default: centred), optionally mirrored,
    normalised, CHW float32; with `preprocess.face_mask`, the mask of the crop's normalised `landmarks` appended."""
    load, size = preprocess.load_size, preprocess.input_size
    if image.shape[:2] != (load, load):
        image = cv2.resize(image, (load, load), interpolation=cv2.INTER_LINEAR)
    if preprocess.face_mask:
        if landmarks is None:
            raise ValueError("this detector's input has a face-mask channel: the crop's landmarks are needed")
        image = np.dstack([image, render_mask(landmarks, load)])
    if load != size:
        top, left = offset if offset is not None else ((load - size) // 2, (load - size) // 2)
        image = image[top : top + size, left : left + size]
    if flip:
        image = image[:, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
    mean = torch.tensor(preprocess.mean).view(3, 1, 1) * 255
    std = torch.tensor(preprocess.std).view(3, 1, 1) * 255
    if preprocess.face_mask:
        return torch.cat([(tensor[:3] - mean) / std, tensor[3:]])
    return (tensor - mean) / std


def as_preprocess(preprocess: Preprocess | int) -> Preprocess:
    """A `Preprocess`; a bare side means that input size with RECCE's normalisation to [-1, 1]."""
    return preprocess if isinstance(preprocess, Preprocess) else Preprocess(input_size=int(preprocess))


class ManifestDataset(Dataset):
    """Face crops of a manifest as (image, label[, meta]).

    `frame_or_path` is a manifest file or a frame from `manifest.read`; a frame without its `abspath`
    column is read with `path` taken as it is (relative to the working directory).
    """

    def __init__(
        self,
        frame_or_path: pd.DataFrame | str | os.PathLike,
        *,
        preprocess: Preprocess | int = RECCE_PREPROCESS,
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
            source, frame = frame_or_path.attrs.get("path", "manifest frame"), frame_or_path
        else:
            source, frame = str(frame_or_path), manifest.read(frame_or_path)
        filters = {"datasets": datasets, "splits": splits, "methods": methods, "compressions": compressions}
        self.frame = manifest.select(frame, **filters)
        if self.frame.empty:
            given = ", ".join(f"{k}={list(v)}" for k, v in filters.items() if v) or "no filters"
            raise ValueError(f"{source}: no rows match ({given})")
        self.preprocess = as_preprocess(preprocess)
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
        self._landmarks = _landmarks(self.frame, source) if self.preprocess.face_mask else None

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def load_image(self, index: int) -> np.ndarray:
        """The crop as RGB uint8 after the optional perturbation, before resizing."""
        path = str(self._paths[index])
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise MediaError(f"{path}: crop is missing or not a readable image")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.perturbation is not None:
            image = self.perturbation(image, row_seed(str(self._keys[index])))
        return image

    def transform(
        self, image: np.ndarray, seed: int | None = None, landmarks: np.ndarray | None = None
    ) -> torch.Tensor:
        """The paper's transform; the training flip (and crop) are decided by `seed` when given."""
        if not self.train:
            return to_tensor(image, self.preprocess, landmarks=landmarks)
        margin = self.preprocess.load_size - self.preprocess.input_size
        if seed is None:
            flip = torch.rand(()).item() < self.flip_p
            offset = tuple(torch.randint(0, margin + 1, (2,)).tolist()) if margin else (0, 0)
        else:
            rng = np.random.default_rng(seed)
            flip = rng.random() < self.flip_p
            offset = tuple(rng.integers(0, margin + 1, 2).tolist()) if margin else (0, 0)
        return to_tensor(image, self.preprocess, flip, offset, landmarks)

    def __getitem__(self, key: int | tuple[int, int]):
        """`key` is a row, or (row, augmentation seed) as the training sampler yields to make flips reproducible."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        landmarks = self._landmarks[index] if self._landmarks is not None else None
        image = self.transform(self.load_image(index), seed, landmarks)
        label = int(self._labels[index])
        if not self.return_meta:
            return image, label
        meta = {name: values[index].item() for name, values in self._meta.items()}
        return image, label, {"path": str(self._paths[index]), **meta, "index": index}


def _landmarks(frame: pd.DataFrame, source: str) -> np.ndarray:
    """The rows' landmarks as N x 10 float32; a manifest without them for every row cannot feed a face mask."""
    values = frame[manifest.LANDMARKS] if manifest.LANDMARKS in frame.columns else pd.Series([None] * len(frame))
    missing = int(values.isna().sum())
    if missing:
        raise manifest.ManifestError(
            f"{source}: {missing} of {len(frame)} crops have no face landmarks, which the face-mask input needs; "
            f"add them with `recce manifest landmarks {source}` or re-run `recce extract` with a face detector"
        )
    return np.stack([as_landmarks(v, f"{source} row {i}").reshape(10) for i, v in enumerate(values)])
