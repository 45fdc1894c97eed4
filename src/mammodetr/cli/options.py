"""Command-line flags made from the typed configs, so a default and its help text are written once.

A flag's type comes from the dataclass field's annotation and its help from the ``Attributes:`` section of the
class docstring. Every generated flag defaults to None ("not given"), so only the flags a user typed override
the dataclass defaults (or a YAML layer). Booleans get ``--x/--no-x``; ``Literal`` fields get choices;
``Optional`` fields also accept ``none``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from typing import Any, get_type_hints

__all__ = ["field_help", "add_field_flag", "add_dataclass_flags", "given", "nested", "default_of"]


def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` from the ``Attributes:`` section of a (Google-style) class docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if "Attributes:" not in doc:
        return {}
    lines = doc.split("Attributes:", 1)[1].splitlines()
    body = [line for line in lines if line.strip()]
    indent = len(body[0]) - len(body[0].lstrip()) if body else 0
    out: dict[str, str] = {}
    current: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth < indent:  # the next section starts
            break
        m = re.match(r"^([\w, ]+):\s*(.*)$", line.strip()) if depth == indent else None
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for name in current:
                out[name] = m.group(2).strip()
        elif current:
            for name in current:
                out[name] += " " + line.strip()
    return out


def _none_or(convert):
    # "none" stays a string here: a flag's None means "not given", and ``given`` turns "none" into None.
    def parse(text: str):
        return "none" if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _flag_spec(hint: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field annotation."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(hint)) + (["none"] if optional else [])}
    if origin in (tuple, list):
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
        n = len(typing.get_args(hint)) if origin is tuple and Ellipsis not in typing.get_args(hint) else "+"
        return {"type": inner, "nargs": n}
    if hint in (int, float, str):
        return {"type": _none_or(hint) if optional else hint}
    return {"type": str}


def _at_least(convert, minimum):
    """An argparse type: ``convert``, then refuse a value below ``minimum`` (the field's ``metadata["min"]``)."""
    def parse(text: str):
        value = convert(text)
        if value != "none" and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_field_flag(parser, cls: type, name: str, flag: str | None = None, help: str | None = None, **extra) -> None:
    """One flag for field ``name`` of ``cls`` (``dest`` is the field name unless ``extra`` says otherwise).

    A field's ``metadata={"min": m}`` makes the parser refuse values below ``m``, before anything runs.
    """
    hint = get_type_hints(cls)[name]
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    shown = default.default if default.default is not dataclasses.MISSING else default.default_factory()
    text = help if help is not None else field_help(cls).get(name, "")
    # argparse %-formats help strings: a docstring's "10-25 % of" would crash --help, so % is literal here
    shown_help = f"{text} (default: {_shown(shown)})".strip().replace("%", "%%")
    spec = {"dest": name, "default": None, "help": shown_help, **_flag_spec(hint), **extra}
    if "min" in default.metadata and "type" in spec:
        spec["type"] = _at_least(spec["type"], default.metadata["min"])
    parser.add_argument(flag or "--" + name.replace("_", "-"), **spec)


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def add_dataclass_flags(parser, cls: type, *, exclude: tuple[str, ...] = (), rename: dict[str, str] | None = None
                        ) -> None:
    """A flag for every field of ``cls`` but ``exclude``; ``rename`` maps field -> flag."""
    rename = rename or {}
    for f in dataclasses.fields(cls):
        if f.name not in exclude:
            add_field_flag(parser, cls, f.name, rename.get(f.name))


def given(args: argparse.Namespace, cls: type, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given (the string ``none`` becomes None)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if f.name in exclude or value is None:
            continue
        out[f.name] = None if value == "none" else (tuple(value) if isinstance(value, list) else value)
    return out


def nested(path: str, value: Any) -> dict[str, Any]:
    """``nested("data.path", x)`` -> ``{"data": {"path": x}}``."""
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def default_of(func, name: str) -> Any:
    """The default of parameter ``name`` of ``func`` (a flag that passes a value on shows the same default)."""
    return inspect.signature(func).parameters[name].default
