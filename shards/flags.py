"""Command-line flags derived from config dataclasses: a field's name, type, default and
docstring are its flag's name, parser, default and help, so each exists in one place.

`batch_pairs: int = 64` documented "Pairs per step per rank." becomes `--batch-pairs
BATCH_PAIRS`, whose help reads "Pairs per step per rank. (default 64)". A field holding a config
section (a dataclass) adds that section's fields as flat flags of their own. A flag that is not
given stays out of the parsed namespace, so a command builds its config as "defaults, then a file
or a preset, then the flags given", and never mistakes a default for something the user typed.

How a type reads on the command line:
- `bool`: `--name` and `--no-name`;
- `int`, `float`, `str`, `Path` (and each `| None`): one value;
- `tuple`/`list` of numbers or strings: one comma-separated value (`--weights 0.7,0.3`);
- `tuple`/`list` of paths: the flag repeated, one path each (a path may hold a comma).
Anything else names its parser in a `Flag`.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Flag", "SKIP", "ConfigFlags", "field_docs", "with_values"]
FIRST_SENTENCE = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=\.)\s+(?=[A-Z])")


@dataclass(frozen=True)
class Flag:
    """How one field departs from the defaults above (all optional)."""

    name: str | None = None
    """The flag's name without dashes, where it is not the field's (two sections' fields share a
    name, or a flag users know by another name)."""
    positional: str | None = None
    """Take the value as a positional argument with this nargs ("+", "*", "?"; "1" for exactly one)."""
    choices: tuple | None = None
    """The values allowed, listed in --help."""
    parse: Callable[[Any], Any] | None = None
    """Text → value, for a type the rules above do not cover; called when the config is built,
    so its errors are the command's (a UserError is one line)."""
    repeat: bool = False
    """The flag may be given again: `parse` receives the list of every value given."""
    metavar: str | None = None
    """The value's name in --help."""


SKIP = Flag(name="")  # a field that is not a flag (a test knob, or set by the command itself)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal standing under it in the class body, as one line."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


@dataclass
class Leaf:
    """One field that is not a section: where it sits (`path` of field names) and how it parses."""

    path: tuple[str, ...]
    kind: Any  # the field's type, `| None` removed
    default: Any  # dataclasses.MISSING where the field is required
    doc: str
    flag: Flag

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    @property
    def name(self) -> str:
        return self.flag.name or self.path[-1]

    def value(self, parsed: Any) -> Any:
        """What argparse made of the flag, as the field's value."""
        if self.flag.parse is not None:
            return self.flag.parse(parsed)
        if typing.get_origin(self.kind) is tuple and isinstance(parsed, list):  # a repeated or positional flag
            return tuple(parsed)
        return parsed


