"""`recce convert`: official or DeepfakeBench RECCE weights → this project's .safetensors checkpoint."""

from __future__ import annotations

import argparse

from recce import checkpoints

HELP = "convert an official / DeepfakeBench RECCE checkpoint into this project's .safetensors format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="official checkpoint (e.g. best_model.bin / .pth) or DeepfakeBench weights")
    parser.add_argument("output", help="where to write the .safetensors checkpoint")
    parser.add_argument("--num-classes", type=int, choices=(1, 2), help="expected head size (inferred by default)")
    parser.add_argument("--input-size", type=int, default=299, help="input size the weights were trained at")


def run(args: argparse.Namespace) -> int:
    try:
        model = checkpoints.from_official(args.source, num_classes=args.num_classes)
    except checkpoints.CheckpointError as error:
        print(f"recce convert: {error}")
        return 2
    out = checkpoints.save(model, args.output, extra={"input_size": args.input_size, "converted_from": args.source})
    print(f"wrote {out} (RECCE, {model.config.num_classes} output(s), input size {args.input_size})")
    return 0
