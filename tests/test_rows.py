"""The compact rows of training start-up: filters pushed into the Parquet read give today's rows in today's order,
only the kept columns are read, and the shared memory-mapped copy is written atomically and rebuilt when stale."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recce.data import manifest, rows
from recce.data.dataset import ManifestDataset
from recce.engine.config import load_config
from recce.engine.train import load_datasets

SELECTIONS = [
    {},
    {"splits": ["train"]},
    {"splits": ["val", "test"], "datasets": ["dfdc"]},
    {"methods": ["Deepfakes"]},
    {"methods": ["Deepfakes", "NeuralTextures"], "compressions": ["c23"], "splits": ["train"]},
    {"compressions": [""]},
    {"datasets": ["absent"]},
]


def write_manifest(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Rows of several datasets, splits, methods and compressions in a shuffled order (no crop files needed)."""
    rng = np.random.default_rng(seed)
    dataset = rng.choice(["ffpp", "dfdc", "celebdf"], n)
    label = rng.integers(0, 2, n)
    fake = rng.choice(["Deepfakes", "Face2Face", "NeuralTextures"], n)
    frame = pd.DataFrame(
        {
            "path": [f"crops/{d}/v{i % 97}/{i:06d}.png" for i, d in enumerate(dataset)],
            "dataset": dataset,
            "split": rng.choice(["train", "val", "test"], n),
            "video": [f"v{i % 97}" for i in range(n)],
            "frame": rng.integers(0, 300, n),
            "label": label,
            "method": np.where(label == 1, fake, "youtube"),
            "compression": np.where(dataset == "ffpp", rng.choice(["c23", "c40"], n), ""),
            "x1": 0.0,
            "y1": 0.0,
            "x2": 8.0,
            "y2": 8.0,
            "score": 1.0,
            "detector": "none",
        }
    )
    manifest.write(frame, path)
    pq.write_table(pq.read_table(path), path, row_group_size=128)  # several row groups, as a large manifest has
    return path


def todays_frame(path: Path, selection: dict) -> pd.DataFrame:
    """The rows as training selected them before: the whole manifest read, then `manifest.select`."""
    return ManifestDataset(manifest.read(path), **selection).frame


@pytest.mark.parametrize("selection", SELECTIONS)
def test_pushed_filters_give_todays_rows_in_todays_order(tmp_path, selection):
    path = write_manifest(tmp_path / "manifest.parquet")
    if selection == {"datasets": ["absent"]}:
        assert rows.read_rows(path, rows.Selection.of(**selection)).num_rows == 0
        with pytest.raises(ValueError, match=r"no rows match \(datasets=\['absent'\]\)"):
            ManifestDataset(path, **selection)
        return
    expected = todays_frame(path, selection)
    pd.testing.assert_frame_equal(ManifestDataset(path, **selection).frame, expected)
    shared = rows.shared_rows(path, tmp_path / "rows.arrow", rows.Selection.of(**selection))
    pd.testing.assert_frame_equal(ManifestDataset(shared).frame, expected)


def test_a_manifest_with_other_types_is_selected_after_reading(tmp_path):
    """Text labels cannot be compared in the read; the selection then runs on the canonical types."""
    path = write_manifest(tmp_path / "manifest.parquet")
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("label"), "label", table["label"].cast(pa.string()))
    pq.write_table(table, path)
    assert not rows._pushable(pq.read_schema(path))
    for selection in ({"methods": ["Face2Face"], "splits": ["test"]}, {}):
        pd.testing.assert_frame_equal(ManifestDataset(path, **selection).frame, todays_frame(path, selection))


def test_only_the_kept_columns_are_read_and_the_filter_runs_inside_the_read(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "manifest.parquet")
    calls = []
    read_table = manifest.read_table

    def spy(*args, **kwargs):
        table = read_table(*args, **kwargs)
        calls.append((args, kwargs, table))
        return table

    monkeypatch.setattr(manifest, "read_table", spy)
    selection = {"splits": ["train"], "methods": ["Deepfakes"]}
    dataset = ManifestDataset(path, **selection)
    ((args, kwargs, table),) = calls
    assert args[1] == [*rows.COLUMNS, *rows.PACKED]  # no face box, score, detector (packed columns: none here)
    assert table.column_names == list(rows.COLUMNS)
    assert kwargs["where"] is not None
    assert table.num_rows == len(dataset) == len(todays_frame(path, selection)) < pq.read_metadata(path).num_rows
    assert all(pa.types.is_dictionary(table.schema.field(c).type) for c in rows.CATEGORICAL)  # no string per row


