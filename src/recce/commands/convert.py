"""`recce convert`: published weights of a detector (the authors', DeepfakeBench's) → this project's checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="published weights (e.g. RECCE best_model.bin, RFM .pth, MultiAtt ckpt_*.pth)")
    parser.add_argument("output", help="where to write the .safetensors checkpoint")
    parser.add_argument("--detector", default="recce", help="which detector the weights belong to (default recce)")
    parser.add_argument("--num-classes", type=int, choices=(1, 2), help="expected head size (inferred by default)")
    parser.add_argument(
        "--input-size", type=int, help="input size the weights were trained at (default: the detector's native size)"
    )


def run(args: argparse.Namespace) -> int:
    from recce import checkpoints

    options = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        model = checkpoints.import_weights(args.detector, args.source, **options)
        model.preprocess = model.preprocess.at_size(args.input_size)
    except (checkpoints.CheckpointError, ValueError) as error:
        print(f"recce convert: {error}", file=sys.stderr)
        return 2
    provenance = {"converted_from": args.source, "input_size_assumed": args.input_size is None}
    out = checkpoints.save(model, args.output, provenance=provenance)
    print(
        f"wrote {out} ({model.name}, {model.config.num_classes} output(s), input size {model.preprocess.input_size}, "
        f"mean {model.preprocess.mean}, std {model.preprocess.std})"
    )
    return 0
