"""`recce models`: the registered detectors, with their preprocessing, source, paper and configuration."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIBED = {"name", "paper", "source", "reference", "preprocess", "maps", "config", "loss", "choices"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="show these detectors in full (config, loss, choices)")
    parser.add_argument("--json", action="store_true", help="everything as JSON")


def _line(description: dict) -> tuple[str, ...]:
    p = description["preprocess"]
    size = f"{p['input_size']}" + (f" (of {p['resize']})" if p["resize"] else "")
    norm = f"mean {'/'.join(f'{v:g}' for v in p['mean'])} std {'/'.join(f'{v:g}' for v in p['std'])}"
    maps = ", ".join(description["maps"]) or "-"
    return description["name"], size, norm, maps, description["source"], description["paper"].split("(")[0].strip()


def run(args: argparse.Namespace) -> int:
    from recce.detectors import detector_class, list_detectors

    try:
        names = args.names or list_detectors()
        descriptions = [detector_class(name).describe() for name in names]
    except ValueError as error:
        print(f"recce models: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(descriptions, indent=2))
        return 0
    if args.names:
        for d in descriptions:
            print(f"{d['name']}: {d['paper']}\n  source: {d['source']} — {d['reference']}")
            print(f"  preprocessing: {json.dumps(d['preprocess'])}\n  maps: {json.dumps(d['maps'])}")
            print(f"  model config (defaults): {json.dumps(d['config'])}")
            print(f"  loss config (defaults): {json.dumps(d['loss'])}")
            if d["choices"]:
                print(f"  the project's own choices (no reference): {', '.join(d['choices'])}")
            for key in d.keys() - DESCRIBED:  # what a detector adds, e.g. Add-Net's face-mask recipe
                print(f"  {key}: {json.dumps(d[key])}")
        return 0
    rows = [("detector", "input", "normalisation", "maps", "source", "paper"), *map(_line, descriptions)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for d in descriptions:
        if d["choices"]:
            values = {**d["config"], **d["loss"]}
            chosen = ", ".join(f"{name}={json.dumps(values[name])}" for name in d["choices"])
            print(f"{d['name']} ({d['source']}): the project's own choices, where no reference decides: {chosen}")
    return 0
