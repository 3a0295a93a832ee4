"""DFDC (full Kaggle / Meta release): training parts with metadata.json, test videos with labels.csv.

Layout (spec section 7.3): `dfdc_train_part_<k>/{metadata.json, <id>.mp4 ...}` for k = 0..49, where
metadata.json maps `<id>.mp4` to `{"label": "REAL"|"FAKE", ...}`, and `test/{labels.csv, <id>.mp4 ...}`
with rows `<id>.mp4,<0|1>` (1 = fake) under a `filename,label` header.

Validation is carved out by whole parts, so no clip shares a part (and its shooting session) across the
split: `val_parts` lists part numbers; by default the highest-numbered part that has a metadata.json
(part 49 of the full release) is val, unless only one part is present, which then stays train. Parts
without metadata.json are reported in `skipped`; a missing test/labels.csv is reported the same way.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from .base import DatasetLayoutError, IndexResult, ItemCollector, MediaItem, Shard, read_json

PART_PATTERN = re.compile(r"dfdc_train_part_(\d+)")
METADATA_LABELS = {"REAL": 0, "FAKE": 1}


def read_metadata(path: Path) -> dict[str, int]:
    """Clip file name -> label from a part's metadata.json."""
    records = read_json(path)
    if not isinstance(records, dict):
        raise DatasetLayoutError(f"{path}: expected a JSON object keyed by clip file name")
    labels = {}
    for name, record in records.items():
        label = record.get("label") if isinstance(record, dict) else None
        if not isinstance(label, str) or label.upper() not in METADATA_LABELS:
            raise DatasetLayoutError(f"{path}: entry {name!r} has no label REAL or FAKE (got {record!r})")
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise DatasetLayoutError(f"{path}: entry {name!r} is not a clip file name")
        labels[name] = METADATA_LABELS[label.upper()]
    return labels


def read_test_labels(path: Path) -> dict[str, int]:
    """Clip file name -> label (1 = fake) from test/labels.csv; the header row is skipped."""
    labels = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or (number == 1 and ".mp4" not in ",".join(row)):
                continue
            fields = [field.strip() for field in row]
            if len(fields) != 2 or fields[1] not in ("0", "1") or "/" in fields[0] or not fields[0]:
                raise DatasetLayoutError(f"{path}:{number}: expected '<id>.mp4,<0|1>', got {','.join(row)!r}")
            labels[fields[0]] = int(fields[1])
    return labels


def clip_item(split: str, video: str, label: int, source: Path) -> MediaItem:
    method = "DFDC" if label else "original"
    return MediaItem("dfdc", split, video, label, method, compression="", source=source, kind="video")


def part_number(value: int | str) -> int:
    """A val_parts entry as a part number: 49, "49" and "dfdc_train_part_49" all name the same part."""
    match = PART_PATTERN.fullmatch(str(value)) or re.fullmatch(r"\d+", str(value))
    if not match:
        raise ValueError(f"val_parts: {value!r} is neither a part number nor a dfdc_train_part_<k> name")
    return int(match.group(match.lastindex or 0))


def train_parts(root: Path) -> dict[int, Path]:
    parts = {}
    for path in root.iterdir():
        match = PART_PATTERN.fullmatch(path.name)
        if match and path.is_dir():
            parts[int(match.group(1))] = path
    return dict(sorted(parts.items()))


def index_dfdc(
    root: Path,
    *,
    val_parts: int | str | Iterable[int | str] | None = None,
    allow_missing: bool = False,
    shard: Shard | None = None,
) -> IndexResult:
    """Index DFDC training parts (train/val by part) and the labelled test set."""
    parts = train_parts(root)
    labels_path = root / "test" / "labels.csv"
    if not parts and not labels_path.is_file():
        raise DatasetLayoutError(f"{root}: no dfdc_train_part_* folders and no test/labels.csv")
    collector = ItemCollector(allow_missing, shard)
    with_metadata = {}
    for number, part in parts.items():
        if (part / "metadata.json").is_file():
            with_metadata[number] = part
        else:
            collector.skip(part, "no metadata.json in this training part")
    if val_parts is None:
        val_numbers = {max(with_metadata)} if len(with_metadata) > 1 else set()
    else:
        val_numbers = {part_number(value) for value in ([val_parts] if isinstance(val_parts, str) else val_parts)}
        absent = sorted(val_numbers - set(with_metadata))
        if absent:
            raise DatasetLayoutError(
                f"{root}: val_parts names {', '.join(f'dfdc_train_part_{n}' for n in absent)}, "
                "not present with a metadata.json"
            )
    for number, part in with_metadata.items():
        metadata_path = part / "metadata.json"
        for name, label in read_metadata(metadata_path).items():
            split = "val" if number in val_numbers else "train"
            item = clip_item(split, f"{part.name}/{Path(name).stem}", label, part / name)
            collector.add(item, listed_in=metadata_path)
    if labels_path.is_file():
        for name, label in read_test_labels(labels_path).items():
            item = clip_item("test", f"test/{Path(name).stem}", label, labels_path.parent / name)
            collector.add(item, listed_in=labels_path)
    else:
        collector.skip(labels_path, "missing, so the index has no DFDC test videos")
    return collector.result()
