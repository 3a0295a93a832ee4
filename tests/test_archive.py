"""Safe, resumable tar extraction: hostile members are refused, good archives land complete or not at all."""

from __future__ import annotations

import fcntl
import io
import os
import tarfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from recce.data.archive import MARKER, safe_extract
from recce.data.indexers import DatasetLayoutError


def png_bytes(value: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((8, 8, 3), value, dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def good_archive(path: Path, mode: str = "w") -> dict[str, bytes]:
    """A WildDeepfake-like archive: <n>/<label>/<sequence>/<frame>.png."""
    files = {f"12/real/{seq}/{frame}.png": png_bytes(10 * seq + frame) for seq in (3, 4) for frame in (0, 1)}
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            add_file(tar, name, data)
    return files


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_good_archive_extracts_every_frame(tmp_path: Path, mode: str) -> None:
    archive = tmp_path / "12.tar.gz"  # plain tar despite the suffix, as WildDeepfake ships; gzip works too
    files = good_archive(archive, mode)
    dest = tmp_path / "out" / "12"
    extracted = safe_extract(archive, dest)
    assert sorted(extracted) == sorted(dest / name for name in files)
    for name, data in files.items():
        decoded = cv2.imread(str(dest / name))
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decoded, expected)
    assert leftovers(tmp_path / "out") == ["12"]  # no temporary folder left beside it
    assert (dest / MARKER).is_file()


@pytest.mark.parametrize(
    ("build", "member", "reason"),
    [
        (lambda tar: add_file(tar, "/abs/evil.png", b"x"), "/abs/evil.png", "absolute path"),
        (lambda tar: add_file(tar, "../evil.png", b"x"), "../evil.png", "'..' path component"),
        (lambda tar: add_file(tar, "12/../../evil.png", b"x"), "12/../../evil.png", "'..' path component"),
        (lambda tar: add_special(tar, "12/link", tarfile.SYMTYPE, "/etc/passwd"), "12/link", "symbolic link"),
        (lambda tar: add_special(tar, "12/hard", tarfile.LNKTYPE, "12/real/3/0.png"), "12/hard", "hard link"),
        (lambda tar: add_special(tar, "12/tty", tarfile.CHRTYPE), "12/tty", "device file"),
        (lambda tar: add_special(tar, "12/disk", tarfile.BLKTYPE), "12/disk", "device file"),
        (lambda tar: add_special(tar, "12/pipe", tarfile.FIFOTYPE), "12/pipe", "FIFO"),
    ],
)
def test_hostile_member_is_rejected_before_anything_is_written(tmp_path: Path, build, member, reason) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "12/real/3/0.png", png_bytes(1))
        build(tar)
    out = tmp_path / "out"
    with pytest.raises(DatasetLayoutError) as caught:
        safe_extract(archive, out / "bad")
    message = str(caught.value)
    assert str(archive) in message and repr(member) in message and reason in message
    assert leftovers(out) == []
    assert not (tmp_path / "evil.png").exists()


def test_completed_extraction_is_not_redone(tmp_path: Path) -> None:
    archive = tmp_path / "12.tar"
    files = good_archive(archive)
    dest = tmp_path / "out" / "12"
    first = safe_extract(archive, dest)
    frame = dest / "12/real/3/0.png"
    frame.write_bytes(b"edited after extraction")
    assert safe_extract(archive, dest) == first
    assert frame.read_bytes() == b"edited after extraction"  # untouched: the archive was not read again
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a re-downloaded archive
    assert safe_extract(archive, dest) == first
    assert frame.read_bytes() == files["12/real/3/0.png"]
    assert leftovers(tmp_path / "out") == ["12"]


def test_interrupted_extraction_is_cleaned_and_redone(tmp_path: Path) -> None:
    archive = tmp_path / "12.tar"
    files = good_archive(archive)
    out = tmp_path / "out"
    partial = out / ".12.partial"  # what a killed run leaves: an incomplete temporary folder
    (partial / "12/real/3").mkdir(parents=True)
    (partial / "12/real/3/0.png").write_bytes(b"trunc")
    extracted = safe_extract(archive, out / "12")
    assert len(extracted) == len(files)
    assert (out / "12/12/real/3/0.png").read_bytes() == files["12/real/3/0.png"]
    assert leftovers(out) == ["12"]


def test_foreign_destination_is_not_overwritten(tmp_path: Path) -> None:
    archive = tmp_path / "12.tar"
    good_archive(archive)
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep")
    with pytest.raises(DatasetLayoutError, match="is not a completed extraction"):
        safe_extract(archive, dest)
    assert (dest / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("keep_bytes", "message"),
    [
        (0, "cannot be extracted"),  # garbage instead of a tar
        (540, "cannot be extracted"),  # cut inside the first frame's data
        (1024 + 300, "truncated"),  # cut inside the second header: tarfile alone would stop quietly there
        (3 * 1024, "truncated"),  # cut exactly between members: the fourth frame is missing
    ],
)
def test_damaged_archive_is_a_clear_error_and_leaves_nothing(tmp_path: Path, keep_bytes: int, message: str) -> None:
    archive = tmp_path / "12.tar.gz"
    if keep_bytes:
        good_archive(archive)
        archive.write_bytes(archive.read_bytes()[:keep_bytes])
    else:
        archive.write_bytes(b"this is not a tar archive" * 40)
    out = tmp_path / "out"
    with pytest.raises(DatasetLayoutError, match=rf"12\.tar\.gz: {message}"):
        safe_extract(archive, out / "12")
    assert leftovers(out) == []


def test_two_runs_unpacking_one_archive_take_turns(tmp_path: Path) -> None:
    """A second extraction of the same dataset (another --out) waits for the first one's unpacking, then reuses it."""
    archive = tmp_path / "12.tar"
    files = good_archive(archive)
    dest = tmp_path / "extracted" / "12"
    holder = os.open(archive, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the first run, mid-extraction
    result: list[list[Path]] = []
    waiting = threading.Thread(target=lambda: result.append(safe_extract(archive, dest)))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and not (tmp_path / "extracted").exists()
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    assert sorted(result[0]) == sorted(dest / name for name in files)
    assert safe_extract(archive, dest) == result[0]
