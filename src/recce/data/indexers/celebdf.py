"""Celeb-DF v2: test videos from the official list, training videos everything else.

Layout (spec section 7.2): `Celeb-real/id<k>_<nnnn>.mp4`, `YouTube-real/<nnnnn>.mp4`,
`Celeb-synthesis/id<t>_id<s>_<nnnn>.mp4` and `List_of_testing_videos.txt`, whose lines read
`<n> <folder>/<file>.mp4` with the inverted convention n = 1 for real. The label is taken from the folder,
and a list number that disagrees with it is an error rather than a silently flipped label.

Validation (`val_fraction` > 0) is carved from training by identity: the identity of a Celeb video is
its first id (the celebrity in a Celeb-real video; the target, whose footage was manipulated, in a
Celeb-synthesis one). val_fraction * n (rounded half up) of the n training identities, those with the
lowest hash, go to val with all their real and fake videos. So no target identity is in both splits and
every fake sits in the same split as the real footage it was made from; the face swapped in (the second
id) may belong to an identity of the other split. YouTube-real videos have no identity and are drawn one
by one, val_fraction * n of them, the same way.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    DatasetLayoutError,
    IndexResult,
    ItemCollector,
    MediaItem,
    Shard,
    check_fraction,
    lowest_hashed,
    require_dir,
)

FOLDER_LABELS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
TEST_LIST = "List_of_testing_videos.txt"


def read_test_list(path: Path) -> list[str]:
    """Relative paths of the test videos, each checked against the list's own 1 = real number."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: Celeb-DF test list not found")
    videos = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        folder = fields[1].split("/")[0] if len(fields) == 2 else ""
        if len(fields) != 2 or fields[0] not in ("0", "1") or folder not in FOLDER_LABELS:
            raise DatasetLayoutError(
                f"{path}:{number}: expected '<0|1> <folder>/<file>.mp4' with folder one of "
                f"{', '.join(FOLDER_LABELS)}, got {line.strip()!r}"
            )
        folder_is_real = FOLDER_LABELS[folder] == 0
        if (fields[0] == "1") != folder_is_real:
            raise DatasetLayoutError(
                f"{path}:{number}: number {fields[0]} (1 = real) disagrees with folder {folder} "
                f"({'real' if folder_is_real else 'fake'})"
            )
        videos.append(fields[1])
    return videos


def identity(folder: str, stem: str) -> str:
    """The group a training video is assigned to val with (see the module docstring)."""
    return stem.split("_")[0] if folder.startswith("Celeb-") else f"{folder}/{stem}"


def index_celebdf(
    root: Path, *, val_fraction: float = 0.0, allow_missing: bool = False, shard: Shard | None = None
) -> IndexResult:
    """Index Celeb-DF v2 videos: official test list, the rest train (and optionally val)."""
    val_fraction = check_fraction(val_fraction, "val_fraction")
    list_path = root / TEST_LIST
    test_videos = read_test_list(list_path)
    for folder in FOLDER_LABELS:
        require_dir(root / folder, "Celeb-DF video")

    def item(relative: str, split: str) -> MediaItem:
        folder, _, name = relative.partition("/")
        return MediaItem(
            dataset="celebdf",
            split=split,
            video=f"{folder}/{Path(name).stem}",
            label=FOLDER_LABELS[folder],
            method=folder,
            compression="",
            source=root / folder / name,
            kind="video",
        )

    collector = ItemCollector(allow_missing, shard)
    for relative in test_videos:
        collector.add(item(relative, "test"), listed_in=list_path)
    test_set = set(test_videos)
    train = [
        (folder, path.stem)
        for folder in FOLDER_LABELS
        for path in sorted((root / folder).glob("*.mp4"))
        if f"{folder}/{path.name}" not in test_set
    ]
    celeb_groups = {identity(folder, stem) for folder, stem in train if folder.startswith("Celeb-")}
    other_groups = {identity(folder, stem) for folder, stem in train if not folder.startswith("Celeb-")}
    val_groups = lowest_hashed(celeb_groups, val_fraction) | lowest_hashed(other_groups, val_fraction)
    for folder, stem in train:
        split = "val" if identity(folder, stem) in val_groups else "train"
        collector.add(item(f"{folder}/{stem}.mp4", split))
    return collector.result()
