"""`recce train`: train RECCE (or the Xception baseline) from a YAML config with the paper's recipe."""

from __future__ import annotations

import argparse

from recce.checkpoints import CheckpointError
from recce.data.video import MediaError, last_line
from recce.engine.config import ConfigError, load_config
from recce.locks import LockHeld

HELP = "train RECCE with the paper's recipe from a YAML config (multi-GPU: torchrun --nproc_per_node N -m recce train)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file in configs/ (defaults: the paper's FF++ recipe)")
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
    except (ConfigError, CheckpointError, LockHeld) as error:
        print(f"recce train: {error}")
        return 2
    except MediaError as error:  # a crop; from a DataLoader worker the message carries the worker's traceback
        reason = last_line(error).split("MediaError: ", 1)[-1]
        print(f"recce train: {reason} (re-run recce extract or fix the manifest)")
        return 2
    if result.main_process:
        state = "finished" if result.finished else "stopped (continue with --resume)"
        best = result.best
        summary = f"; best validation {best['metric']} {best['value']:.4f} at step {best['step']}" if best else ""
        print(f"{state} at step {result.step}; outputs in {result.out}{summary}")
    return 0
