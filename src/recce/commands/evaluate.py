"""`recce evaluate`: the paper's evaluation protocols on a manifest's test split."""

from __future__ import annotations

import argparse
import os
import sys

from recce.data.perturb import LEVELS, PERTURBATIONS, SEED_TABLE5
from recce.engine.evaluate import ScoringOptions, Selection, cross_manipulation, evaluate, robustness
from recce.engine.runtime import AMP_MODES
from recce.metrics import AGGREGATIONS

PROTOCOLS = ("dataset", "cross-manipulation", "robustness")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="dataset",
        help="dataset: metrics per test dataset (within- and cross-dataset); cross-manipulation: one checkpoint per "
        "training method (--checkpoints); robustness: AUC under perturbations (default: dataset)",
    )
    parser.add_argument("--checkpoint", help="checkpoint (.safetensors) for the dataset and robustness protocols")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="METHOD=PATH",
        help="cross-manipulation: a checkpoint per training method, e.g. DF=df.safetensors F2F=f2f.safetensors "
        "(FF++ abbreviations DF F2F FS NT or the manifest's method names)",
    )
    parser.add_argument("--manifest", required=True, help="manifest (.parquet) of the test crops")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--label", help="name of the model's row in the tables (e.g. the training set)")

    selection = parser.add_argument_group("frames evaluated")
    selection.add_argument("--split", default="test", help="manifest split (default test)")
    selection.add_argument("--datasets", nargs="+", help="test datasets (default: all in the split)")
    selection.add_argument("--methods", nargs="+", help="fake methods kept (all reals are kept)")
    selection.add_argument("--compressions", nargs="+", help="compressions kept, e.g. c23")

    summary = parser.add_argument_group("metrics")
    summary.add_argument("--aggregate", choices=AGGREGATIONS, default="mean", help="video score from frame scores")
    summary.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the AUC CI (>= 1)")
    summary.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    robust = parser.add_argument_group("robustness protocol")
    robust.add_argument(
        "--perturbations",
        nargs="+",
        default=list(SEED_TABLE5),
        help=f"perturbation types: {', '.join(PERTURBATIONS)} (default: {' '.join(SEED_TABLE5)})",
    )
    robust.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), help="levels 1-5 (default: all)")

    run_group = parser.add_argument_group("execution")
    run_group.add_argument("--batch-size", type=int, default=64, help="crops per forward (default 64)")
    run_group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run_group.add_argument("--amp", choices=AMP_MODES, default="auto", help="mixed precision (auto: bf16/fp16 on GPU)")
    run_group.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader worker processes"
    )
    run_group.add_argument("--size", type=int, help="input side (default: the checkpoint's input_size)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    """METHOD=PATH items as an ordered mapping; ValueError for a malformed or repeated method."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"--checkpoints expects METHOD=PATH items, got {item!r}")
        if key in parsed:
            raise ValueError(f"--checkpoints names method {key!r} twice")
        parsed[key] = path
    return parsed


def _check_arguments(args: argparse.Namespace) -> None:
    if args.protocol == "cross-manipulation":
        if not args.checkpoints:
            raise ValueError("--protocol cross-manipulation needs --checkpoints METHOD=PATH ...")
    elif not args.checkpoint:
        raise ValueError(f"--protocol {args.protocol} needs --checkpoint")
    for name, value, least in (("--bootstrap", args.bootstrap, 1), ("--batch-size", args.batch_size, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")


def one_line(error: BaseException) -> str:
    """The message of an error, one line; errors re-raised from DataLoader workers carry the worker's traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else error.__class__.__name__


def run(args: argparse.Namespace) -> int:
    try:
        _check_arguments(args)
        selection = Selection(args.split, args.datasets, args.methods, args.compressions)
        options = ScoringOptions(
            batch_size=args.batch_size,
            device=args.device,
            amp=args.amp,
            workers=args.workers,
            size=args.size,
            progress=not args.no_progress,
            aggregate=args.aggregate,
            n_boot=args.bootstrap,
            seed=args.seed,
        )
        common = {"selection": selection, "options": options, "label": args.label}
        if args.protocol == "cross-manipulation":
            table = cross_manipulation(parse_checkpoints(args.checkpoints), args.manifest, args.out, **common)
            print(f"wrote {args.out}/cross_manipulation.md ({len(table)} training methods)")
        elif args.protocol == "robustness":
            report = robustness(
                args.checkpoint, args.manifest, args.out, perturbations=args.perturbations, levels=args.levels, **common
            )
            average = report["frame_auc"]["Avg."]["Avg."]
            print(f"wrote {args.out}/robustness.md (mean AUC under perturbation {100 * average:.2f}%)")
        else:
            report = evaluate(args.checkpoint, args.manifest, args.out, **common)
            for dataset, result in report["datasets"].items():
                frame_auc, video_auc = result["frame"]["auc"], result["video"]["auc"]
                print(f"{dataset}: frame AUC {100 * frame_auc:.2f}%, video AUC {100 * video_auc:.2f}%")
            print(f"wrote {args.out}/metrics.md")
    except (ValueError, OSError) as error:
        print(f"recce evaluate: {one_line(error)}", file=sys.stderr)
        return 2
    return 0
