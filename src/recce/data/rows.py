"""The rows of a manifest that training reads, as compact Arrow columns, and a copy that processes share.

`read_rows` reads from the Parquet file only the columns a `ManifestDataset` keeps, with the repeated strings
(dataset, split, video, method, compression) decoded straight into dictionaries and the selection (datasets, splits,
methods, compressions) pushed into the read, so start-up never holds the whole manifest or a Python object per row.

`shared_rows` writes those rows once as an Arrow IPC file (a temporary name, then a rename) and memory-maps it:
every process of a node that opens it reads the same page-cache pages, so a distributed run holds the rows once per
node instead of once per process. The file records a key of the manifest's bytes and of the selection; a file
whose key differs (the manifest was rewritten, other filters) is rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recce.catalogue import file_sha256
from recce.data import manifest
from recce.data.faces.mask import as_landmarks

COLUMNS = ("path", "dataset", "split", "video", "frame", "label", "method", "compression")
CATEGORICAL = ("dataset", "split", "video", "method", "compression")
PACKED = ("shard", "offset", "size")  # where a packed crop lies (recce.data.packed); null for a crop file
SHARD_NAMES = ("shard", manifest.SHARD_ABSPATH)  # a few hundred distinct values: dictionaries
SOURCE, ROOT, KEY = b"recce.source", b"recce.root", b"recce.rows_key"
FORMAT = 2  # bump when the cached columns change


@dataclass(frozen=True)
class Selection:
    """The rows kept: as `manifest.select`, a `methods` filter keeps every real row."""

    datasets: tuple[str, ...] | None = None
    splits: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    compressions: tuple[str, ...] | None = None

    @classmethod
    def of(cls, **filters: Sequence[str] | None) -> Selection:
        return cls(**{name: tuple(values) if values else None for name, values in filters.items()})

    def expression(self) -> pc.Expression | None:
        """The selection as an Arrow filter over the manifest's columns (None keeps every row)."""
        terms = [pc.field(c).isin(list(v)) for c, v in (("dataset", self.datasets), ("split", self.splits)) if v]
        if self.methods:
            terms.append(pc.field("method").isin(list(self.methods)) | (pc.field("label") == 0))
        if self.compressions:
            terms.append(pc.field("compression").isin(list(self.compressions)))
        if not terms:
            return None
        expression = terms[0]
        for term in terms[1:]:
            expression = expression & term
        return expression

    def describe(self) -> str:
        return ", ".join(f"{k}={list(v)}" for k, v in asdict(self).items() if v) or "no filters"


def _pushable(schema: pa.Schema) -> bool:
    """Can the selection be evaluated on the file's own types (text columns, integer labels)?"""
    text = all(
        pa.types.is_string(t) or pa.types.is_large_string(t)
        for t in (schema.field(c).type for c in ("dataset", "split", "method", "compression"))
    )
    return text and pa.types.is_integer(schema.field("label").type)


def read_rows(path: str | os.PathLike, selection: Selection = Selection(), *, landmarks: bool = False) -> pa.Table:
    """The selected rows' `COLUMNS` (and landmarks as N x 10 float32), validated; the paths in the chunks read."""
    path = Path(path)
    columns = [*COLUMNS, *PACKED, *([manifest.LANDMARKS] if landmarks else [])]
    where = selection.expression()
    schema = manifest.read_schema(path)
    pushed = where is not None and _pushable(schema)
    table = manifest.read_table(path, columns, where=where if pushed else None, dictionary=(*CATEGORICAL, "shard"))
    if "shard" in table.column_names and table.column("shard").null_count == table.num_rows:
        table = table.drop_columns(list(PACKED))  # the columns of a manifest whose crops are all files
    labels = manifest.check_labels(pd.DataFrame({"label": table.column("label").to_pandas()}), path)
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels.to_numpy(np.int8)))
    if where is not None and not pushed:  # a file with other types: select on the canonical ones
        table = table.filter(where)
    frames = pc.cast(table.column("frame"), pa.int32())  # a safe cast: a frame index beyond int32 is refused
    table = table.set_column(table.schema.get_field_index("frame"), "frame", frames)
    if landmarks:
        if manifest.LANDMARKS in table.column_names:
            values = table.column(manifest.LANDMARKS)
            table = table.drop_columns([manifest.LANDMARKS])
        else:
            values = pa.nulls(table.num_rows, pa.list_(pa.float32()))
        table = table.append_column(manifest.LANDMARKS, _points(_landmarks(values, path)))
    metadata = {SOURCE: str(path).encode(), ROOT: str(path.resolve().parent).encode()}
    return _compact(table).replace_schema_metadata(metadata)


def _compact(table: pa.Table) -> pa.Table:
    """Repeated strings as dictionaries in the smallest code type, one chunk per column (paths excepted); packed
    crops' offsets as int64 and sizes as int32."""
    table = table.unify_dictionaries()
    arrays = {}
    dictionaries = (*CATEGORICAL, *SHARD_NAMES)
    for name in table.column_names:
        column = table.column(name)
        table = table.drop_columns([name])
        if name in dictionaries and not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(pc.cast(column, pa.string()))
        elif name in ("offset", "size"):
            column = pc.cast(column, pa.int64() if name == "offset" else pa.int32())
        elif name not in dictionaries and pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if pa.types.is_large_string(column.type) and column.nbytes < 2**31 - 1:  # 4-byte offsets suffice
            column = pc.cast(column, pa.string())
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            arrays[name] = column  # crop paths stay in the chunks they were read in: combining would copy them
            continue
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        arrays[name] = _narrow(array) if name in dictionaries else array
    return pa.table(arrays)


