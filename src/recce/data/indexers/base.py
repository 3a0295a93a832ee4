"""What every dataset indexer produces, and the checks they share.

An indexer reads a dataset laid out as its publishers distribute it and lists its media items (videos,
frame folders or images) with split and label. It never decodes media, so it is fast and testable on
dummy files; face extraction reads the items later.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from recce.data.video import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")
KINDS = ("video", "frames", "image")

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # one list for indexers, detect, visualize and the web app


class DatasetLayoutError(ValueError):
    """A dataset that does not match its documented layout; the message names the file or folder."""


@dataclass(frozen=True)
class MediaItem:
    """One video, frame sequence or image of a dataset, with its split and label."""

    dataset: str  # ffpp, celebdf, dfdc, dfdcp, wilddeepfake, folder
    split: str  # train, val or test
    video: str  # unique within the dataset and usable as a relative folder name ("/" separators)
    label: int  # 0 real, 1 fake
    method: str  # manipulation for fakes, source for reals
    compression: str  # raw, c23, c40 for FF++; "" when unknown
    source: Path  # the video file, the folder of frames or the image file
    kind: str  # video, frames or image

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"{self.video}: split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.label not in (0, 1):
            raise ValueError(f"{self.video}: label {self.label!r} is not 0 (real) or 1 (fake)")
        if self.kind not in KINDS:
            raise ValueError(f"{self.video}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


@dataclass
class IndexResult:
    """The items found, plus what was skipped and why, so nothing is dropped silently."""

    items: list[MediaItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    shard: tuple[int, int] | None = None  # the items are this shard's only (see `shard_items`)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode): the same for every name of one file (links included); None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def walk_files(root: Path) -> Iterator[Path]:
    """Files under root, sorted, without following folder links (a link up the tree would loop), each file once."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            identity = file_identity(path)
            if identity is not None and identity not in seen and path.is_file():
                seen.add(identity)
                yield path


Shard = tuple[int, int]  # (K, N): the K-th of N shards, K counted from 1


def shard_items(items: Sequence[MediaItem], shard: Shard | None) -> list[MediaItem]:
    """Items in a fixed order (dataset, video id), keeping every N-th from position K-1 for shard K/N."""
    ordered = sorted(items, key=lambda item: (item.dataset, item.video, str(item.source)))
    if shard is None:
        return ordered
    k, n = shard
    return ordered[k - 1 :: n]


class _Disk:
    """Whether a path exists and which file it is, asked of the file system for each path."""

    def exists(self, path: Path) -> bool:
        return path.exists()

    def identity(self, path: Path) -> tuple[int, int] | None:
        return file_identity(path)


