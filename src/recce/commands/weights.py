"""`recce weights`: the published trained weights of every detector, where to get them, and what convert does."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", metavar="NAME", help="only this detector's weights (default: all detectors)")
    parser.add_argument("--json", action="store_true", help="everything as JSON (default: text)")


def _format_preprocess(p: dict) -> str:
    crop = f" (centre crop of {p['resize']})" if p.get("resize") else ""
    mean = "/".join(f"{v:g}" for v in p["mean"])
    std = "/".join(f"{v:g}" for v in p["std"])
    return f"{p['input_size']} px{crop}, mean {mean}, std {std}"


def run(args: argparse.Namespace) -> int:
    from recce.catalogue import is_detector_installed, load_catalogue

    catalogue = load_catalogue()
    names = list(catalogue.detectors)
    if args.detector is not None:
        if args.detector not in catalogue.detectors:
            print(f"recce weights: unknown detector {args.detector!r} (known: {', '.join(names)})", file=sys.stderr)
            return 2
        names = [args.detector]
    if args.json:
        listing = [
            {
                "detector": name,
                "summary": catalogue.detectors[name],
                "installed": is_detector_installed(name),
                "weights": [entry.to_dict() for entry in catalogue.for_detector(name)],
            }
            for name in names
        ]
        print(json.dumps(listing, indent=2))
        return 0
    for name in names:
        missing = "" if is_detector_installed(name) else " [this install has no such detector yet]"
        print(f"{name}{missing}: {catalogue.detectors[name]}")
        entries = catalogue.for_detector(name)
        if not entries:
            print("  (no published trained weights)")
        for entry in entries:
            print(f"  {entry.id} — {entry.publisher}")
            rows = (
                ("file", entry.file),
                ("obtain", entry.obtain),
                ("trained on", "; ".join(entry.trained_on)),
                ("input", _format_preprocess(dict(entry.preprocess))),
                ("licence", entry.licence),
                ("sha256", entry.sha256 or "unknown"),
                ("convert", f"{entry.convert}: {entry.convert_note}"),
            )
            for label, value in rows:
                print(f"    {label + ':':<12}{value}")
        print()
    print(
        "get a file named above, then: recce convert FILE OUT.safetensors; "
        "recce detect MEDIA --checkpoint OUT.safetensors"
    )
    return 0