def _narrow(array: pa.DictionaryArray) -> pa.DictionaryArray:
    """Dictionary codes in the smallest integer type that holds them (1 byte a row for a few distinct values)."""
    size = len(array.dictionary)
    kind = next(t for t, bound in ((pa.int8(), 2**7), (pa.int16(), 2**15), (pa.int32(), 2**31)) if size < bound)
    return pa.DictionaryArray.from_arrays(array.indices.cast(kind), array.dictionary)


def from_frame(frame: pd.DataFrame, *, landmarks: bool = False, root: str | None = None) -> pa.Table:
    """The same compact table from a manifest frame; without a `root` its `abspath` column is kept."""
    source = frame.attrs.get("path", "manifest frame")
    columns = {c: pa.array(frame[c].astype(manifest.ARROW_STRING).array) for c in ("path", *CATEGORICAL)}
    columns["frame"] = pa.array(frame["frame"].to_numpy(dtype=np.int32))
    columns["label"] = pa.array(frame["label"].to_numpy(dtype=np.int8))
    if landmarks:
        values = frame[manifest.LANDMARKS] if manifest.LANDMARKS in frame.columns else pd.Series([None] * len(frame))
        points = _landmarks(pa.array(values.tolist(), type=pa.list_(pa.float32())), source)
        columns[manifest.LANDMARKS] = _points(points)
    if root is None and "abspath" in frame:
        columns["abspath"] = pa.array(frame["abspath"].astype(manifest.ARROW_STRING).array)
    if "shard" in frame and frame["shard"].notna().any():
        columns |= {c: pa.array(frame[c].astype(manifest.PACKED_COLUMNS[c]).array) for c in ("offset", "size")}
        shard_names = SHARD_NAMES if root is None and manifest.SHARD_ABSPATH in frame else SHARD_NAMES[:1]
        columns |= {c: pa.array(frame[c].astype(manifest.ARROW_STRING).array) for c in shard_names}
    metadata = {SOURCE: str(source).encode(), **({ROOT: root.encode()} if root is not None else {})}
    return _compact(pa.table(columns)).replace_schema_metadata(metadata)


def _points(points: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(points.ravel()), 10)


def _landmarks(values: pa.ChunkedArray | pa.Array, source: str | os.PathLike) -> np.ndarray:
    """The rows' landmarks as N x 10 float32; a manifest without them for every row cannot feed a face mask."""
    missing = values.null_count
    if missing:
        raise manifest.ManifestError(
            f"{source}: {missing} of {len(values)} crops have no face landmarks, which the face-mask input needs; "
            f"add them with `recce manifest landmarks {source}` or re-run `recce extract` with a face detector"
        )
    if not len(values):
        return np.zeros((0, 10), np.float32)
    return np.stack([as_landmarks(v, f"{source} row {i}").reshape(10) for i, v in enumerate(values.to_pylist())])


# ------------------------------------------------------------------------------------------ the shared copy
def cache_key(path: str | os.PathLike, selection: Selection, landmarks: bool) -> str:
    """What the shared rows were built from: the manifest's bytes (SHA-256), the selection and the format."""
    given = {"manifest": file_sha256(path), "selection": asdict(selection), "landmarks": landmarks, "format": FORMAT}
    return json.dumps(given, sort_keys=True)


def open_shared(cache: str | os.PathLike, key: str) -> pa.Table | None:
    """The rows memory-mapped from `cache` if it holds them for `key`, else None."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(cache))).read_all()
    except (OSError, pa.ArrowInvalid):  # absent, or not a whole IPC file
        return None
    return table if (table.schema.metadata or {}).get(KEY) == key.encode() else None


def write_shared(table: pa.Table, cache: str | os.PathLike, key: str) -> None:
    """Write the rows for `key` as one record batch (so mapped columns are single views) under a temporary name,
    then rename: readers see the old file or the whole new one."""
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.uname().nodename}.{os.getpid()}.tmp")
    table = table.combine_chunks().replace_schema_metadata({**(table.schema.metadata or {}), KEY: key.encode()})
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)


def shared_rows(
    path: str | os.PathLike, cache: str | os.PathLike, selection: Selection = Selection(), *, landmarks: bool = False
) -> pa.Table:
    """The selected rows memory-mapped from `cache`, built from the manifest first when missing or stale."""
    manifest.read_schema(path)  # a missing or foreign manifest is one ManifestError line
    key = cache_key(path, selection, landmarks)
    table = open_shared(cache, key)
    if table is None:
        write_shared(read_rows(path, selection, landmarks=landmarks), cache, key)
        table = open_shared(cache, key)  # mapped: this process keeps no private copy of what it read
    return table
