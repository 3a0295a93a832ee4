"""The `recce` command line: one sub-command per task, each defined in `recce.commands.<name>`.

Only the module of the command being run is imported (`recce --help` imports none), so a command pays for the
libraries it uses and no other: `recce manifest info` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from recce import __version__

# sub-command -> its one-line help; the module recce.commands.<name> has `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "extract": "extract face crops from a dataset's videos into a manifest (resumable, parallel, shardable; "
    "--pack: into tar shards)",
    "manifest": "merge manifests (e.g. extraction shards), show what a manifest holds, add face landmarks to it, or "
    "pack its crops into tar shards",
    "synth": "generate the synthetic face-forgery benchmark (face crops and manifest) into a folder",
    "train": "train a detector from a YAML config, e.g. configs/recce/ffpp_c23.yaml (multi-GPU: torchrun)",
    "evaluate": "evaluate checkpoints: within/cross-dataset, cross-manipulation (Table 4) or robustness (Table 5)",
    "visualize": "draw a detector's maps (RECCE's difference masks, RFM's / MultiAtt's attention) for face crops",
    "detect": "score your own images, videos or folders of them with a trained detector's checkpoint",
    "serve": "a local web app (and HTTP API) to check images and videos for face forgeries in a browser",
    "demo": "try a detector (RECCE by default) offline: synthetic data, CPU training, evaluation, report (minutes)",
    "models": "list the detectors: input size, normalisation, maps, source (official/port/re-implementation), paper",
    "convert": "convert a detector's published weights (authors' or DeepfakeBench's) into this project's .safetensors",
    "export": "export a checkpoint to ONNX (dynamic batch; p_fake and the detector's maps; preprocessing in metadata)",
    "weights": "list published trained weights per detector: where to get them, training data, preprocessing",
    "tables": "write the paper's tables (seed Tables 1-5) from evaluation outputs, beside the published numbers",
}


class DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first argument that is one)."""
    return next((arg for arg in argv if arg in COMMANDS), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of the command named in `argv` (all commands when `argv` is None)."""
    parser = argparse.ArgumentParser(prog="recce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"recce {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = set(COMMANDS) if argv is None else {_command_of(argv)}
    for name, text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=text, description=text, formatter_class=DefaultsShown)
        if name in wanted:
            module = importlib.import_module(f"recce.commands.{name}")
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
