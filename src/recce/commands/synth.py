"""`recce synth`: write the built-in synthetic face-forgery benchmark, to try RECCE with nothing downloaded."""

from __future__ import annotations

import argparse
import sys

from recce.data import manifest
from recce.data.synthetic import METHODS, SyntheticConfig, SyntheticError, generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SyntheticConfig()
    parser.add_argument("--out", required=True, help="folder for crops/ and manifest.parquet (new or empty)")
    parser.add_argument(
        "--identities", type=int, default=defaults.identities, help="people, each a real and a fake video"
    )
    parser.add_argument("--frames", type=int, default=defaults.frames_per_video, help="frames per video")
    parser.add_argument("--size", type=int, default=defaults.size, help="side of the square face crops in pixels")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(defaults.methods),
        help="manipulations, rotated over identities",
    )
    parser.add_argument("--png", action="store_true", help="save lossless PNG instead of JPEG at quality 95/85/75")
    parser.add_argument("--strength", type=float, default=defaults.strength, help="scale of the forgery traces")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="everything follows from it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = SyntheticConfig(
        identities=args.identities,
        frames_per_video=args.frames,
        size=args.size,
        methods=tuple(args.methods),
        jpeg_qualities=None if args.png else SyntheticConfig().jpeg_qualities,
        strength=args.strength,
        seed=args.seed,
    )
    try:
        path = generate(args.out, config, progress=not args.no_progress)
        frame = manifest.read(path)
    except (SyntheticError, manifest.ManifestError) as error:
        print(f"recce synth: {error}", file=sys.stderr)
        return 2
    print(path)
    counts = frame.groupby(["split", "method"], observed=True).size().unstack(fill_value=0)
    print(f"{len(frame)} crops ({(frame['label'] == 0).sum()} real, {(frame['label'] == 1).sum()} fake)")
    print(counts.to_string())
    return 0
