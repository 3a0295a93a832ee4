"""`recce convert`: published weights of a detector (the authors', DeepfakeBench's) → this project's checkpoint.

A file the catalogue knows (`recce weights`), by SHA-256 or by key layout, needs no options: the detector, the
input size, the normalisation and the training data come from its catalogue entry and are recorded in the
checkpoint's provenance. Any other file needs `--detector`, and `--input-size` unless trained at the native size.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="published weights (e.g. RECCE best_model.bin, RFM .pth, MultiAtt ckpt_*.pth)")
    parser.add_argument("output", help="where to write the .safetensors checkpoint")
    parser.add_argument(
        "--detector",
        metavar="NAME",
        help="which detector the weights belong to (default: recognised from the file; needed for a file that "
        "`recce weights` does not list)",
    )
    parser.add_argument(
        "--entry",
        metavar="ID",
        help="the `recce weights` entry the file is, when its key layout fits several (default: recognised)",
    )
    parser.add_argument("--num-classes", type=int, choices=(1, 2), help="expected head size (default: inferred)")
    parser.add_argument(
        "--input-size",
        type=int,
        help="input size the weights were trained at (default: the catalogue's for a recognised file, else the "
        "detector's native size)",
    )


def _one_of(values: list[str]) -> str:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else "one of: " + " | ".join(unique)


def recognise(source: str, state: dict, sha256: str, detector: str | None, entry_id: str | None) -> tuple[str, tuple]:
    """The detector the weights belong to and the catalogue entries they may be; one-line ValueError otherwise."""
    from recce.catalogue import LAYOUTS, identify, load_catalogue

    catalogue = load_catalogue()
    found = identify(state, sha256, detector=detector, catalogue=catalogue)
    if entry_id is not None:
        try:
            entry = catalogue.entry(entry_id)
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        if entry not in found.entries and (found.by_sha256 or found.layout != entry.layout):
            what = f"key layout {found.layout}" if found.layout else "key layout (not recognised)"
            raise ValueError(f"{source}: its {what} is not that of catalogue entry {entry.id} ({entry.layout})")
        if detector is not None and detector != entry.detector:
            raise ValueError(f"{source}: catalogue entry {entry.id} is {entry.detector} weights, not {detector}")
        return entry.detector, (entry,)
    if detector is not None:
        return detector, found.entries
    if len(found.detectors) == 1:
        return found.detectors[0], found.entries
    if found.detectors:
        raise ValueError(
            f"{source}: its key layout ({found.layout}) fits weights of several detectors "
            f"({', '.join(found.detectors)}); name one with --detector"
        )
    if found.layout:
        raise ValueError(f"{source}: {LAYOUTS[found.layout].description}; there is nothing to convert")
    raise ValueError(
        f"{source}: key layout not recognised as any published weights (`recce weights` lists them); "
        "name the detector with --detector NAME"
    )


def provenance_of(source: str, sha256: str, entries: tuple, size_assumed: bool, by: str) -> dict[str, Any]:
    """Where the weights come from and what they were trained on, as the checkpoint records it."""
    record: dict[str, Any] = {"converted_from": source, "sha256": sha256, "input_size_assumed": size_assumed}
    if not entries:
        return {**record, "trained_on": ["unknown"], "source": "unknown (not in the catalogue)"}
    ids = [entry.id for entry in entries]
    catalogue_entry = ids[0] if len(ids) == 1 else f"{_one_of(ids)} (name one with --entry)"
    return {
        **record,
        "trained_on": [_one_of(["; ".join(entry.trained_on) for entry in entries])],
        "source": _one_of([f"{entry.publisher}: {entry.obtain}" for entry in entries]),
        "catalogue_entry": catalogue_entry,
        "recognised_by": by,
    }


def run(args: argparse.Namespace) -> int:
    from recce import checkpoints
    from recce.catalogue import file_sha256, shared_preprocess
    from recce.detectors import DetectorConfigError, Preprocess, detector_class
    from recce.weights import CheckpointError, mismatch, read_state_dict

    source = str(args.source)
    options = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        state = read_state_dict(args.source)
        sha256 = file_sha256(args.source)
        name, entries = recognise(source, state, sha256, args.detector, args.entry)
        try:
            cls = detector_class(name)
        except DetectorConfigError as error:
            raise CheckpointError(
                f"{source}: {name} weights, but this install has no such detector ({error})"
            ) from None
        try:
            model = cls.from_reference(state, source, **options)
        except CheckpointError as error:
            notes = [f"{e.id}: {e.convert_note}" for e in entries if e.convert != "imports"]
            raise CheckpointError("; ".join([str(error), *notes])) from None
        published = shared_preprocess(entries)
        if published is not None:
            model.preprocess = Preprocess.from_dict(published)
        model.preprocess = model.preprocess.at_size(args.input_size)
        problem = mismatch(
            checkpoints.build(name, asdict(model.config), model.preprocess).state_dict(), model.state_dict()
        )
        if problem:  # a network whose shape follows the input size (F3-Net's frequency filters)
            raise CheckpointError(
                f"{source}: {name} weights do not fit an input size of {model.preprocess.input_size} ({problem})"
            )
    except (CheckpointError, ValueError) as error:
        print(f"recce convert: {error}", file=sys.stderr)
        return 2
    size_assumed = published is None and args.input_size is None
    if size_assumed:
        print(
            f"recce convert: warning: {source}: the input size these weights were trained at cannot be inferred "
            f"(not a catalogued file); assuming the detector's native {model.preprocess.input_size} px — pass "
            "--input-size if they were trained at another size",
            file=sys.stderr,
        )
    by = "--entry" if args.entry else "sha256" if entries and all(e.sha256 == sha256 for e in entries) else "key layout"
    provenance = provenance_of(source, sha256, entries, size_assumed, by)
    out = checkpoints.save(model, args.output, provenance=provenance)
    p = model.preprocess
    recognised = f", {provenance['catalogue_entry']} by {by}" if entries else ""
    print(
        f"wrote {out} ({model.name}{recognised}; {model.config.num_classes} output(s), input size {p.input_size}, "
        f"mean {p.mean}, std {p.std}; trained on {provenance['trained_on'][0]})"
    )
    return 0
