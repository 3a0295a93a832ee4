"""Sub-commands of the `recce` command line, one module each, and the argument helpers they share."""

from __future__ import annotations

import argparse
import sys


class _DeprecatedSpelling(argparse.Action):
    """An old option name that still works, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"recce: {option_string} is deprecated, use {self.new} (the face detector)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_face_detector_argument(group: argparse._ActionsContainer, help: str) -> None:
    """`--face-detector` (dest `detector`); the old `--detector` spelling keeps working with a warning."""
    group.add_argument("--face-detector", dest="detector", default="auto", help=help)
    group.add_argument(
        "--detector", dest="detector", action=_DeprecatedSpelling, new="--face-detector", help=argparse.SUPPRESS
    )
