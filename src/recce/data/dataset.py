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
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from recce.data import manifest, packed
from recce.data.faces.mask import as_landmarks, render_mask
from recce.data.video import MediaError
from recce.detectors.base import Preprocess

Perturbation = Callable[[np.ndarray, int], np.ndarray]
RECCE_PREPROCESS = Preprocess()
META_COLUMNS = ("dataset", "split", "video", "frame", "method", "compression")


def _common_root(frame: pd.DataFrame) -> str | None:
    """The folder that every `abspath` is `path` joined onto (as `manifest.read` builds them), or None."""
    if "abspath" not in frame or frame.empty:
        return None
    first_path, first_abspath = str(frame["path"].iloc[0]), str(frame["abspath"].iloc[0])
    root = str(Path(first_abspath[: len(first_abspath) - len(first_path)]))
    if not first_abspath.endswith(first_path) or not Path(root).is_absolute():
        return None
    joined = manifest.absolute_paths(frame["path"], root)
    return root if bool((joined == frame["abspath"].astype(manifest.ARROW_STRING)).all()) else None


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


class _Strings:
    """A string column as one Arrow buffer plus offsets, or as small integer codes into its distinct values.

    Neither holds a Python object per row, so reading a row in a forked DataLoader worker touches a few shared
    pages instead of copying reference-counted objects; a categorical column costs 1-4 bytes a row.
    """

    def __init__(self, values: pd.Series, categorical: bool) -> None:
        values = values.astype(manifest.ARROW_STRING)
        if categorical:
            categories = pd.Categorical(values)
            self.codes = categories.codes
            self.categories = categories.categories.to_numpy(dtype=object)
            self.array = None
        else:
            array = pa.array(values.array)
            self.array = array.cast(pa.string()) if array.nbytes < 2**31 - 1 else array

    def __getitem__(self, index: int) -> str:
        if self.array is not None:
            return self.array[index].as_py()
        code = self.codes[index]
        return self.categories[code] if code >= 0 else str(pd.NA)  # a missing value reads as numpy's str() of it

    def series(self) -> pd.Series:
        if self.array is not None:
            return pd.Series(pd.arrays.ArrowStringArray(self.array), dtype=manifest.ARROW_STRING)
        return pd.Series(pd.Categorical.from_codes(self.codes, self.categories)).astype(manifest.ARROW_STRING)

    @property
    def nbytes(self) -> int:
        if self.array is not None:
            return self.array.nbytes
        return self.codes.nbytes + sum(len(c) for c in self.categories)


