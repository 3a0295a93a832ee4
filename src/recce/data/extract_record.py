"""The record of an extraction's finished items, so that a rerun costs the work left, not the work done.

Workers mark an item done by its part file (see recce.data.extract). The parent process then absorbs finished
parts in batches: their manifest rows go to one Parquet file under `parts/rows/` (temporary name, then rename),
and one SQLite transaction in `parts/record.sqlite` records each item with that file, its face detector and its
frames without a face. A rerun reads the record in one query and opens no part file; parts not yet recorded (a
kill before the batch was absorbed, or a folder written before the record existed) are absorbed on the next run.
A rows file that no committed transaction names (a kill between the rename and the commit) is deleted on start.

The manifest is rewritten only when the recorded items of the shard changed since it was written; otherwise the
rerun returns the stored counts. Shards of one extraction share the record (SQLite locks the file between
processes); each shard only deletes rows files carrying its own name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RECORD_FILE = "record.sqlite"
ROWS_DIR = "rows"
KEY_COLUMN = "_record_key"
BATCH = 256  # finished items per absorbed batch: one rows file and one transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, rows_file TEXT NOT NULL, detector TEXT NOT NULL, no_face TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Finished:
    """One recorded item: where its rows are, which face detector made them, its sampled frames without a face."""

    rows_file: str
    detector: str
    no_face: list[int]


class ExtractRecord:
    """The SQLite record under `parts_root` (the output folder's parts/), used by one process of one shard."""

    def __init__(self, parts_root: Path, tag: str) -> None:
        self.root = parts_root
        self.tag = tag  # this shard's name in its rows files
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ROWS_DIR).mkdir(exist_ok=True)
        self._db = sqlite3.connect(self.root / RECORD_FILE, timeout=600, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._remove_orphans()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ExtractRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remove_orphans(self) -> None:
        named = self.rows_files()
        for path in (self.root / ROWS_DIR).iterdir():
            if path.name.startswith((f"{self.tag}-", f".{self.tag}-")) and path.name not in named:
                path.unlink(missing_ok=True)

    def finished(self) -> dict[str, Finished]:
        """Every recorded item, read in one query."""
        query = "SELECT key, rows_file, detector, no_face FROM items"
        return {
            key: Finished(rows_file, detector, json.loads(no_face))
            for key, rows_file, detector, no_face in self._db.execute(query)
        }

    def has_items(self, prefix: str) -> bool:
        """Whether an item whose key starts with `prefix` is recorded (one indexed lookup)."""
        query = "SELECT 1 FROM items WHERE key >= ? AND key < ? LIMIT 1"
        return self._db.execute(query, (prefix, prefix + "\U0010ffff")).fetchone() is not None

    def rows_files(self) -> set[str]:
        """The rows files the record names."""
        return {name for (name,) in self._db.execute("SELECT DISTINCT rows_file FROM items")}

    def absorb(self, parts: Sequence[tuple[str, pa.Table, str, list[int]]], stem: str | None = None) -> None:
        """Record finished items (key, manifest rows, detector, no-face frames): rows file first, then one commit.

        `stem` names the rows file (`<stem>.parquet`, e.g. after the crops' tar shard; it must start with the
        tag); by default a fresh unique name."""
        if not parts:
            return
        tables = [
            table.append_column(KEY_COLUMN, pa.array([key] * len(table), pa.string())) for key, table, *_ in parts
        ]
        name = f"{stem or f'{self.tag}-{uuid.uuid4().hex}'}.parquet"
        path = self.root / ROWS_DIR / name
        tmp = path.with_name(f".{name}.tmp")
        pq.write_table(pa.concat_tables(tables, promote_options="default"), tmp)
        os.replace(tmp, path)
        values = [(key, name, detector, json.dumps(no_face)) for key, _, detector, no_face in parts]
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?)", values)

    def rows(self, wanted: dict[str, Finished]) -> pa.Table:
        """The manifest rows of the wanted items, each item's from the rows file the record names for it."""
        by_file: dict[str, set[str]] = {}
        for key, finished in wanted.items():
            by_file.setdefault(finished.rows_file, set()).add(key)
        tables = []
        for name, keys in sorted(by_file.items()):
            table = pq.read_table(self.root / ROWS_DIR / name)
            keep = pc.is_in(table[KEY_COLUMN], value_set=pa.array(sorted(keys), pa.string()))
            tables.append(table.filter(keep).drop_columns([KEY_COLUMN]))
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def output_state(self, name: str) -> dict | None:
        row = self._db.execute("SELECT state FROM outputs WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_output_state(self, name: str, state: dict) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?)", (name, json.dumps(state)))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; shards wait for each other's write lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
