"""The face-crop manifest: one Parquet row per crop, the single input of training and evaluation.

Crop paths are stored relative to the manifest's folder so a manifest and its crops can be moved together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

COLUMNS: dict[str, str] = {
    "path": "string",  # crop file, relative to the manifest's folder
    "dataset": "string",  # ffpp, celebdf, dfdc, dfdcp, wilddeepfake, folder, synthetic
    "split": "string",  # train, val or test
    "video": "string",  # video (or frame-sequence / image) id, unique within a dataset
    "frame": "int64",  # frame index in the source video (0 for still images)
    "label": "int8",  # 0 = real, 1 = fake
    "method": "string",  # manipulation for fakes (e.g. Deepfakes); source name for reals (e.g. youtube)
    "compression": "string",  # raw, c23, c40, a JPEG quality such as q75, or "" when unknown
    "x1": "float32",  # face box in source-frame pixels
    "y1": "float32",
    "x2": "float32",
    "y2": "float32",
    "score": "float32",  # detector confidence (1.0 for already-cropped inputs)
    "detector": "string",  # retinaface-mobilenet0.25, retinaface-resnet50, haar, none, synthetic
}
# Optional columns: kept when present, absent from manifests made before them (every reader copes without).
LANDMARKS = "landmarks"  # 10 floats: five (x, y) face points in the crop, normalised to [0, 1]; null when unknown
LANDMARKS_SOURCE = "landmarks_source"  # detected (face detector), box (placed in its box), crop (no face found)
# Packed crops (recce.data.packed): the tar shard holding the crop, relative to the manifest's folder, and where the
# crop's bytes lie in it; null for a crop stored as its own file at `path`.
PACKED_COLUMNS: dict[str, str] = {"shard": "string", "offset": "Int64", "size": "Int64"}
OPTIONAL_COLUMNS = (LANDMARKS, LANDMARKS_SOURCE, *PACKED_COLUMNS)
SHARD_ABSPATH = "shard_abspath"  # added by `read` beside `abspath` when the manifest has packed crops (categorical)


ROW_GROUP = 65_536  # rows a Parquet row group holds: a reader decodes one at a time, so its transient memory is bounded
ARROW_STRING = pd.StringDtype("pyarrow")  # "string" with pandas >= 3: one buffer, no Python object per row
_IRREGULAR_SEGMENT = r"(?:^|/)\.\.?(?:/|$)|//"  # a `.` or `..` segment, or an empty one


class ManifestError(ValueError):
    """A manifest file that cannot be used, with the file named in the message."""


def check_labels(frame: pd.DataFrame, source: str | os.PathLike) -> pd.Series:
    """The labels as numbers, which must be exactly 0 or 1: casting 0.7, 2 or 300 to int8 would train on silently
    wrong labels. Text labels are read as numbers ("1" is 1, "fake" is refused)."""
    labels = frame["label"]
    numeric = labels
    if not (pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels)):
        numeric = pd.to_numeric(labels.astype(object), errors="coerce")
    bad = np.flatnonzero(~numeric.isin([0, 1]).to_numpy(dtype=bool))
    if len(bad):
        value = labels.iloc[bad[0]]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise ManifestError(
            f"{source}: column 'label', row {bad[0]}: {shown} is not 0 (real) or 1 (fake) ({len(bad)} such row(s))"
        )
    return numeric


def to_frame(rows: Iterable[dict] | pd.DataFrame, source: str | os.PathLike = "manifest rows") -> pd.DataFrame:
    """Build a manifest frame with the canonical column order and dtypes."""
    if isinstance(rows, pd.DataFrame):
        frame = rows.copy()
    else:
        rows = list(rows)
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(COLUMNS))
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{source}: manifest rows lack columns: {', '.join(missing)}")
    frame["label"] = check_labels(frame, source)
    columns = list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in frame.columns]
    return _optional(frame[columns].astype(COLUMNS).reset_index(drop=True))


def _optional(frame: pd.DataFrame) -> pd.DataFrame:
    """Optional columns in their canonical form: landmarks as 10 float32 or None, their source as a string."""
    if LANDMARKS in frame.columns:
        frame[LANDMARKS] = pd.Series([_points(v) for v in frame[LANDMARKS]], index=frame.index, dtype=object)
    if LANDMARKS_SOURCE in frame.columns:
        frame[LANDMARKS_SOURCE] = frame[LANDMARKS_SOURCE].astype(ARROW_STRING).fillna("")
    packed = {c: (ARROW_STRING if dtype == "string" else dtype) for c, dtype in PACKED_COLUMNS.items() if c in frame}
    return frame.astype(packed) if packed else frame


def _points(value) -> np.ndarray | None:
    """A landmarks cell as 10 float32, or None (missing, or NaN where frames with and without were joined)."""
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return None
    return np.asarray(value, dtype=np.float32).reshape(10)


def write(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically (temporary name, then rename) so a killed run never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    to_frame(frame).to_parquet(tmp, index=False, row_group_size=ROW_GROUP)
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and validate a manifest; adds `abspath`, the crop's absolute path, and for packed crops
    `shard_abspath`, the absolute path of their shard (null for crops stored as files).

    `columns` reads only those (in canonical order; `abspath` only when listed), e.g. for a summary that needs
    no paths; the file must still hold every manifest column. Optional columns come when the file has them.
    """
    path = Path(path)
    wanted = [*COLUMNS, *OPTIONAL_COLUMNS, "abspath"] if columns is None else list(columns)
    known = (*COLUMNS, *OPTIONAL_COLUMNS)
    needed = {"path", *PACKED_COLUMNS} if "abspath" in wanted else set()
    frame = _read_columns(path, [c for c in known if c in wanted or c in needed])
    if "abspath" in wanted:
        frame["abspath"] = absolute_paths(frame["path"], path.resolve().parent)
        if "shard" in frame.columns:
            shards = pd.Categorical(frame["shard"])  # a few hundred shards: joined once each, held as codes
            joined = absolute_paths(pd.Series(shards.categories, dtype=ARROW_STRING), path.resolve().parent)
            frame[SHARD_ABSPATH] = pd.Categorical.from_codes(shards.codes, joined.to_numpy(dtype=object))
            wanted = [*wanted, SHARD_ABSPATH, *PACKED_COLUMNS]
    frame = frame[[c for c in (*known, "abspath", SHARD_ABSPATH) if c in wanted and c in frame.columns]]
    frame.attrs["path"] = str(path)  # so a reader of a selection can still name the file in its messages
    return frame


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """The manifest file's Arrow schema, which must hold every manifest column; else a ManifestError naming the
    file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for damaged files
        raise ManifestError(f"{path}: not a readable Parquet manifest ({error.__class__.__name__}: {error})") from None
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ManifestError(f"{path}: not a recce manifest, missing columns {', '.join(missing)}")
    return schema


def read_table(
    path: str | os.PathLike,
    columns: Sequence[str],
    *,
    where: pc.Expression | None = None,
    dictionary: Sequence[str] = (),
) -> pa.Table:
    """The file's `columns` (optional ones only if it has them) as Arrow, only the rows `where` keeps, the
    `dictionary` columns decoded as dictionaries; types as stored (`read` gives the canonical ones)."""
    path = Path(path)
    names = read_schema(path).names
    columns = [c for c in columns if c in COLUMNS or c in names]
    options = ds.ParquetReadOptions(dictionary_columns=[c for c in dictionary if c in columns])
    try:
        scanner = ds.dataset(path, format=ds.ParquetFileFormat(read_options=options)).scanner(
            columns=columns, filter=where, batch_readahead=0, fragment_readahead=1, use_threads=False
        )  # one batch decoded at a time, filtered as it comes: the whole file is never held
        return scanner.to_table()
    except Exception as error:  # damaged pages surface only when read
        raise ManifestError(f"{path}: not a readable Parquet manifest ({error.__class__.__name__}: {error})") from None


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    """The manifest's `columns` with canonical dtypes (optional ones only if the file has them), or a
    ManifestError naming the file and the problem."""
    names = read_schema(path).names
    columns = [c for c in columns if c in COLUMNS or c in names]
    try:
        frame = pd.read_parquet(path, columns=columns)
    except Exception as error:  # pyarrow raises several types for damaged files
        raise ManifestError(f"{path}: not a readable Parquet manifest ({error.__class__.__name__}: {error})") from None
    if "label" in columns:
        frame["label"] = check_labels(frame, path)
    return _optional(frame[columns].astype({c: COLUMNS[c] for c in columns if c in COLUMNS}).reset_index(drop=True))


def absolute_paths(paths: pd.Series, root: str | os.PathLike) -> pd.Series:
    """`root`/path for each path, as one vectorised string join (the rare irregular path as pathlib joins it)."""
    paths = paths.astype(ARROW_STRING)
    joined = (str(root).rstrip("/") + "/") + paths
    return _fix_irregular(joined, paths, lambda p: str(Path(root) / p))


def _fix_irregular(done: pd.Series, paths: pd.Series, one: Callable[[str], str]) -> pd.Series:
    """`done` with each absolute path or path holding `.`, `..` or empty segments replaced by `one(path)`."""
    irregular = (paths.str.startswith("/") | paths.str.contains(_IRREGULAR_SEGMENT, regex=True)).fillna(False)
    if not irregular.any():
        return done
    rows = irregular.to_numpy(dtype=bool)
    done = done.copy()
    done[rows] = [one(p) for p in paths[rows]]
    return done


def select(
    frame: pd.DataFrame,
    *,
    datasets: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    compressions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Filter rows; a `methods` filter keeps every real row (reals are shared by all methods)."""
    keep = pd.Series(True, index=frame.index)
    if datasets:
        keep &= frame["dataset"].isin(list(datasets))
    if splits:
        keep &= frame["split"].isin(list(splits))
    if methods:
        keep &= frame["method"].isin(list(methods)) | (frame["label"] == 0)
    if compressions:
        keep &= frame["compression"].isin(list(compressions))
    return frame[keep].reset_index(drop=True)


