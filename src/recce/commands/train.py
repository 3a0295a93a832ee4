"""`recce train`: train any registered detector from a YAML config (configs/<detector>/<dataset>.yaml)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="YAML file, e.g. configs/recce/ffpp_c23.yaml for the paper's FF++ recipe (without one: the engine's "
        "defaults, RECCE from random initialisation, and data.manifest must be given)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="e.g. train.steps=1000 data.size=64 data.workers=8 (a first YAML file here stands for --config)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN_DIR",
        help="continue a run from its last.pt: give its folder (its stored config is used), or use the --config's "
        "train.out",
    )
    parser.add_argument("--stop-after", type=int, metavar="N", help="train N more steps, save, and exit")
    parser.add_argument(
        "--show-config", action="store_true", help="print every key with its value, default and meaning, then exit"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to train.log)")


def _show(config) -> None:
    rows = [
        (key, json.dumps(value), json.dumps(default), meaning) for key, value, default, meaning in config.describe()
    ]
    width = max(len(f"{key} = {value}") for key, value, _, _ in rows) + 2
    for key, value, default, meaning in rows:
        changed = "" if value == default else f"  (default {default})"
        print(f"{key} = {value}".ljust(width) + f"# {meaning}{changed}".rstrip(" #"))


def run(args: argparse.Namespace) -> int:
    from recce.checkpoints import CheckpointError
    from recce.data.video import MediaError, last_line
    from recce.engine.config import ConfigError, load_config
    from recce.locks import LockHeld

    try:
        config_path, overrides = args.config, list(args.overrides)
        if overrides and "=" not in overrides[0] and overrides[0].endswith((".yaml", ".yml")):
            if config_path is not None:
                raise ConfigError(f"two config files: --config {config_path} and {overrides[0]}; give one")
            config_path = overrides.pop(0)  # `recce train configs/x.yaml key=value`, as people type it
        if isinstance(args.resume, str):  # a run folder: its stored config, its own out
            run_dir = Path(args.resume)
            if args.config is None:
                config_path = run_dir / "config.yaml"
                if not config_path.is_file():
                    raise ConfigError(f"{run_dir}: not a run folder (no config.yaml); give --config as well")
            overrides.append(f"train.out={run_dir}")
        config = load_config(config_path, overrides)
        if args.show_config:
            _show(config)
            return 0
        from recce.engine.train import train

        logging.basicConfig(level=logging.WARNING, format="recce train: %(levelname)s: %(message)s")  # to stderr
        result = train(config, resume=bool(args.resume), stop_after=args.stop_after, progress=not args.no_progress)
    except (ConfigError, CheckpointError, LockHeld) as error:
        print(f"recce train: {error}", file=sys.stderr)
        return 2
    except MediaError as error:  # a crop; from a DataLoader worker the message carries the worker's traceback
        reason = last_line(error).split("MediaError: ", 1)[-1]
        print(f"recce train: {reason} (re-run recce extract or fix the manifest)", file=sys.stderr)
        return 2
    if result.main_process:
        state = "finished" if result.finished else f"stopped (continue with: recce train --resume {result.out})"
        best = result.best
        summary = f"; best validation {best['metric']} {best['value']:.4f} at step {best['step']}" if best else ""
        print(f"{state} at step {result.step}; outputs in {result.out}{summary}")
    return 0
