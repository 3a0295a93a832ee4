"""Safe, resumable tar extraction for downloaded datasets (e.g. WildDeepfake's archives).

Every member is checked before anything is written: absolute paths, `..` components, symbolic and hard
links, devices and FIFOs are refused, so a hostile archive cannot write outside its folder or plant
links. Extraction goes to a hidden temporary folder beside the destination, which is renamed into place
once complete, together with a marker listing the files; an interrupted run therefore leaves no
half-filled destination, and a finished one is not redone.

Sizes are checked from the member headers before anything is written too: an archive whose files total more
than `max_bytes`, expand more than `max_expansion` times the archive's own size, or number more than
`max_members` is refused (a small compressed archive must not fill the disk); `ArchiveLimits` holds the three,
which `recce extract --archive-max-*` sets.
"""

from __future__ import annotations

import fcntl
import json
import lzma
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .indexers.base import DatasetLayoutError

MARKER = ".recce-extracted.json"
MAX_BYTES = 64 * 2**30  # total size of the extracted files
MAX_MEMBERS = 500_000
MAX_EXPANSION = 100  # extracted size / archive size; frames are PNG or JPEG and barely compress
_EXPANSION_FREE_BYTES = 64 * 2**20  # below this total, any expansion is harmless


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may unpack to before it is refused unread."""

    max_bytes: int = MAX_BYTES  # total size of its files
    max_members: int = MAX_MEMBERS
    max_expansion: float = MAX_EXPANSION  # files' total size / archive size

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_members <= 0 or self.max_expansion <= 0:
            raise ValueError(f"archive limits must be positive, got {self}")


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted, or None when it is a plain file or folder inside the archive."""
    name = member.name.replace("\\", "/")
    if not name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' path component"
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isreg() or member.isdir()):
        return "unsupported member type"
    return None


def ends_with_end_block(tar: tarfile.TarFile) -> bool:
    """Whether the member list stopped at the zero block that ends a tar archive.

    tarfile stops listing members quietly at a cut-off header, so without this check an archive
    truncated by an interrupted download would extract "successfully" with members missing.
    """
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE


def archive_stamp(archive: Path) -> dict[str, object]:
    """What identifies the archive a destination was extracted from; a changed archive is re-extracted."""
    stat = archive.stat()
    return {"archive": archive.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def completed_files(dest: Path, stamp: dict[str, object]) -> list[Path] | None:
    """The files of a finished extraction of the same archive into dest, or None if there is none."""
    try:
        marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or any(marker.get(key) != value for key, value in stamp.items()):
        return None
    return [dest / name for name in marker.get("files", [])]


def write_marker(folder: Path, stamp: dict[str, object], files: list[str]) -> None:
    temporary = folder / f"{MARKER}.tmp"
    temporary.write_text(json.dumps({**stamp, "files": files}), encoding="utf-8")
    os.replace(temporary, folder / MARKER)


def checked_members(tar: tarfile.TarFile, archive: Path, limits: ArchiveLimits) -> list[tarfile.TarInfo]:
    """The members, read header by header and refused as soon as a limit or a member type is exceeded."""
    members: list[tarfile.TarInfo] = []
    total = 0
    max_bytes, max_members, max_expansion = limits.max_bytes, limits.max_members, limits.max_expansion
    allowed = max(_EXPANSION_FREE_BYTES, max_expansion * archive.stat().st_size)
    for member in tar:
        problem = member_problem(member)
        if problem:
            raise DatasetLayoutError(f"{archive}: member {member.name!r} rejected: {problem}")
        members.append(member)
        total += member.size if member.isreg() else 0
        if len(members) > max_members:
            raise DatasetLayoutError(
                f"{archive}: refused, more than {max_members} members (raise it with --archive-max-members)"
            )
        if total > max_bytes:
            raise DatasetLayoutError(
                f"{archive}: refused, its files total more than {max_bytes} bytes (raise it with --archive-max-bytes)"
            )
        if total > allowed:
            raise DatasetLayoutError(
                f"{archive}: refused, its files total more than {max_expansion:g} times the archive's size "
                "(a decompression bomb, or raise it with --archive-max-expansion)"
            )
    return members


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    limits: ArchiveLimits = ArchiveLimits(),
) -> list[Path]:
    """Extract a tar archive (plain or compressed) into dest and return the extracted files.

    Resumable: a dest already holding a completed extraction of this archive (same name, size and
    modification time) is returned as is. A dest that exists without such a marker is not ours to
    overwrite and is an error. Runs that need the same dest (two extractions of one dataset into different
    output folders) take turns on a lock on the archive itself: the second waits, then finds the first one's
    extraction complete.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DatasetLayoutError(f"{archive}: archive not found")
    fd = os.open(archive, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, or when this process dies
        return _extract_unlocked(archive, dest, limits)
    finally:
        os.close(fd)


def _extract_unlocked(archive: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    stamp = archive_stamp(archive)
    done = completed_files(dest, stamp)
    if done is not None:
        return done
    if dest.exists() and not (dest / MARKER).is_file():
        raise DatasetLayoutError(
            f"{dest}: exists but is not a completed extraction of {archive}; remove it to extract again"
        )
    partial = dest.parent / f".{dest.name}.partial"
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = checked_members(tar, archive, limits)
            if not ends_with_end_block(tar):
                raise DatasetLayoutError(f"{archive}: truncated (no end-of-archive block after the last member)")
            if partial.exists():
                shutil.rmtree(partial)  # left by an interrupted run
            partial.mkdir(parents=True)
            data_filter = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(partial, members=members, **data_filter)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetLayoutError(f"{archive}: cannot be extracted ({error})") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    files = sorted({PurePosixPath(member.name).as_posix() for member in members if member.isreg()})
    write_marker(partial, stamp, files)
    if dest.exists():  # a completed extraction of an older version of the archive
        stale = dest.parent / f".{dest.name}.stale"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(dest, stale)
        os.replace(partial, dest)
        shutil.rmtree(stale)
    else:
        os.replace(partial, dest)
    return [dest / name for name in files]