def merge(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> pd.DataFrame:
    """Merge shard manifests into one, rebasing crop paths onto the output's folder; duplicates dropped.

    A manifest's paths move by one prefix, its folder relative to the output's, without a per-row `relpath`.
    """
    out = Path(out)
    out_root = out.resolve().parent
    frames = []
    for p in paths:
        frame = _read_columns(Path(p), [*COLUMNS, *OPTIONAL_COLUMNS])
        for column in ("path", "shard"):
            if column in frame.columns:
                frame[column] = _rebased(frame[column], Path(p).resolve().parent, out_root)
        frames.append(frame)
    if not frames:
        raise ManifestError("no manifests to merge")
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(subset=["path"], keep="first")
    merged = merged.sort_values(["dataset", "split", "video", "frame"], kind="stable")
    write(merged, out)
    return to_frame(merged)


def _rebased(paths: pd.Series, root: Path, out_root: Path) -> pd.Series:
    """Paths relative to `root` made relative to `out_root`: one prefix for all, as `os.path.relpath` gives."""
    paths = paths.astype(ARROW_STRING)
    prefix = os.path.relpath(root, out_root)
    rebased = paths if prefix == os.curdir else (prefix + "/") + paths
    return _fix_irregular(rebased, paths, lambda p: os.path.relpath(os.path.join(root, p), out_root))
