"""`recce demo`: generate synthetic forgeries, train a detector on the CPU, evaluate, and write a report."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from recce.demo import DemoConfig, run_demo
from recce.detectors import detector_class


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--out", default="recce-demo", help="report folder (default recce-demo)")
    parser.add_argument("--detector", default=defaults.detector, help="the detector to train (`recce models`)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    parser.add_argument("--identities", type=int, default=defaults.identities, help="synthetic identities")
    parser.add_argument("--size", type=int, default=defaults.size, help="crop and model input size")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the cores the machine is not already busy with)"
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    config = dataclasses.replace(
        DemoConfig(),
        detector=args.detector,
        steps=args.steps,
        identities=args.identities,
        size=args.size,
        seed=args.seed,
        threads=args.threads,
    )
    try:
        detector_class(args.detector)
    except ValueError as error:
        print(f"recce demo: {error}", file=sys.stderr)
        return 2
    summary = run_demo(args.out, config, progress=not args.no_progress)
    auc = summary["within_method_auc"]
    print(f"\nheld-out AUC on the manipulations {args.detector} trained on: {auc:.4f}")
    for row in summary["per_method"]:
        print(f"  {row['method']:<11} frame AUC {row['frame AUC']:.4f}  ({row['seen in training']})")
    print(f"report: {args.out}/report.md   checkpoint: {summary['checkpoint']}")
    print(f"try the tools: recce detect VIDEO --checkpoint {summary['checkpoint']}")
    print(
        "this checkpoint knows only synthetic cartoon faces: its scores on real media mean nothing. For real media, "
        "convert published weights (`recce weights` lists them) or train on a real dataset."
    )
    return 0
