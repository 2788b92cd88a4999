"""The keys of a config: every setting as a dotted key with its value, and the meaning of each key
taken from the comments of the config file that sets it."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Collection

from ml_collections import ConfigDict


_REQUIRED = object()


def value_at(config, key: str, default=_REQUIRED):
    """The value of dotted ``key`` (``models.depth``) in a config or nested mapping; ``default`` where
    a part is missing (without a default, a ``KeyError`` naming the key)."""
    value = config
    for part in key.split("."):
        if not hasattr(value, "keys") or part not in value:
            if default is _REQUIRED:
                raise KeyError(f"no config key {key!r}")
            return default
        value = value[part]
    return value


def flat_items(config, whole_dicts: Collection[str] = (), prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every setting of a ConfigDict, in its key order; each group named in
    ``whole_dicts`` (dotted keys) is one item whose value is a plain dict."""
    items = []
    for name, value in config.items():
        key = prefix + name
        if key in whole_dicts:
            items.append((key, value.to_dict()))
        elif isinstance(value, ConfigDict):
            items += flat_items(value, whole_dicts, key + ".")
        else:
            items.append((key, value))
    return items


def key_meanings(config_file: Path) -> dict[str, str]:
    """Dotted config key -> its comment, from ``config/base.py`` (next to ``config_file``) and from
    ``config_file`` itself, whose comments win."""
    meanings = {}
    for path in dict.fromkeys([config_file.with_name("base.py"), config_file]):
        if path.is_file():
            meanings.update(comments_of_assignments(path.read_text()))
    return meanings


def comments_of_assignments(source: str) -> dict[str, str]:
    """Dotted key -> comment of each ``config.a.b = ...`` (or ``alias.b = ...``) of a config file:
    the comment-only lines right above the assignment, then the comment ending its line."""
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    comment_only = {number for number in comments if lines[number - 1].lstrip().startswith("#")}
    assignments = sorted((node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)),
                         key=lambda node: node.lineno)
    aliases, meanings = {"config": ""}, {}
    for node in assignments:
        keys = [dotted_key(target, aliases) for target in node.targets]
        key = next((k for k in keys if k), None)
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id != "config":
                aliases[target.id] = key if key else target.id
        block = comment_lines_above(comments, comment_only, node.lineno)
        if node.lineno in comments and node.lineno not in comment_only:
            block.append(node.lineno)
        if key and block:
            meanings[key] = " ".join(comments[number] for number in block)
    return meanings


def dotted_key(target: ast.expr, aliases: dict[str, str]) -> str | None:
    """``config.sample.num_steps`` -> ``sample.num_steps`` (through ``aliases``); None otherwise."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if not parts or not isinstance(target, ast.Name) or target.id not in aliases:
        return None
    return ".".join(part for part in [aliases[target.id], *reversed(parts)] if part)


def comment_lines_above(comments: dict[int, str], comment_only: set[int], line: int) -> list[int]:
    """Line numbers of the comment-only lines right above ``line``, top first, up to a section
    header ``# ---- name ----``."""
    block, number = [], line - 1
    while number in comment_only and not comments[number].startswith("----"):
        block.insert(0, number)
        number -= 1
    return block


def parse_sde_window(text: str) -> tuple[int, int] | None:
    """``sample.sde_window``: "start:stop" -> (start, stop); "" -> None (every step). A ValueError
    for any other form."""
    if not text.strip():
        return None
    start, separator, stop = text.partition(":")
    if not separator or not start.strip().isdigit() or not stop.strip().isdigit():
        raise ValueError(f"not of the form 'start:stop' (two whole numbers): {text!r}")
    return int(start), int(stop)
