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
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from recce.data import manifest, packed, rows
from recce.data.faces.mask import render_mask
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


def _one_chunk(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The column as one array: its only chunk as it is (a view of a mapped file stays a view), else combined;
    strings stay chunked (indexing a few chunks costs little, copying them would double the paths)."""
    if column.num_chunks == 1:
        return column.chunk(0)
    strings = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    return column if strings else column.combine_chunks()


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
    pages instead of copying reference-counted objects; a categorical column costs 1-4 bytes a row. Both can be views
    of a memory-mapped file (`recce.data.rows.shared_rows`).
    """

    def __init__(self, values: pa.Array | pa.ChunkedArray) -> None:
        if pa.types.is_dictionary(values.type):
            codes = values.indices
            self.codes = (pc.fill_null(codes, -1) if codes.null_count else codes).to_numpy(zero_copy_only=False)
            self.categories = values.dictionary
            self.array = None
        else:
            self.array = values

    def __getitem__(self, index: int) -> str:
        if self.array is not None:
            return self.array[index].as_py()
        code = self.codes[index]
        return self.categories[code].as_py() if code >= 0 else str(pd.NA)  # a missing value reads as numpy's str()

    def series(self) -> pd.Series:
        if self.array is not None:
            chunked = self.array if isinstance(self.array, pa.ChunkedArray) else pa.chunked_array([self.array])
            return pd.Series(pd.arrays.ArrowStringArray(chunked), dtype=manifest.ARROW_STRING)
        categories = self.categories.to_numpy(zero_copy_only=False)
        return pd.Series(pd.Categorical.from_codes(self.codes, categories)).astype(manifest.ARROW_STRING)

    def distinct(self) -> list[str]:
        """The distinct values present, sorted, without building a value per row."""
        if self.array is not None:
            return sorted(pc.unique(self.array).to_pylist())
        present = np.unique(self.codes)
        return sorted(self.categories.take(pa.array(present[present >= 0])).to_pylist())

    @property
    def nbytes(self) -> int:
        if self.array is not None:
            return self.array.nbytes
        return self.codes.nbytes + self.categories.nbytes


class ManifestDataset(Dataset):
    """Face crops of a manifest as (image, label[, meta]).

    `source` is a manifest file, a frame from `manifest.read`, or the compact table of `recce.data.rows`
    (`read_rows`, or `shared_rows` memory-mapped by every process of a node); a frame without its `abspath`
    column is read with `path` taken as it is (relative to the working directory).

    Only the columns training and scoring use are kept (`COLUMNS`), compactly: crop paths as one Arrow string
    buffer with the manifest's folder held once, repeated strings as dictionary codes, numbers as small integers:
    about 70 bytes a DFDC row (benchmarks/scale.py); with `preprocess.face_mask`, the face landmarks too (40 bytes
    a row); for packed crops (recce.data.packed), the shard as a dictionary code and the member's offset and size
    (14 bytes a row). A manifest file is read with only those columns and with the filters pushed into the Parquet
    read. `frame` rebuilds those columns (not the face box, detector or its score) as a DataFrame on demand. Every
    process of a distributed run holds all rows (the training sampler draws each rank's share from a permutation of
    the whole epoch); over `shared_rows` they are the same page-cache pages in every process of a node.
    """

    COLUMNS = rows.COLUMNS

    def __init__(
        self,
        source: pd.DataFrame | pa.Table | str | os.PathLike,
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
        selection = rows.Selection.of(datasets=datasets, splits=splits, methods=methods, compressions=compressions)
        if isinstance(source, pd.DataFrame):
            frame = manifest.select(source, **asdict(selection))
            table = rows.from_frame(frame, landmarks=preprocess.face_mask, root=_common_root(source))
        elif isinstance(source, pa.Table):
            table = source.filter(selection.expression()) if selection.expression() is not None else source
        else:
            table = rows.read_rows(source, selection, landmarks=preprocess.face_mask)
        metadata = table.schema.metadata or {}
        self._source = metadata.get(rows.SOURCE, b"manifest frame").decode()
        if table.num_rows == 0:
            raise ValueError(f"{self._source}: no rows match ({selection.describe()})")
        if preprocess.face_mask and manifest.LANDMARKS not in table.column_names:
            raise manifest.ManifestError(f"{self._source}: these rows were read without the face landmarks")
        columns = {name: _one_chunk(table.column(name)) for name in table.column_names}
        self.preprocess = preprocess
        self.train = train
        self.flip_p = flip_p
        self.perturbation = perturbation
        self.return_meta = return_meta
        root = metadata.get(rows.ROOT)
        self._root = root.decode() if root is not None else None  # crops are root / path; None: `_abspaths`
        self._keys = _Strings(columns["path"])
        self._abspaths = None
        if self._root is None:
            self._abspaths = _Strings(columns["abspath"]) if "abspath" in columns else self._keys
        self._labels = columns["label"].to_numpy(zero_copy_only=False)
        self._frames = columns["frame"].to_numpy(zero_copy_only=False)
        self._meta = {c: _Strings(columns[c]) for c in META_COLUMNS if c != "frame"}
        self._landmarks = None
        if preprocess.face_mask:
            points = columns[manifest.LANDMARKS]
            self._landmarks = points.flatten().to_numpy(zero_copy_only=False).reshape(len(points), 10)
        self._packed = (
            _Packed(columns, self._root)
            if "shard" in columns and columns["shard"].null_count < len(columns["shard"])
            else None
        )
        del table, columns
        pa.default_memory_pool().release_unused()  # hand the read's transient buffers back to the system

    def distinct(self, column: str) -> list[str]:
        """The sorted distinct values of a string column (e.g. the datasets trained on), without a row frame."""
        return self._meta[column].distinct()

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

    def __init__(self, columns: dict[str, pa.Array], root: str | None) -> None:
        shards = _Strings(columns["shard"])
        self.codes = shards.codes
        self.names = shards.categories.to_numpy(zero_copy_only=False)  # as in the manifest, relative to its folder
        if manifest.SHARD_ABSPATH in columns:  # rows without a common folder: each shard's own absolute path
            rows_of = pd.Series(np.arange(len(self.codes))).groupby(self.codes).first().drop(-1, errors="ignore")
            absolute = _Strings(columns[manifest.SHARD_ABSPATH])
            self.files = np.array([absolute[int(row)] for row in rows_of.to_numpy()], dtype=object)
        else:
            self.files = np.array([str(Path(root) / n) if root else n for n in self.names], dtype=object)
        self.offsets = pc.fill_null(columns["offset"], -1).to_numpy(zero_copy_only=False)
        self.sizes = pc.fill_null(columns["size"], -1).to_numpy(zero_copy_only=False)
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
