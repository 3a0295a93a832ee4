"""`recce train`: train any registered detector from a YAML config (configs/<detector>/<dataset>.yaml)."""

from __future__ import annotations

import argparse

from recce.checkpoints import CheckpointError
from recce.engine.config import ConfigError, load_config

HELP = "train a detector from a YAML config, e.g. configs/recce/ffpp_c23.yaml (multi-GPU: torchrun ... -m recce train)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file, e.g. configs/recce/ffpp_c23.yaml (`recce models` lists detectors)")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="e.g. train.steps=1000 data.workers=8"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in train.out from its last.pt")
    parser.add_argument("--stop-after", type=int, metavar="N", help="train N more steps, save, and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to train.log)")


def run(args: argparse.Namespace) -> int:
    from recce.engine.train import train

    try:
        config = load_config(args.config, args.overrides)
        result = train(config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    except (ConfigError, CheckpointError) as error:
        print(f"recce train: {error}")
        return 2
    if result.main_process:
        state = "finished" if result.finished else "stopped (continue with --resume)"
        best = result.best
        summary = f"; best validation {best['metric']} {best['value']:.4f} at step {best['step']}" if best else ""
        print(f"{state} at step {result.step}; outputs in {result.out}{summary}")
    return 0
