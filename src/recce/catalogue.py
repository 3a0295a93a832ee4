"""The catalogue of published trained weights, and telling which of them a weights file is.

The catalogue (`weights_catalogue.yaml`, package data) says, per detector, which trained checkpoints exist
publicly, where to obtain them, what they were trained on and with which preprocessing. A file is recognised by
its SHA-256 where the catalogue knows one, else by its key layout: `layout_of` looks only at key names and
shapes, so recognising a format needs nothing of the detector but its registry name. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

CONVERT_OUTCOMES = ("imports", "cannot import", "depends")


@dataclass(frozen=True)
class WeightsEntry:
    """One published file: who trained it, where it is, what it was trained on and how to feed it."""

    id: str
    detector: str
    publisher: str
    file: str
    obtain: str
    trained_on: tuple[str, ...]
    preprocess: Mapping[str, Any]  # input_size, mean, std, resize (as `recce.detectors.Preprocess` takes them)
    licence: str
    layout: str
    sha256: str | None
    convert: str  # one of CONVERT_OUTCOMES
    convert_note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self.__dataclass_fields__},
            "trained_on": list(self.trained_on),
            "preprocess": dict(self.preprocess),
        }


@dataclass(frozen=True)
class Catalogue:
    detectors: Mapping[str, str]  # detector -> a line on what is published for it
    entries: tuple[WeightsEntry, ...]

    def for_detector(self, name: str) -> list[WeightsEntry]:
        return [entry for entry in self.entries if entry.detector == name]

    def entry(self, entry_id: str) -> WeightsEntry:
        for entry in self.entries:
            if entry.id == entry_id:
                return entry
        raise KeyError(f"no catalogue entry {entry_id!r} (known: {', '.join(e.id for e in self.entries)})")


def parse_catalogue(data: Mapping[str, Any], source: str) -> Catalogue:
    """A catalogue from its YAML mapping; a malformed entry raises ValueError naming `source` and the entry."""
    entries = []
    fields = set(WeightsEntry.__dataclass_fields__)
    for i, raw in enumerate(data.get("weights") or []):
        where = f"{source}: weights entry {raw.get('id', i)!r}"
        if set(raw) != fields:
            raise ValueError(f"{where}: keys {sorted(set(raw) ^ fields)} missing or unknown")
        if raw["convert"] not in CONVERT_OUTCOMES:
            raise ValueError(f"{where}: convert must be one of {', '.join(CONVERT_OUTCOMES)}")
        if raw["layout"] not in LAYOUTS:
            raise ValueError(f"{where}: unknown layout {raw['layout']!r}")
        sha = raw["sha256"]
        if sha is not None and (len(sha) != 64 or set(sha) - set("0123456789abcdef")):
            raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits or null")
        entries.append(WeightsEntry(**{**raw, "trained_on": tuple(raw["trained_on"])}))
    ids = [entry.id for entry in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: duplicate entry ids")
    return Catalogue(detectors=dict(data.get("detectors") or {}), entries=tuple(entries))


@cache
def load_catalogue() -> Catalogue:
    """The catalogue shipped with the package."""
    text = resources.files("recce").joinpath("weights_catalogue.yaml").read_text(encoding="utf-8")
    return parse_catalogue(yaml.safe_load(text), "weights_catalogue.yaml")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- key layouts --------------------------------------------------------------------------------------------------


def _tops(keys: set[str], prefix: str = "") -> set[str]:
    """The first name component of every key under `prefix`."""
    return {k[len(prefix) :].split(".", 1)[0] for k in keys if k.startswith(prefix)}


def _is_recce(tops: set[str]) -> bool:
    return {"encoder", "decoder1", "decoder6", "reasoning", "attention", "fc"} <= tops


def _is_cadene_xception(tops: set[str], keys: set[str], prefix: str = "") -> bool:
    needed = {f"{prefix}conv1.weight", f"{prefix}block12.skip.weight", f"{prefix}conv4.pointwise.weight"}
    return needed <= keys and "last_linear" in _tops(keys, prefix)


@dataclass(frozen=True)
class Layout:
    description: str
    detectors: tuple[str, ...]  # whose weights come in this layout (several: the layout alone cannot tell)
    test: Callable[[set[str], set[str], Mapping[str, Any]], bool]  # (top-level names, keys, state) -> fits


LAYOUTS: dict[str, Layout] = {
    "recce-official": Layout(
        "the RECCE authors' model: encoder.* (timm Xception), decoder1-6.*, reasoning.*, attention.*, fc.*",
        ("recce",),
        lambda tops, keys, state: _is_recce(tops),
    ),
    "deepfakebench-recce": Layout(
        "DeepfakeBench's RecceDetector: the RECCE model under model.*, an unused Xception under backbone.*",
        ("recce",),
        lambda tops, keys, state: {"model", "backbone"} <= tops and _is_recce(_tops(keys, "model.")),
    ),
    "deepfakebench-f3net": Layout(
        "DeepfakeBench's F3Net: FAD_head.* (DCT filters) and one Xception under backbone.*",
        ("f3net",),
        lambda tops, keys, state: {"backbone", "FAD_head"} <= tops and "LFS_head" not in tops,
    ),
    "deepfakebench-multiatt": Layout(
        "DeepfakeBench's Multi-Attention: backbone.* (EfficientNet), attention_generation.*, texture_enhance.*",
        ("multiatt",),
        lambda tops, keys, state: {"backbone", "attention_generation", "texture_enhance"} <= tops,
    ),
    "deepfakebench-xception": Layout(
        "DeepfakeBench's Xception (also its RFM): backbone.* with Cadene names, backbone.last_linear head",
        ("xception", "rfm"),
        lambda tops, keys, state: (
            tops == {"backbone"} and _is_cadene_xception(_tops(keys, "backbone."), keys, "backbone.")
        ),
    ),
    "multiatt-official": Layout(
        "the Multi-attention authors' model: net._conv_stem/_blocks.* (EfficientNet), attentions.*, texture_enhance.*",
        ("multiatt",),
        lambda tops, keys, state: {"net", "attentions", "texture_enhance"} <= tops and "net._conv_stem.weight" in keys,
    ),
    "f3net-port": Layout(
        "the yyk-wew/F3Net port: FAD_head.* / LFS_head.*, FAD_xcep.* / LFS_xcep.*, fc.*",
        ("f3net",),
        lambda tops, keys, state: bool(tops & {"FAD_xcep", "LFS_xcep"}) and bool(tops & {"FAD_head", "LFS_head"}),
    ),
    "cadene-xception": Layout(
        "a trained two-way Xception with Cadene names (conv1 ... block12, conv3/conv4, last_linear): RFM's",
        ("rfm",),
        lambda tops, keys, state: _is_cadene_xception(tops, keys) and _head_outputs(state, "last_linear.weight") == 2,
    ),
    "xception-imagenet": Layout(
        "ImageNet Xception (a 1000-way head): a backbone to train from, not a forgery detector",
        (),
        lambda tops, keys, state: (
            (_is_cadene_xception(tops, keys) and _head_outputs(state, "last_linear.weight") == 1000)
            or ({"conv1", "block12", "conv4", "fc"} <= tops and _head_outputs(state, "fc.weight") == 1000)
        ),
    ),
}


def _head_outputs(state: Mapping[str, Any], key: str) -> int | None:
    tensor = state.get(key)
    return None if tensor is None else int(tensor.shape[0])


def layout_of(state: Mapping[str, Any]) -> str | None:
    """The name of the catalogued key layout `state` (names -> tensors) has, or None; `module.` is ignored."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    keys = set(state)
    tops = _tops(keys)
    for name, layout in LAYOUTS.items():
        if layout.test(tops, keys, state):
            return name
    return None