class ManifestDataset(Dataset):
    """Face crops of a manifest as (image, label[, meta]).

    `frame_or_path` is a manifest file or a frame from `manifest.read`; a frame without its `abspath`
    column is read with `path` taken as it is (relative to the working directory).

    Only the columns training and scoring use are kept (`COLUMNS`), compactly: crop paths as one Arrow string
    buffer with the manifest's folder held once, repeated strings as categorical codes, numbers as small
    integers: about 70 bytes a DFDC row (benchmarks/scale.py); with `preprocess.face_mask`, the face landmarks
    too (40 bytes a row); for packed crops (recce.data.packed), the shard as a categorical code and the member's
    offset and size (14 bytes a row). `frame` rebuilds those columns (not the face box, detector or its score) as a
    DataFrame on demand. Every process of a distributed run holds all rows: the training sampler draws each rank's
    share from a permutation of the whole epoch.
    """

    COLUMNS = ("path", "dataset", "split", "video", "frame", "label", "method", "compression")

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
        preprocess = as_preprocess(preprocess)
        if isinstance(frame_or_path, pd.DataFrame):
            source, frame = frame_or_path.attrs.get("path", "manifest frame"), frame_or_path
            root = _common_root(frame)
        else:
            columns = (*self.COLUMNS, *manifest.PACKED_COLUMNS)
            columns = (*columns, manifest.LANDMARKS) if preprocess.face_mask else columns
            source, frame = str(frame_or_path), manifest.read(frame_or_path, columns=columns)
            root = str(Path(frame_or_path).resolve().parent)
        filters = {"datasets": datasets, "splits": splits, "methods": methods, "compressions": compressions}
        frame = manifest.select(frame, **filters)
        if frame.empty:
            given = ", ".join(f"{k}={list(v)}" for k, v in filters.items() if v) or "no filters"
            raise ValueError(f"{source}: no rows match ({given})")
        self.preprocess = preprocess
        self.train = train
        self.flip_p = flip_p
        self.perturbation = perturbation
        self.return_meta = return_meta
        self._root = root  # crops are root / path; None: `_abspaths` holds each crop's path as given
        self._keys = _Strings(frame["path"], categorical=False)
        self._abspaths = None
        if root is None:
            self._abspaths = _Strings(frame["abspath"], categorical=False) if "abspath" in frame else self._keys
        self._labels = frame["label"].to_numpy(dtype=np.int8)
        self._frames = frame["frame"].to_numpy(dtype=np.int32)
        self._meta = {c: _Strings(frame[c], categorical=True) for c in META_COLUMNS if c != "frame"}
        self._source = source
        self._landmarks = _landmarks(frame, source) if preprocess.face_mask else None
        self._packed = _Packed(frame, root) if "shard" in frame and frame["shard"].notna().any() else None
        del frame
        pa.default_memory_pool().release_unused()  # hand the read's transient buffers back to the system

    @property
    def frame(self) -> pd.DataFrame:
        """The kept columns with canonical dtypes, plus `abspath`; built on each call."""
        columns = {c: self._meta[c].series() for c in self._meta} | {
            "path": self._keys.series(),
            "frame": pd.Series(self._frames.astype(np.int64)),
            "label": pd.Series(self._labels),
        }
        frame = pd.DataFrame({c: columns[c] for c in self.COLUMNS})
        frame["abspath"] = (
            self._abspaths.series() if self._root is None else manifest.absolute_paths(frame["path"], self._root)
        )
        if self._landmarks is not None:
            frame[manifest.LANDMARKS] = pd.Series(list(self._landmarks), dtype=object)
        if self._packed is not None:
            frame = frame.assign(**self._packed.columns())
        frame.attrs["path"] = self._source
        return frame

    @property
    def nbytes(self) -> int:
        """Bytes held for the rows (paths, codes, numbers): what each training process keeps of the manifest."""
        separate = self._abspaths is not None and self._abspaths is not self._keys
        columns = [self._keys, *self._meta.values(), *([self._abspaths] if separate else [])]
        landmarks = self._landmarks.nbytes if self._landmarks is not None else 0
        shards = self._packed.nbytes if self._packed is not None else 0
        return sum(c.nbytes for c in columns) + self._labels.nbytes + self._frames.nbytes + landmarks + shards

    @property
    def shard_codes(self) -> np.ndarray | None:
        """Each row's tar shard as a code (-1: a crop stored as a file), or None when no crop is packed."""
        return self._packed.codes if self._packed is not None else None

    def path(self, index: int) -> str:
        """The crop's file."""
        if self._root is None:
            return self._abspaths[index]
        return str(Path(self._root) / self._keys[index])

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def load_image(self, index: int) -> np.ndarray:
        """The crop as RGB uint8 after the optional perturbation, before resizing."""
        if self._packed is not None and self._packed.codes[index] >= 0:
            image = self._packed.image(index, self._keys[index])
        else:
            image = _read_file(self.path(index))
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.perturbation is not None:
            image = self.perturbation(image, row_seed(self._keys[index]))
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
        meta = {name: int(self._frames[index]) if name == "frame" else self._meta[name][index] for name in META_COLUMNS}
        return image, label, {"path": self.path(index), **meta, "index": index}


def _read_file(path: str) -> np.ndarray:
    try:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV's limit
        image = None
    if image is None:
        raise MediaError(f"{path}: crop is missing or not a readable image")
    return image


class _Packed:
    """Where the packed rows' crops lie: shard codes (-1: a crop stored as a file), member offsets and sizes, and
    a reader that opens the shards in the process that reads."""

    def __init__(self, frame: pd.DataFrame, root: str | None) -> None:
        shards = pd.Categorical(frame["shard"].astype(manifest.ARROW_STRING))
        self.codes = shards.codes
        self.names = shards.categories.to_numpy(dtype=object)  # as in the manifest, relative to its folder
        if manifest.SHARD_ABSPATH in frame:
            first = pd.Series(np.arange(len(frame))).groupby(self.codes).first().drop(-1, errors="ignore")
            self.files = frame[manifest.SHARD_ABSPATH].iloc[first.to_numpy()].to_numpy(dtype=object)
        else:
            self.files = np.array([str(Path(root) / n) if root else n for n in self.names], dtype=object)
        self.offsets = frame["offset"].fillna(-1).to_numpy(dtype=np.int64)
        self.sizes = frame["size"].fillna(-1).to_numpy(dtype=np.int32)
        self.reader = packed.ShardReader()

    def image(self, index: int, path: str) -> np.ndarray:
        code = self.codes[index]
        return self.reader.image(
            self.files[code], int(self.offsets[index]), int(self.sizes[index]), packed.member_name(path)
        )

    def columns(self) -> dict[str, pd.Series]:
        def strings(categories: np.ndarray) -> pd.Series:
            return pd.Series(pd.Categorical.from_codes(self.codes, categories)).astype(manifest.ARROW_STRING)

        return {
            "shard": strings(self.names),
            manifest.SHARD_ABSPATH: strings(self.files),
            "offset": pd.Series(self.offsets, dtype="Int64").where(self.codes >= 0),
            "size": pd.Series(self.sizes.astype(np.int64), dtype="Int64").where(self.codes >= 0),
        }

    @property
    def nbytes(self) -> int:
        names = sum(len(n) + len(f) for n, f in zip(self.names, self.files, strict=True))
        return self.codes.nbytes + self.offsets.nbytes + self.sizes.nbytes + names


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