def test_compact_columns(tmp_path):
    path = write_manifest(tmp_path / "manifest.parquet")
    table = rows.read_rows(path, rows.Selection.of(splits=["train"]))
    assert table.column_names == list(rows.COLUMNS)
    assert all(table.column(c).num_chunks == 1 for c in rows.COLUMNS if c != "path")  # paths: as read, not copied
    shared = rows.shared_rows(path, tmp_path / "rows.arrow", rows.Selection.of(splits=["train"]))
    assert shared.equals(table) and all(column.num_chunks == 1 for column in shared.columns)  # one mapped view each
    assert table.schema.field("label").type == pa.int8() and table.schema.field("frame").type == pa.int32()
    assert table.schema.field("dataset").type == pa.dictionary(pa.int8(), pa.string())
    assert table.schema.metadata[rows.ROOT] == str(tmp_path.resolve()).encode()


def test_shared_rows_are_mapped_reused_and_rebuilt_when_the_manifest_or_selection_changes(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "manifest.parquet")
    cache = tmp_path / "run" / "rows" / "train.arrow"
    train = rows.Selection.of(splits=["train"])
    first = rows.shared_rows(path, cache, train)
    assert first.equals(rows.read_rows(path, train))
    assert [p.name for p in cache.parent.iterdir()] == ["train.arrow"]  # no temporary file left
    allocated = pa.total_allocated_bytes()
    mapped = rows.open_shared(cache, rows.cache_key(path, train, False))
    assert mapped.equals(first) and pa.total_allocated_bytes() <= allocated  # views of the file, no copy

    built = []
    read_rows = rows.read_rows
    monkeypatch.setattr(rows, "read_rows", lambda *a, **k: built.append(a) or read_rows(*a, **k))
    rows.shared_rows(path, cache, train)
    assert built == []  # reused
    rows.shared_rows(path, cache, rows.Selection.of(splits=["val"]))
    assert len(built) == 1  # another selection
    write_manifest(path, seed=1)  # the manifest rewritten
    rebuilt = rows.shared_rows(path, cache, train)
    assert len(built) == 2 and rebuilt.equals(read_rows(path, train)) and not rebuilt.equals(first)
    damaged = cache.read_bytes()[:100]
    cache.unlink()  # files are replaced, never rewritten in place: processes may still map the old one
    cache.write_bytes(damaged)  # a damaged copy is rebuilt too
    assert rows.shared_rows(path, cache, train).equals(rebuilt) and len(built) == 3


def test_a_write_that_fails_leaves_the_previous_copy_whole(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "manifest.parquet")
    cache = tmp_path / "rows.arrow"
    train = rows.Selection.of(splits=["train"])
    before = rows.shared_rows(path, cache, train)
    content = cache.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pa.ipc.RecordBatchFileWriter, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        rows.shared_rows(path, cache, rows.Selection.of(splits=["test"]))
    assert cache.read_bytes() == content and sorted(os.listdir(tmp_path)) == ["manifest.parquet", "rows.arrow"]
    monkeypatch.undo()
    assert rows.shared_rows(path, cache, train).equals(before)


def test_training_start_up_reads_the_same_rows_with_and_without_the_shared_copy(tmp_path):
    path = write_manifest(tmp_path / "manifest.parquet")
    configs = Path(__file__).parents[1] / "configs" / "recce" / "ffpp_c23.yaml"
    results = {}
    for shared, methods in itertools.product(("true", "false"), ("null", "[Deepfakes]")):
        overrides = [f"data.manifest={path}", "data.datasets=null", "data.compressions=null"]
        overrides += [f"data.methods={methods}", f"data.shared_rows={shared}", f"train.out={tmp_path / shared}"]
        train_set, val_set = load_datasets(load_config(configs, overrides))
        results[shared, methods] = (train_set.frame, val_set.frame)
        assert (tmp_path / shared / "rows" / "train.arrow").is_file() == (shared == "true")
    for methods in ("null", "[Deepfakes]"):
        for mine, theirs in zip(results["true", methods], results["false", methods], strict=True):
            pd.testing.assert_frame_equal(mine, theirs)
    selection = {"splits": ["train"], "methods": ["Deepfakes"]}
    pd.testing.assert_frame_equal(results["true", "[Deepfakes]"][0], todays_frame(path, selection))
