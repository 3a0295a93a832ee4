"""Dataset indexers: a dataset as its publishers distribute it -> media items with split and label.

`index_dataset("ffpp", root, splits_dir=...)` is the entry point; `INDEXERS` maps each dataset name to
its indexer, whose keyword options are documented in its module.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from .base import DatasetLayoutError, IndexResult, MediaItem, Shard, shard_items
from .celebdf import index_celebdf
from .dfdc import index_dfdc
from .dfdcp import index_dfdcp
from .ffpp import index_ffpp
from .folder import index_folder
from .wilddeepfake import index_wilddeepfake

__all__ = ["INDEXERS", "DatasetLayoutError", "IndexResult", "MediaItem", "Shard", "index_dataset", "shard_items"]

INDEXERS: dict[str, Callable[..., IndexResult]] = {
    "ffpp": index_ffpp,
    "celebdf": index_celebdf,
    "dfdc": index_dfdc,
    "dfdcp": index_dfdcp,
    "wilddeepfake": index_wilddeepfake,
    "folder": index_folder,
}


def index_dataset(name: str, root: str | os.PathLike, *, shard: Shard | None = None, **options: object) -> IndexResult:
    """Index the dataset `name` under `root`; option names are checked so a typo is a clear error.

    With `shard` (K, N) only that shard's items come back, exactly `shard_items(<whole index>, shard)`, and only
    they are checked file by file (see `ItemCollector`).
    """
    if name not in INDEXERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(INDEXERS)}")
    indexer = INDEXERS[name]
    parameters = inspect.signature(indexer).parameters
    accepted = [p for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "shard"]
    unknown = sorted(set(options) - {p.name for p in accepted})
    if unknown:
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(p.name for p in accepted)}"
        )
    required = [p.name for p in accepted if p.default is inspect.Parameter.empty and p.name not in options]
    if required:
        raise ValueError(f"{name}: option(s) {', '.join(required)} required")
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset root folder not found")
    return indexer(root, **options, shard=shard)