class _Listings(_Disk):
    """The same answers from one listing per folder (names and inode numbers, no stat per file); a link is
    followed with a stat. Only a hint: the items a shard keeps are checked again file by file."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[int, dict[str, os.DirEntry]] | None] = {}  # by name: no Path hashing

    def _entry(self, path: Path) -> tuple[int, os.DirEntry] | None:
        folder, name = os.path.split(str(path))
        listing = self._folders.get(folder, False)
        if listing is False:
            try:
                with os.scandir(folder) as entries:
                    listing = (os.stat(folder).st_dev, {entry.name: entry for entry in entries})
            except OSError:
                listing = None
            self._folders[folder] = listing
        entry = listing[1].get(name) if listing is not None else None
        return (listing[0], entry) if entry is not None else None

    def exists(self, path: Path) -> bool:
        found = self._entry(path)
        return found is not None and (not found[1].is_symlink() or path.exists())

    def identity(self, path: Path) -> tuple[int, int] | None:
        found = self._entry(path)
        if found is None or found[1].is_symlink():
            return file_identity(path)
        return found[0], found[1].inode()


class _Skipped(Exception):
    """A check dropped an item: under a shard, the listing's answers no longer tell every shard's items."""


class ItemCollector:
    """Gathers items; a listed file absent on disk is an error, or a counted skip under allow_missing.

    A file or folder reached under two names (links) is indexed once, so one video cannot land in several splits.

    With a `shard` (K, N) the result holds only that shard's items, the same as `shard_items` of the whole index,
    while only those items are checked file by file: the others are told apart from one listing per folder. Where
    the listings show an item that a check would drop (a missing file, a second name), or a kept item's own check
    disagrees with its listing, every item is checked as without a shard, so the shards never change.
    """

    def __init__(self, allow_missing: bool = False, shard: Shard | None = None) -> None:
        self.allow_missing = allow_missing
        self.shard = shard
        self._items: dict[str, MediaItem] = {}
        self._skipped: list[tuple[str, str]] = []
        self._sources: dict[tuple[int, int], Path] = {}
        self._events: list[tuple[MediaItem, Path | None] | tuple[str, str]] = []  # under a shard: checked at the end

    def add(self, item: MediaItem, listed_in: Path | None = None) -> None:
        """Add an item; with `listed_in` (the split or metadata file naming it) its source must exist."""
        if self.shard is not None:
            self._events.append((item, listed_in))
        else:
            self._check(item, listed_in, _Disk())

    def _check(self, item: MediaItem, listed_in: Path | None, disk: _Disk, strict: bool = False) -> None:
        if listed_in is not None and not disk.exists(item.source):
            if not self.allow_missing:
                raise DatasetLayoutError(
                    f"{item.source}: listed in {listed_in} but missing on disk (allow_missing skips such items)"
                )
            if strict:
                raise _Skipped
            self.skip(item.source, f"listed in {listed_in} but missing on disk")
            return
        previous = self._items.get(item.video)
        if previous is not None and previous != item:
            raise DatasetLayoutError(
                f"{item.source}: video id {item.video!r} also used by {previous.source} ({previous.split})"
            )
        identity = disk.identity(item.source)
        first = self._sources.setdefault(identity, item.source) if identity is not None else item.source
        if first != item.source:
            if strict:
                raise _Skipped
            self.skip(item.source, f"the same file as {first}, indexed once")
            return
        self._items[item.video] = item

    def skip(self, path: str | Path, reason: str) -> None:
        if self.shard is not None:
            self._events.append((str(path), reason))
        else:
            self._skipped.append((str(path), reason))

    def _replay(self, disk: _Disk, strict: bool) -> None:
        """Run the checks of every add and skip in their order, as without a shard."""
        self._items, self._skipped, self._sources = {}, [], {}
        shard, self.shard = self.shard, None
        try:
            for first, second in self._events:
                if isinstance(first, MediaItem):
                    self._check(first, second, disk, strict)
                else:
                    self.skip(first, second)
        finally:
            self.shard = shard

    def _sharded(self) -> list[MediaItem] | None:
        """This shard's items from the listings, each confirmed by its own checks; None when they cannot tell."""
        listings = _Listings()
        try:
            self._replay(listings, strict=True)
        except (_Skipped, DatasetLayoutError):
            return None
        mine = shard_items(self._items.values(), self.shard)
        if any(file_identity(item.source) != listings.identity(item.source) for item in mine):  # one stat each
            return None
        return mine

    def result(self) -> IndexResult:
        """Items in a stable order (split, then video id) whatever the file-system listing order."""
        items = list(self._items.values())
        if self.shard is not None:
            mine = self._sharded()
            if mine is None:
                self._replay(_Disk(), strict=False)
                mine = shard_items(self._items.values(), self.shard)
            items = mine
        order = {split: rank for rank, split in enumerate(SPLITS)}
        items = sorted(items, key=lambda item: (order[item.split], item.video))
        return IndexResult(items=items, skipped=list(self._skipped), shard=self.shard)


def read_json(path: Path) -> Any:
    """Load a JSON file, turning absence and syntax errors into one line naming the file."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetLayoutError(
            f"{path}: malformed JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except UnicodeDecodeError as error:
        raise DatasetLayoutError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: {what} folder not found")
    return path


def relative_media_path(name: str, listed_in: Path) -> PurePosixPath:
    """A dataset-relative path from a metadata file, refused if it could escape the dataset root."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts:
        raise DatasetLayoutError(f"{listed_in}: entry {name!r} is not a path inside the dataset")
    return path


def as_names(value: str | Iterable[str], option: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """Normalise a name-or-names option (a bare string means one name) and check each name."""
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError(f"{option}: give at least one of {', '.join(allowed)}")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(names))


def check_fraction(value: float, option: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{option} must be in [0, 1), got {value}")
    return value


def hash_unit(key: str) -> float:
    """A deterministic pseudo-random number in [0, 1) for a key, stable across runs and machines.

    Splits drawn by comparing it to a fraction keep every item's split fixed when items are added or
    removed, so re-indexing a grown dataset never moves a training item into a test set.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def lowest_hashed(keys: Iterable[str], fraction: float) -> set[str]:
    """The fraction * n (rounded half up) keys with the lowest hash: an exact-size deterministic subset."""
    unique = sorted(set(keys), key=lambda key: (hash_unit(key), key))
    return set(unique[: int(fraction * len(unique) + 0.5)])
