"""Packed crops: WebDataset-style tar shards of the encoded crops, read by random access through byte offsets.

A shard is a plain POSIX (pax) tar whose members are the crops' encoded bytes, exactly what the file layout writes,
named by the crop's manifest path (`crops/<dataset>/<video>/<frame>.png`), so `tar -x` recreates that layout, `tar
-t`, the `webdataset` library and object-storage tools stream it, and each member is one sample (key = the path
without its extension). The manifest's `shard` (relative to its folder), `offset` (first byte of the member's
data in the tar) and `size` columns let a map-style dataset read any row with one positioned read; the 512-byte
tar header just before the data is read with it and checked, so a manifest that does not match its shard is a
one-line error, never a wrong image.

Shards are written under a temporary name and renamed when closed: a killed writer leaves only a temporary file,
never half a shard under a final name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from recce.data import manifest
from recce.data.video import MediaError
from recce.locks import OutputLock

logger = logging.getLogger("recce")

BLOCK = tarfile.BLOCKSIZE
SHARDS_DIR = "shards"  # beside the manifest: shards/<manifest name>-NNNNNN.tar
DEFAULT_PACK_MB = 1024  # shard size cap; see README "Packed crops" for the choice
MAX_OPEN = 32  # shard files one process keeps open
_REGULAR = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.?(?:/|$))(?!.*//)[^\x00]+$")  # relative, no `.`/`..`/empty segment


class PackError(ValueError):
    """A packing job that cannot start (bad option, output folder in use)."""


def member_name(path: str) -> str:
    """The tar member of a crop: its manifest path when that is a plain relative path (so extracting the tar
    recreates the file layout), else a name from its hash, which never escapes the folder it is extracted into."""
    if _REGULAR.match(path):
        return path
    suffix = Path(path).suffix.lower()
    return f"#hashed/{hashlib.sha256(path.encode('utf-8')).hexdigest()}{suffix}"


def _header(name: str, size: int) -> bytes:
    """The member's header block(s) as `tarfile` writes them (pax for long or non-ASCII names); fixed owner and
    time, so packing the same crops twice gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class ShardWriter:
    """Numbered tar shards `<prefix>-NNNNNN.tar` in `folder`, each closed once it holds `limit` bytes or more.

    Members go straight to the open shard's temporary file; `add` is all or nothing for its members (a failure
    or Ctrl-C part way truncates the file back), so a closed shard never holds half a member.
    """

    def __init__(self, folder: Path, prefix: str, limit: int, first: int = 0) -> None:
        if limit <= 0:
            raise PackError(f"shard size must be positive, got {limit} bytes")
        self.folder, self.prefix, self.limit, self.number = folder, prefix, limit, first
        self._file = None
        self.size = 0  # bytes in the open shard

    @property
    def name(self) -> str:
        """The open (or next) shard's file name."""
        return f"{self.prefix}-{self.number:06d}.tar"

    @property
    def is_open(self) -> bool:
        return self._file is not None

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def _temporary(self) -> Path:
        return self.folder / f".{self.name}.tmp"

    def add(self, members: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append (member name, data) pairs to the open shard (opened on first use); the data offsets."""
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self._temporary(), "wb")  # noqa: SIM115 (kept open across calls, closed in close())
            self.size = 0
        start, offsets, chunks = self.size, [], []
        position = start
        for name, data in members:
            header = _header(name, len(data))
            offsets.append(position + len(header))
            padding = -len(data) % BLOCK
            chunks += [header, data, b"\0" * padding]
            position += len(header) + len(data) + padding
        try:
            self._file.writelines(chunks)
            self._file.flush()
        except BaseException:
            self.truncate(start)
            raise
        self.size = position
        return offsets

    def truncate(self, size: int) -> None:
        """Cut the open shard back to `size` bytes, the end of an earlier `add` (undoes the later ones)."""
        self._file.seek(size)
        self._file.truncate()
        self.size = size

    def close(self) -> Path | None:
        """Finish the open shard (the two zero blocks that end a tar) and rename it into place; its final path.
        Interrupted, it leaves the temporary file, which no record names."""
        if self._file is None:
            return None
        file, self._file = self._file, None
        file.write(b"\0" * (2 * BLOCK))
        file.close()
        final = self.folder / self.name
        self.number += 1
        os.replace(self.folder / f".{final.name}.tmp", final)
        return final


def remove_unreferenced(folder: Path, prefix: str, referenced: Iterable[str]) -> int:
    """Delete this prefix's temporary shards and the closed ones not `referenced` (a kill between the rename and
    the record's commit); the next free shard number. Other prefixes' shards (other extraction shards) are kept."""
    pattern = re.compile(rf"^(\.?){re.escape(prefix)}-(\d{{6,}})\.tar(\.tmp)?$")
    keep, numbers = set(referenced), [-1]
    for path in folder.iterdir() if folder.is_dir() else ():
        if not (match := pattern.match(path.name)):
            continue
        closed = not match[1] and not match[3]
        if closed and path.name in keep:
            numbers.append(int(match[2]))
        elif bool(match[1]) == bool(match[3]):  # a temporary `.<name>.tar.tmp` or an unreferenced shard
            path.unlink(missing_ok=True)
    return max(numbers) + 1


class ShardReader:
    """Reads members of shard files by offset: files opened lazily in the reading process (a DataLoader worker
    reopens rather than use its parent's descriptors), at most MAX_OPEN at once, least recently used closed first."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self._pid = -1
        self._open: OrderedDict[str, int] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "_pid": -1, "_open": OrderedDict()}

    def _descriptor(self, shard: str, member: str) -> int:
        if self._pid != os.getpid():  # forked: the inherited descriptors are this process's copies, close them
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()
            self._pid = os.getpid()
        fd = self._open.get(shard)
        if fd is not None:
            self._open.move_to_end(shard)
            return fd
        try:
            fd = os.open(shard, os.O_RDONLY)
        except FileNotFoundError:
            raise MediaError(f"{shard}: shard not found (member {member})") from None
        except OSError as error:
            raise MediaError(f"{shard}: shard not readable ({error.strerror}; member {member})") from None
        self._open[shard] = fd
        if len(self._open) > self.max_open:
            os.close(self._open.popitem(last=False)[1])
        return fd

    def read(self, shard: str, offset: int, size: int, member: str) -> bytes:
        """The member's bytes, after checking the tar header before them names this size."""
        if offset < BLOCK or size < 0:
            raise MediaError(f"{shard}: member {member}: offset {offset} and size {size} are not a tar member's")
        fd = self._descriptor(shard, member)
        data = os.pread(fd, size + BLOCK, offset - BLOCK)
        if len(data) < size + BLOCK:
            raise MediaError(
                f"{shard}: member {member} is truncated (the shard ends before byte {offset + size} of it)"
            )
        try:
            info = tarfile.TarInfo.frombuf(data[:BLOCK], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            info = None
        if info is None or info.size != size:
            raise MediaError(f"{shard}: member {member}: no tar header of its size at offset {offset - BLOCK}")
        return data[BLOCK:]

    def image(self, shard: str, offset: int, size: int, member: str) -> np.ndarray:
        """The member decoded as cv2.imread reads a file: BGR uint8."""
        data = self.read(shard, offset, size, member)
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
        if image is None:
            raise MediaError(f"{shard}: member {member} is not a readable image")
        return image

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._open.values():
                os.close(fd)
        self._open.clear()

    def __del__(self) -> None:
        self.close()


def missing_crops(frame: pd.DataFrame) -> list[str]:
    """One entry per row of a `manifest.read` frame whose crop file or shard file is not there: the file."""
    packed = frame[manifest.SHARD_ABSPATH].notna() if manifest.SHARD_ABSPATH in frame else None
    files = frame["abspath"] if packed is None else frame.loc[~packed, "abspath"]
    missing = [p for p in files if not os.path.isfile(p)]
    if packed is not None:
        shards = frame.loc[packed, manifest.SHARD_ABSPATH].astype(str)
        present = {s: os.path.isfile(s) for s in shards.unique()}
        missing += [s for s in shards if not present[s]]
    return missing


@dataclass
class PackSummary:
    manifest: Path
    rows: int  # packed
    shards: int
    bytes: int  # in the shards
    failures: list[tuple[str, str]] = field(default_factory=list)  # (crop, reason), left out of the new manifest

    @property
    def failures_file(self) -> Path:
        return self.manifest.with_name(f"{self.manifest.stem}-pack-failures.csv")


def pack_manifest(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    limit: int = DEFAULT_PACK_MB * 2**20,
    group_videos: bool = False,
    progress: bool = True,
) -> PackSummary:
    """Pack the crops of an existing manifest into tar shards in `out_dir`, with a manifest of the same name there.

    Rows keep the manifest's order (with `group_videos`, each video's rows move up to its first row, so its frames
    lie together) and every column, `path` included (the crop's name, and its augmentation seed in training);
    `shard`, `offset` and `size` say where its bytes now are. The bytes are copied, not decoded, so the pixels are
    the files'. A crop that cannot be read is left out, listed in `<name>-pack-failures.csv` and counted.
    Already packed rows are copied from their shards. Shards are renamed into place when closed, and the manifest
    is written last, so a killed run leaves no manifest pointing at unfinished shards; its rerun starts over
    (deleting the shards the killed run left, so `out_dir` must not be an extraction's output folder).
    """
    source, out_dir = Path(source), Path(out_dir)
    frame = manifest.read(source)
    target = out_dir / source.name
    if target.exists():
        raise PackError(f"{target}: already exists; pack into another folder or delete it first")
    if (out_dir / "parts" / "record.sqlite").exists():  # recce.data.extract's record: its shards are not ours
        raise PackError(f"{out_dir}: holds an extraction (parts/record.sqlite); pack into a folder of its own")
    if group_videos:
        videos = pd.factorize(frame["dataset"].astype(str) + "\x1f" + frame["video"].astype(str))[0]
        frame = frame.iloc[np.argsort(videos, kind="stable")].reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_dir, "recce manifest pack"):
        prefix = source.stem
        folder = out_dir / SHARDS_DIR
        writer = ShardWriter(folder, prefix, limit, remove_unreferenced(folder, prefix, ()))
        reader = ShardReader()
        shards = np.full(len(frame), None, dtype=object)
        offsets = np.zeros(len(frame), dtype=np.int64)
        sizes = np.zeros(len(frame), dtype=np.int64)
        failures: list[tuple[str, str]] = []
        packed_rows = frame["shard"].notna().to_numpy(dtype=bool) if "shard" in frame else np.zeros(len(frame), bool)
        paths, files, names = frame["path"].astype(str).tolist(), frame["abspath"].tolist(), []
        for row in tqdm(range(len(frame)), unit="crop", desc=f"pack {source.name}", disable=None if progress else True):
            try:
                data = _crop_bytes(frame, row, reader) if packed_rows[row] else Path(files[row]).read_bytes()
            except (OSError, MediaError) as error:
                reason = str(error) if isinstance(error, MediaError) else f"{files[row]}: {error.strerror or error}"
                failures.append((paths[row], reason))
                logger.warning("%s", reason)
                continue
            if not data:
                failures.append((paths[row], f"{files[row]}: empty file"))
                logger.warning("%s: empty file", files[row])
                continue
            (offsets[row],) = writer.add([(member_name(paths[row]), data)])
            shards[row], sizes[row] = f"{SHARDS_DIR}/{writer.name}", len(data)
            if writer.full:
                names.append(writer.close())
        if writer.is_open:
            names.append(writer.close())
        reader.close()
        kept = shards != None  # noqa: E711 (element-wise)
        result = frame.drop(columns=[c for c in ("abspath", manifest.SHARD_ABSPATH) if c in frame])[kept]
        result = result.assign(shard=shards[kept], offset=offsets[kept], size=sizes[kept])
        summary = PackSummary(target, int(kept.sum()), len(names), sum(p.stat().st_size for p in names), failures)
        if failures:
            buffer = io.StringIO()
            csv.writer(buffer).writerows([("path", "reason"), *failures])
            summary.failures_file.write_text(buffer.getvalue(), encoding="utf-8")
        manifest.write(result, target)
    return summary


def _crop_bytes(frame: pd.DataFrame, row: int, reader: ShardReader) -> bytes:
    shard = str(frame[manifest.SHARD_ABSPATH].iat[row])
    path = str(frame["path"].iat[row])
    return reader.read(shard, int(frame["offset"].iat[row]), int(frame["size"].iat[row]), member_name(path))
