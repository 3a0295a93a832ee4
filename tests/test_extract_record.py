"""The extraction record: a rerun opens no part file, old output folders migrate, a kill between the rows file and
its commit leaves nothing twice."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from media import moving_face_frames, write_face_video, write_frame_folder

from recce.data.extract import ExtractSettings, extract
from recce.data.extract_record import RECORD_FILE, ROWS_DIR

SETTINGS = ExtractSettings(detector="none", frames=2, size=64)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder dataset and an output folder where every item is finished; returns (root, out)."""
    root = tmp_path_factory.mktemp("dataset")
    for i, label in enumerate(("real", "fake", "fake")):
        (root / label).mkdir(exist_ok=True)
        write_face_video(root / label / f"v{i}.mp4", n_frames=4, seed=i)
    frames, _ = moving_face_frames(1, seed=30)
    write_frame_folder(root / "real", frames, ["photo.png"])
    out = tmp_path_factory.mktemp("out")
    summary = extract("folder", root, out, SETTINGS, progress=False)
    assert summary.done == 4 and summary.failed == 0
    return root, out


def _copy(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy


def _parts(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "parts" / "folder").glob("*.parquet")}


def _recorded(out: Path) -> list[str]:
    with sqlite3.connect(out / "parts" / RECORD_FILE) as db:
        return sorted(key for (key,) in db.execute("SELECT key FROM items"))


def test_rerun_with_nothing_to_do_opens_no_part_file(finished, tmp_path):
    root, done = finished
    out = _copy(done, tmp_path)
    expected = pd.read_parquet(out / "manifest.parquet")
    for part in (out / "parts" / "folder").glob("*.parquet"):
        part.write_bytes(b"not a parquet file: a rerun that opened it would fail")
    written = (out / "manifest.parquet").stat().st_mtime_ns
    summary = extract("folder", root, out, SETTINGS, progress=False)
    assert (summary.done, summary.already_done, summary.collected.rows) == (0, 4, len(expected))
    assert (out / "manifest.parquet").stat().st_mtime_ns == written  # up to date: not rewritten
    (out / "manifest.parquet").unlink()  # a lost manifest is rebuilt from the record alone
    summary = extract("folder", root, out, SETTINGS, progress=False)
    assert summary.done == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), expected)


def test_folder_from_before_the_record_migrates(finished, tmp_path):
    root, done = finished
    out = _copy(done, tmp_path)
    expected = pd.read_parquet(out / "manifest.parquet")
    (out / "parts" / RECORD_FILE).unlink()
    shutil.rmtree(out / "parts" / ROWS_DIR)
    parts = _parts(out)
    summary = extract("folder", root, out, SETTINGS, progress=False)
    assert (summary.done, summary.already_done) == (0, 4)
    assert _parts(out) == parts  # nothing redone
    assert _recorded(out) == sorted(f"folder/{name}" for name in parts)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), expected)


def test_kill_between_rows_file_and_commit_leaves_no_duplicate(finished, tmp_path):
    root, done = finished
    out = _copy(done, tmp_path)
    expected = pd.read_parquet(out / "manifest.parquet")
    (rows_file,) = (out / "parts" / ROWS_DIR).iterdir()
    with sqlite3.connect(out / "parts" / RECORD_FILE) as db:  # the last item's commit never happened ...
        (forgotten,) = db.execute("SELECT key FROM items ORDER BY rowid DESC LIMIT 1").fetchone()
        db.execute("DELETE FROM items WHERE key = ?", (forgotten,))
    orphan = rows_file.with_name("manifest-0123456789abcdef.parquet")  # ... though its rows file was renamed
    shutil.copyfile(rows_file, orphan)
    parts, written = _parts(out), (out / "manifest.parquet").stat().st_mtime_ns
    summary = extract("folder", root, out, SETTINGS, progress=False)
    assert summary.done == 0 and _parts(out) == parts
    assert not orphan.exists() and forgotten in _recorded(out)
    assert (out / "manifest.parquet").stat().st_mtime_ns != written  # rebuilt: the record changed
    result = pd.read_parquet(out / "manifest.parquet")
    assert not result.duplicated(["video", "frame"]).any()
    pd.testing.assert_frame_equal(result, expected)
