"""`recce visualize`: panels of a detector's maps (RECCE: reconstruction, |x - x̂|, attention) for face crops."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recce.commands.evaluate import one_line
from recce.data import manifest
from recce.data.perturb import PERTURBATIONS, SEED_TABLE5
from recce.data.video import list_frame_files, read_image
from recce.engine.evaluate import load_detector
from recce.engine.runtime import AMP_MODES
from recce.visualize import FaceItem, manifest_items, write_panels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a detector's checkpoint (.safetensors)")
    parser.add_argument("--images", nargs="+", default=[], help="face crop files or folders of crops (no detection)")
    parser.add_argument("--manifest", help="take crops from this manifest instead of (or besides) --images")
    parser.add_argument("--split", default="test", help="manifest split (default test)")
    parser.add_argument("--datasets", nargs="+", help="manifest datasets kept")
    parser.add_argument("--methods", nargs="+", help="manifest fake methods kept (reals are kept)")
    parser.add_argument(
        "--limit",
        type=int,
        default=8,
        help="manifest crops drawn: one per video, reals and fakes alternating (default 8)",
    )
    parser.add_argument("--out", required=True, help="output folder for the PNG panels and index.md")
    parser.add_argument("--perturb", action="store_true", help="one row per perturbation of each face (seed Figure 1)")
    parser.add_argument(
        "--perturbations",
        nargs="+",
        default=list(SEED_TABLE5),
        help=f"types drawn with --perturb: {', '.join(PERTURBATIONS)}",
    )
    parser.add_argument("--level", type=int, default=3, help="perturbation level with --perturb (default 3)")
    parser.add_argument("--size", type=int, help="input side (default: the checkpoint's input_size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=AMP_MODES, default="auto", help="mixed precision")


def _file_items(paths: list[str]) -> list[FaceItem]:
    files: list[Path] = []
    for given in map(Path, paths):
        files.extend(list_frame_files(given) if given.is_dir() else [given])
    return [FaceItem(str(path), read_image(path), str(path)) for path in files]


def _manifest_items(args: argparse.Namespace) -> list[FaceItem]:
    frame = manifest.select(
        manifest.read(args.manifest), splits=[args.split], datasets=args.datasets, methods=args.methods
    )
    if frame.empty:
        raise ValueError(f"{args.manifest}: no rows in split {args.split!r} match the filters")
    return manifest_items(frame, args.limit)


def run(args: argparse.Namespace) -> int:
    try:
        if not args.images and not args.manifest:
            raise ValueError("give face crops with --images and/or --manifest")
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}")
        model, _ = load_detector(args.checkpoint, args.size)
        items = _file_items(args.images) + (_manifest_items(args) if args.manifest else [])
        perturbations = args.perturbations if args.perturb else ()
        panels = write_panels(
            model,
            items,
            args.out,
            perturbations=perturbations,
            level=args.level,
            size=args.size,
            device=args.device,
            amp=args.amp,
        )
    except (ValueError, OSError) as error:
        print(f"recce visualize: {one_line(error)}", file=sys.stderr)
        return 2
    print(f"wrote {len(panels)} panels and {Path(args.out) / 'index.md'}")
    return 0