@dataclass(frozen=True)
class Identification:
    """What a weights file is: its layout, and the catalogue entries it may be (several when the layout is shared)."""

    layout: str | None
    entries: tuple[WeightsEntry, ...]
    by_sha256: bool = False

    @property
    def detectors(self) -> tuple[str, ...]:
        """The detectors the file may belong to, from its entries or, when none is catalogued, its layout."""
        if self.entries:
            return tuple(dict.fromkeys(entry.detector for entry in self.entries))
        return LAYOUTS[self.layout].detectors if self.layout else ()


def identify(
    state: Mapping[str, Any],
    sha256: str | None = None,
    *,
    detector: str | None = None,
    catalogue: Catalogue | None = None,
) -> Identification:
    """Recognise published weights: by SHA-256 when the catalogue knows it, else by key layout.

    `detector` (when the user named one) keeps only that detector's entries.
    """
    catalogue = catalogue or load_catalogue()
    layout = layout_of(state)
    mine = [entry for entry in catalogue.entries if detector is None or entry.detector == detector]
    exact = tuple(entry for entry in mine if sha256 and entry.sha256 == sha256)
    if exact:
        return Identification(layout, exact, by_sha256=True)
    return Identification(layout, tuple(entry for entry in mine if layout and entry.layout == layout))


def shared_preprocess(entries: tuple[WeightsEntry, ...]) -> Mapping[str, Any] | None:
    """The preprocessing all `entries` agree on, or None when they differ (or there are none)."""
    settings = {tuple(sorted((k, str(v)) for k, v in entry.preprocess.items())) for entry in entries}
    return entries[0].preprocess if len(settings) == 1 else None


def is_detector_installed(name: str) -> bool:
    """Whether this install has the detector's module, without importing it (nor torch)."""
    return resources.files("recce").joinpath("detectors", f"{name}.py").is_file()
