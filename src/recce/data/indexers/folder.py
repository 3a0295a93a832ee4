"""A user's own data: `real/` and `fake/` folders, optionally inside `train/`, `val/` and `test/`.

What is an item inside `real/` or `fake/` (searched recursively):
- a video file (.mp4 .avi .mov .mkv .webm) is one item of kind "video";
- an image file (.png .jpg .jpeg .bmp .webp) lying directly in `real/` or `fake/` is one item of kind "image";
- any other folder that directly holds images is one frame sequence of kind "frames" (so keep independent
  photos directly in `real/` or `fake/`, and give each frame sequence its own folder).
The video id is the path relative to root without its extension, e.g. `fake/clip01`; the method is the
first folder inside `real/` or `fake/` that contains the item (e.g. `fake/stylegan/x.png` -> stylegan),
else "real" or "fake". Hidden files are ignored; other files, and links to folders (not followed), are reported
in `skipped`; a file reached under two names is indexed once.

Splits: with `train/`, `val/` or `test/` folders, the folder decides. Without them everything is "test"
(the common case: evaluating a trained detector on one's own data) unless `val_fraction` or
`test_fraction` is given; then an item goes to test when the hash of its path below `real/` or `fake/`
is under test_fraction, to val when under test_fraction + val_fraction, and to train otherwise. The
hash keeps each item's split fixed as files are added, and a real and a fake of the same name share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .base import (
    IMAGE_EXTENSIONS,
    SPLITS,
    VIDEO_EXTENSIONS,
    DatasetLayoutError,
    IndexResult,
    ItemCollector,
    MediaItem,
    Shard,
    check_fraction,
    hash_unit,
)

CLASS_FOLDERS = {"real": 0, "fake": 1}


def media_in(class_dir: Path, collector: ItemCollector) -> Iterator[tuple[Path, str]]:
    """(source, kind) for every item under a class folder; unusable files are reported to the collector."""
    pending = [class_dir]
    while pending:
        folder = pending.pop()
        entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
        has_images = any(e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries)
        if has_images and folder != class_dir:
            yield folder, "frames"
            continue
        for entry in entries:
            if entry.is_dir() and entry.is_symlink():  # followed, `up -> ../..` would index the tree again
                collector.skip(entry, "link to a folder, not followed")
            elif entry.is_dir():
                pending.append(entry)
            elif entry.suffix.lower() in VIDEO_EXTENSIONS:
                yield entry, "video"
            elif entry.suffix.lower() in IMAGE_EXTENSIONS:
                yield entry, "image"
            else:
                collector.skip(entry, "not a video, image or frame folder")


def fraction_split(key: str, val_fraction: float, test_fraction: float) -> str:
    if not val_fraction and not test_fraction:
        return "test"
    draw = hash_unit(key)
    if draw < test_fraction:
        return "test"
    return "val" if draw < test_fraction + val_fraction else "train"


def index_folder(
    root: Path, *, val_fraction: float = 0.0, test_fraction: float = 0.0, shard: Shard | None = None
) -> IndexResult:
    """Index real/fake videos, images and frame folders of a user's own dataset."""
    val_fraction = check_fraction(val_fraction, "val_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction > 1.0:
        raise ValueError(f"val_fraction + test_fraction must be at most 1, got {val_fraction + test_fraction}")
    split_dirs = [split for split in SPLITS if (root / split).is_dir()]
    top_classes = [name for name in CLASS_FOLDERS if (root / name).is_dir()]
    if split_dirs and top_classes:
        raise DatasetLayoutError(
            f"{root}: holds both split folders ({', '.join(split_dirs)}) and class folders "
            f"({', '.join(top_classes)}); use one layout"
        )
    if split_dirs and (val_fraction or test_fraction):
        raise ValueError(f"{root}: has split folders, so val_fraction and test_fraction do not apply")
    bases = {split: root / split for split in split_dirs} if split_dirs else {None: root}
    collector = ItemCollector(shard=shard)
    for split, base in bases.items():
        classes = [name for name in CLASS_FOLDERS if (base / name).is_dir()]
        if not classes:
            raise DatasetLayoutError(f"{base}: no real/ or fake/ folder inside")
        for name in classes:
            class_dir = base / name
            for source, kind in media_in(class_dir, collector):
                below_class = source.relative_to(class_dir)
                stem = below_class.with_suffix("") if kind != "frames" else below_class
                item = MediaItem(
                    dataset="folder",
                    split=split or fraction_split(below_class.as_posix(), val_fraction, test_fraction),
                    video=(base / name / stem).relative_to(root).as_posix(),
                    label=CLASS_FOLDERS[name],
                    method=below_class.parts[0] if len(below_class.parts) > 1 else name,
                    compression="",
                    source=source,
                    kind=kind,
                )
                collector.add(item)
    result = collector.result()
    if not result.items:
        raise DatasetLayoutError(f"{root}: no videos, images or frame folders found under real/ or fake/")
    return result
