"""WildDeepfake: per-sequence folders of already-cropped face frames, shipped as tar archives.

Layout (spec section 7.5): `{real_train,fake_train,real_test,fake_test}/<n>.tar.gz`, plain tar despite
the suffix (opened with "r:*", so gzip works too); each archive unpacks to
`<n>/<label_folder>/<sequence_id>/<frame>.png`. Archives are extracted safely and resumably to
`extract_to/<split_folder>/<n>/` (default `root/extracted`); a folder `<split_folder>/<n>/` already
extracted beside its archive is used as it is, and so is a completed extraction whose archive was
deleted afterwards to save space. Every folder that directly holds frames is one item of
kind "frames", with video id `<split_folder>/<path below the archive>`, e.g. `real_train/12/real/345`.
The label comes from the split folder (real_* or fake_*); a label folder literally named real or fake
that contradicts it is an error. The manipulation is unknown, and both classes come from internet
videos, so the method is "internet".

WildDeepfake has no validation split: `val_fraction` moves that share of the training archives (all the sequences of
an archive together, chosen by a stable hash of the archive's name, so neighbouring sequences of one source video
never straddle train and val) to "val".
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import archive
from .base import (
    IMAGE_EXTENSIONS,
    DatasetLayoutError,
    IndexResult,
    ItemCollector,
    MediaItem,
    Shard,
    check_fraction,
    hash_unit,
)

SPLIT_FOLDERS = {
    "real_train": ("train", 0),
    "fake_train": ("train", 1),
    "real_test": ("test", 0),
    "fake_test": ("test", 1),
}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CLASS_NAMES = ("real", "fake")


def archive_stem(path: Path) -> str | None:
    """The archive's name without its tar suffix, or None for a file that is not an archive."""
    return next((path.name[: -len(s)] for s in ARCHIVE_SUFFIXES if path.name.endswith(s)), None)


def frame_folders(tree: Path) -> list[Path]:
    """Folders under tree (itself included) that directly hold at least one image file."""
    found = []
    for folder, _, files in os.walk(tree):
        if any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in files):
            found.append(Path(folder))
    return sorted(found)


def unit_trees(
    folder: Path, extracted: Path, collector: ItemCollector, limits: archive.ArchiveLimits
) -> list[tuple[Path, Path]]:
    """(tree, base of its video ids) for every archive unit of one split folder, extracting as needed.

    A unit is read from, in order of preference: a folder extracted by the user beside its archive
    (ids relative to the split folder); a completed extraction of its archive (ids relative to the
    extraction folder), made now if missing or stale, or kept when the archive was deleted afterwards.
    An archive that cannot be extracted, or whose name gives no folder name (`...tar`), is reported to the
    collector and the others are read.
    """
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    units: dict[str, tuple[Path, Path]] = {}
    for entry in entries:
        if entry.is_dir() and not (entry / archive.MARKER).is_file():
            units[entry.name] = (entry, folder)
    for entry in entries:
        stem = archive_stem(entry)
        if stem is None or not entry.is_file() or stem in units:
            continue
        if not stem or stem.startswith("."):
            collector.skip(entry, "archive name leaves no usable folder name; rename it, e.g. 12.tar")
            continue
        try:
            archive.safe_extract(entry, extracted / stem, limits)
        except DatasetLayoutError as error:
            collector.skip(entry, str(error).removeprefix(f"{entry}: "))
            continue
        units[stem] = (extracted / stem, extracted / stem)
    for entry in sorted(extracted.iterdir()) if extracted.is_dir() else []:  # archives deleted since
        if (entry / archive.MARKER).is_file() and entry.name not in units:
            units[entry.name] = (entry, entry)
    return [units[stem] for stem in sorted(units)]


def index_wilddeepfake(
    root: Path,
    *,
    extract_to: str | Path | None = None,
    val_fraction: float = 0.0,
    archive_limits: archive.ArchiveLimits | None = None,
    shard: Shard | None = None,
) -> IndexResult:
    """Index WildDeepfake frame sequences, extracting archives that are not extracted yet (within `archive_limits`,
    default `archive.ArchiveLimits()`)."""
    val_fraction = check_fraction(val_fraction, "val_fraction")
    extract_to = Path(extract_to) if extract_to is not None else root / "extracted"
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir() or (extract_to / name).is_dir()]
    if not present:
        raise DatasetLayoutError(f"{root}: none of the folders {', '.join(SPLIT_FOLDERS)} found")
    collector = ItemCollector(shard=shard)
    for name in SPLIT_FOLDERS:
        if name not in present:
            collector.skip(root / name, "folder missing, so the index has none of its sequences")
    for name in present:
        split, label = SPLIT_FOLDERS[name]
        for tree, base in unit_trees(
            root / name, extract_to / name, collector, archive_limits or archive.ArchiveLimits()
        ):
            unit_split = "val" if split == "train" and hash_unit(f"wilddeepfake/{tree.name}") < val_fraction else split
            sequences = frame_folders(tree)
            if not sequences:
                collector.skip(tree, "no frame folders inside")
            for sequence in sequences:
                if sequence.parent.name in CLASS_NAMES and sequence.parent.name != CLASS_NAMES[label]:
                    raise DatasetLayoutError(
                        f"{sequence}: label folder {sequence.parent.name!r} contradicts its archive folder {name}"
                    )
                relative = sequence.relative_to(base).as_posix()
                item = MediaItem(
                    dataset="wilddeepfake",
                    split=unit_split,
                    video=f"{name}/{relative}",
                    label=label,
                    method="internet",
                    compression="",
                    source=sequence,
                    kind="frames",
                )
                collector.add(item)
    return collector.result()
