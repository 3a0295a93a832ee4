"""The commands the README and the docs show exist and take the options they are shown with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recce.cli import COMMANDS, main
from recce.engine.config import ConfigError, load_config

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
WITH_SUBCOMMANDS = ("manifest", "weights")


def _shown_commands() -> list[tuple[str, str]]:
    """(document, command line) for every `recce ...` line of a shell block and every inline `recce ...`."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        lines = [  # unlabelled blocks also hold program output: there only `python -m recce` lines are commands
            line.split(" #")[0]
            for language, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S)
            for line in block.splitlines()
            if language in ("bash", "sh", "console") or line.startswith("python -m recce ")
        ]
        lines += re.findall(r"`((?:python -m )?recce [^`]+)`", text.replace("\n", " "))
        for line in lines:
            match = re.match(r"^\s*(?:python -m )?recce ([a-z]+\b.*)$", line)
            if match:
                found.append((doc.relative_to(ROOT).as_posix(), match[1].strip()))
    return found


def _options(argv: list[str], capsys) -> set[str]:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", capsys.readouterr().out))


def test_documented_commands_and_options_exist(capsys):
    shown = _shown_commands()
    assert len(shown) > 50  # the README's quick start, datasets, training, evaluation, detection, ... sections
    known: dict[tuple[str, ...], set[str]] = {}
    problems = []
    for doc, line in shown:
        words = line.split()
        command = words[0]
        if command not in COMMANDS:
            problems.append(f"{doc}: `recce {line}`: no command {command!r}")
            continue
        argv = [command]
        if command in WITH_SUBCOMMANDS and len(words) > 1 and re.fullmatch(r"[a-z]+", words[1]):
            argv.append(words[1])
        if tuple(argv) not in known:
            known[tuple(argv)] = _options(argv, capsys)
        for word in words[1:]:
            option = word.split("=")[0].rstrip(".,;:)")
            if option.startswith("--") and option not in known[tuple(argv)]:
                problems.append(f"{doc}: `recce {line}`: {' '.join(argv)} has no option {option}")
        if command == "train" and "$" not in line:
            problems += _config_problems(doc, line, words[1:])
    assert not problems, "\n".join(problems)


def _config_problems(doc: str, line: str, words: list[str]) -> list[str]:
    """A shown training command's config file and `section.key=value` overrides load as the engine loads them."""
    config = None
    if "--config" in words:
        config = words[words.index("--config") + 1]
    elif words and words[0].endswith(".yaml"):
        config = words[0]
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    if config is not None and not (ROOT / config).is_file():
        return [] if "<" in config else [f"{doc}: `recce train {' '.join(words)}`: no file {config}"]
    try:
        load_config(ROOT / config if config else None, overrides)
    except ConfigError as error:
        return [f"{doc}: `recce {line}`: {error}"]
    return []
