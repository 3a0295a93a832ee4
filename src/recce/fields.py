"""What each configuration field means, read from the comment beside it in its dataclass (written once, there)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import tokenize


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """`{field: comment}` for the fields of a dataclass that carry a trailing `# comment` on their line."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    line_field: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row = token.start[0]
        if token.type == tokenize.NAME and token.string in names and row not in line_field and token.start[1] == 4:
            line_field[row] = token.string
        elif token.type == tokenize.COMMENT and row in line_field:
            comments[line_field[row]] = token.string.lstrip("# ").strip()
    return comments
