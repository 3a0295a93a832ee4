"""`recce export`: a checkpoint of any detector → ONNX (dynamic batch, P(fake) and maps, preprocessing recorded)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .safetensors checkpoint of this project")
    parser.add_argument("output", help="the .onnx file to write")


def run(args: argparse.Namespace) -> int:
    from recce import checkpoints
    from recce.export import export_onnx

    try:
        model = checkpoints.load(args.checkpoint)
        path = export_onnx(model, args.output, {"checkpoint": str(args.checkpoint)})
    except (checkpoints.CheckpointError, ValueError, OSError) as error:
        print(f"recce export: {error}", file=sys.stderr)
        return 2
    p = model.preprocess
    print(
        f"wrote {path} ({model.name}; input N x {model.input_channels} x {p.input_size} x {p.input_size}, "
        f"mean {p.mean}, std {p.std})"
    )
    return 0