def _unwrap(hint) -> Any:
    """`X | None` → X; anything else as it is."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _leaves(cls: type, flags: dict[str, Flag], prefix: tuple[str, ...] = ()) -> list[Leaf]:
    hints, docs, leaves = typing.get_type_hints(cls), field_docs(cls), []
    for f in fields(cls):
        path = (*prefix, f.name)
        kind = _unwrap(hints[f.name])
        if is_dataclass(kind):
            leaves += _leaves(kind, flags, path)
        else:
            leaves.append(Leaf(path, kind, _default(f), docs.get(f.name, ""),
                               flags.get(".".join(path), Flag())))
    return leaves


def _comma_list(item: type, arity: int | None, container: type, flag: str) -> Callable[[str], Any]:
    """A parser of one comma-separated value of `item`s (exactly `arity` of them, where fixed)."""
    def parse(text: str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [item(p) for p in parts]
        except ValueError:
            values = None
        if values is None or (arity is not None and len(values) != arity):
            count = f"{arity} " if arity is not None else ""
            what = "numbers" if item in (int, float) else "values"
            raise argparse.ArgumentTypeError(f"takes {count}comma-separated {what}, got {text!r}")
        return container(values)
    parse.__name__ = flag  # argparse names the parser in its "invalid value" message
    return parse


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _argument(leaf: Leaf) -> tuple[list[str], dict[str, Any]]:
    """argparse's add_argument(*names, **options) for one field."""
    flag, kind = leaf.flag, leaf.kind
    options: dict[str, Any] = {"dest": leaf.dest, "default": argparse.SUPPRESS}
    help_text = FIRST_SENTENCE.split(leaf.doc, 1)[0]  # the rest of a docstring is for readers of the code
    shown = leaf.default is not dataclasses.MISSING and leaf.default is not None and leaf.default != ""
    if shown and not flag.positional:
        help_text += f" (default {_show(leaf.default)})"
    options["help"] = help_text.replace("%", "%%")  # argparse formats help with %
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if flag.parse is not None:  # the text is kept as given; `ConfigFlags.given` parses it
        options["action"] = "append" if flag.repeat else "store"
    elif kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif origin in (tuple, list):
        item = args[0]
        if item is Path and not flag.positional:  # repeated, one path each
            options.update(action="append", type=Path)
        elif flag.positional:
            options["type"] = item
        else:
            arity = None if origin is list or (len(args) == 2 and args[1] is Ellipsis) else len(args)
            options["type"] = _comma_list(item, arity, origin, leaf.name)
    elif kind in (int, float, str, Path):
        options["type"] = kind
    else:
        raise TypeError(f"{'.'.join(leaf.path)}: give a Flag(parse=…) for its type {kind!r}")
    if flag.choices is not None:
        options["choices"] = flag.choices
    if (kind is not bool or flag.parse is not None) and flag.choices is None:  # else argparse shows the dest
        options["metavar"] = flag.metavar or (leaf.name if flag.positional else leaf.name.upper())
    if flag.positional:
        nargs = None if flag.positional == "1" else flag.positional
        options = {k: v for k, v in options.items() if k != "dest"} | ({"nargs": nargs} if nargs else {})
        return [leaf.dest], options
    if leaf.default is dataclasses.MISSING:
        options["required"] = True
    return [f"--{leaf.name.replace('_', '-')}"], options


class ConfigFlags:
    """The flags of one config dataclass (its sections flattened): added to a parser, then read
    back from the parsed namespace into a config.

    `flags` maps a field's dotted path (`fetch.retries`) to a `Flag` where it departs from the
    rules of this module; `SKIP` leaves a field off the command line."""

    def __init__(self, cls: type, flags: dict[str, Flag] | None = None):
        self.cls = cls
        self.leaves = [leaf for leaf in _leaves(cls, flags or {}) if leaf.flag is not SKIP]
        names = [leaf.name for leaf in self.leaves]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # a mistake of ours, caught by the test that builds every parser
            raise TypeError(f"{cls.__name__}: two fields would both be --{twice[0]}; name one in a Flag")

    def add_to(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        for leaf in self.leaves:
            names, options = _argument(leaf)
            parser.add_argument(*names, **options)
        return parser

    def given(self, args: argparse.Namespace) -> dict[tuple[str, ...], Any]:
        """The values the user gave, by field path."""
        present = vars(args)
        return {leaf.path: leaf.value(present[leaf.dest]) for leaf in self.leaves if leaf.dest in present}

    def build(self, args: argparse.Namespace, base: Any = None, **defaults) -> Any:
        """The config: `base` (or the dataclass's defaults, then `defaults`, e.g. a preset's
        thresholds), with every flag given on top."""
        values = {(name,): value for name, value in defaults.items()} | self.given(args)
        return with_values(base if base is not None else self.cls, values)


def with_values(config: Any, values: dict[tuple[str, ...], Any]) -> Any:
    """`config` (a dataclass instance, or a class to instantiate) with the values at these field
    paths set, sections included; fields not named keep their value (or default)."""
    cls = config if isinstance(config, type) else type(config)
    hints, changes = typing.get_type_hints(cls), {}
    for f in fields(cls):
        if (f.name,) in values:
            changes[f.name] = values[(f.name,)]
            continue
        inner = {path[1:]: v for path, v in values.items() if len(path) > 1 and path[0] == f.name}
        if inner:
            section = getattr(config, f.name) if not isinstance(config, type) else _unwrap(hints[f.name])
            changes[f.name] = with_values(section, inner)
    return cls(**changes) if isinstance(config, type) else dataclasses.replace(config, **changes)
