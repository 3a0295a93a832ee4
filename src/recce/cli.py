"""The `recce` command line: one sub-command per task, each defined in `recce.commands.<name>`."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module in recce.commands exposing `HELP`, `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "extract": "extract",
    "manifest": "manifest",
    "synth": "synth",
    "train": "train",
    "evaluate": "evaluate",
    "visualize": "visualize",
    "detect": "detect",
    "demo": "demo",
    "convert": "convert",
    "models": "models",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"recce.commands.{module_name}")
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
