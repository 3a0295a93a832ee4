"""FaceForensics++: the original YouTube sequences and their manipulations, split by the official pair lists.

Layout (spec section 7.1): `original_sequences/youtube/<comp>/videos/<id>.mp4` and
`manipulated_sequences/<method>/<comp>/videos/<a>_<b>.mp4`. A pair [a, b] of `<split>.json` puts the
originals a and b and the fakes a_b and b_a of every method in that split (360/70/70 pairs, so
720/140/140 videos per split and method).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .base import (
    SPLITS,
    DatasetLayoutError,
    IndexResult,
    ItemCollector,
    MediaItem,
    Shard,
    as_names,
    read_json,
    require_dir,
)

COMPRESSIONS = ("raw", "c23", "c40")
METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
DEFAULT_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def read_split_pairs(splits_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Read train/val/test.json, checking their shape and that no video id is in two splits."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    owner: dict[str, Path] = {}
    for split in SPLITS:
        path = splits_dir / f"{split}.json"
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DatasetLayoutError(f"{path}: expected a JSON list of [id, id] pairs")
        pairs[split] = []
        for position, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(i, str) and i for i in entry)):
                raise DatasetLayoutError(
                    f"{path}: entry {position} is {entry!r}, expected a pair of video ids such as ['000', '003']"
                )
            for video_id in entry:
                if owner.get(video_id, path) != path:
                    raise DatasetLayoutError(f"{path}: video id {video_id} is also in {owner[video_id]}")
                owner[video_id] = path
            pairs[split].append((entry[0], entry[1]))
    return pairs


def index_ffpp(
    root: Path,
    *,
    splits_dir: str | Path,
    compressions: str | Iterable[str] = ("c23",),
    methods: str | Iterable[str] = DEFAULT_METHODS,
    allow_missing: bool = False,
    shard: Shard | None = None,
) -> IndexResult:
    """Index FF++ reals and fakes for the chosen compressions and methods."""
    compressions = as_names(compressions, "compressions", COMPRESSIONS)
    methods = as_names(methods, "methods", METHODS)
    pairs = read_split_pairs(Path(splits_dir))
    collector = ItemCollector(allow_missing, shard)
    for compression in compressions:
        folders = {"youtube": root / "original_sequences" / "youtube" / compression / "videos"}
        folders |= {method: root / "manipulated_sequences" / method / compression / "videos" for method in methods}
        if not allow_missing:
            for folder in folders.values():
                require_dir(folder, "FF++ video")
        for split, split_pairs in pairs.items():
            listed_in = Path(splits_dir) / f"{split}.json"
            for a, b in split_pairs:
                videos = [(video_id, "youtube", 0) for video_id in (a, b)]
                videos += [(fake, method, 1) for method in methods for fake in (f"{a}_{b}", f"{b}_{a}")]
                for stem, method, label in videos:
                    item = MediaItem(
                        dataset="ffpp",
                        split=split,
                        video=f"{method}/{compression}/{stem}",
                        label=label,
                        method=method,
                        compression=compression,
                        source=folders[method] / f"{stem}.mp4",
                        kind="video",
                    )
                    collector.add(item, listed_in=listed_in)
    return collector.result()
