"""DFDC-Preview: `dataset.json` maps each clip's relative path to its label and set.

Layout (spec section 7.4): `original_videos/`, `method_A/`, `method_B/` with nested id folders of `.mp4`,
and `dataset.json` mapping `<top>/<ids...>/<clip>.mp4` to `{"label": "real"|"fake", "set": "train"|"test"}`.
The method is the top folder (original_videos, method_A, method_B). There is no validation set unless
`val_fraction` > 0, which sends a training clip to val when the hash of its video id falls below the
fraction: deterministic, and stable when clips are added or removed.
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
    hash_unit,
    read_json,
    relative_media_path,
)

LABELS = {"real": 0, "fake": 1}
SETS = ("train", "test")


def index_dfdcp(
    root: Path, *, val_fraction: float = 0.0, allow_missing: bool = False, shard: Shard | None = None
) -> IndexResult:
    """Index DFDC-P clips by the `set` and `label` fields of dataset.json."""
    val_fraction = check_fraction(val_fraction, "val_fraction")
    metadata_path = root / "dataset.json"
    records = read_json(metadata_path)
    if not isinstance(records, dict):
        raise DatasetLayoutError(f"{metadata_path}: expected a JSON object keyed by clip path")
    collector = ItemCollector(allow_missing, shard)
    for name, record in records.items():
        relative = relative_media_path(name, metadata_path)
        label = record.get("label") if isinstance(record, dict) else None
        subset = record.get("set") if isinstance(record, dict) else None
        if label not in tuple(LABELS) or subset not in SETS:
            raise DatasetLayoutError(
                f"{metadata_path}: entry {name!r} needs label real|fake and set train|test, got {record!r}"
            )
        video = relative.with_suffix("").as_posix()
        split = "test" if subset == "test" else ("val" if hash_unit(video) < val_fraction else "train")
        item = MediaItem(
            dataset="dfdcp",
            split=split,
            video=video,
            label=LABELS[label],
            method=relative.parts[0],
            compression="",
            source=root.joinpath(*relative.parts),
            kind="video",
        )
        collector.add(item, listed_in=metadata_path)
    return collector.result()
