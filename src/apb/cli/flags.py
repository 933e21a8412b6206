"""Command-line flags from configuration dataclasses: each field becomes ``--field-name``
with the type its annotation gives and the help text its docstring gives, so a job's
options and its flags cannot drift apart. A field whose type is itself a dataclass (a
job's nested method configuration) contributes its own fields, with dest ``field__name``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``apb train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def parse_bool_or_path(text: str):
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    return text


def _hints(annotation) -> tuple:
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    hints = typing.get_args(annotation) if union else (annotation,)
    return tuple(h for h in hints if h is not type(None))


def arg_type(annotation):
    """The argparse ``type`` for a dataclass field annotation (None for booleans)."""
    hints = _hints(annotation)
    if bool in hints and str in hints:
        return parse_bool_or_path
    if hints == (bool,):
        return None
    for kind in (int, float, str):
        if kind in hints:
            return kind
    if any(typing.get_origin(h) is dict or h is dict for h in hints):
        return parse_json_dict
    if any(typing.get_origin(h) is tuple for h in hints):
        return lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
    return str


def field_help(doc: str, name: str) -> str | None:
    """The text documenting ``name`` in a dataclass docstring: a ``name: text`` or
    ``name, other: text`` line and its more-indented continuation lines."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        head, sep, text = line.strip().partition(":")
        if not sep or name not in [h.strip() for h in head.split(",")]:
            continue
        indent = len(line) - len(line.lstrip())
        parts = [text.strip()]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                break
            parts.append(nxt.strip())
        return " ".join(parts).replace("``", "").replace("%", "%%")
    return None


def class_docs(cls) -> str:
    """The docstrings of ``cls`` and its bases: a subclass documents only its own fields."""
    return "\n".join((c.__doc__ or "") for c in cls.__mro__)


def add_field_flag(parser, name: str, annotation, *, dest: str, default, help: str | None):
    kind = arg_type(annotation)
    if kind is None:
        parser.add_argument(flag(name), dest=dest, default=default,
                            action=argparse.BooleanOptionalAction, help=help)
    else:
        parser.add_argument(flag(name), dest=dest, default=default, type=kind,
                            metavar=name.upper(), help=help)


def add_dataclass_flags(parser, cls, *, skip=(), prefix: str = "") -> None:
    """A flag per field of ``cls`` (but those in ``skip``, which may name nested fields as
    ``outer.inner``); nested dataclass fields add theirs under their own heading."""
    hints = typing.get_type_hints(cls)
    doc = class_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        nested = _nested_class(hints[f.name])
        if nested is not None:
            group = parser.add_argument_group(
                f.name, f"fields of {nested.__module__}.{nested.__name__}")
            inner_skip = {s.partition(".")[2] for s in skip if s.startswith(f"{f.name}.")}
            add_dataclass_flags(group, nested, skip=inner_skip, prefix=f"{prefix}{f.name}__")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        add_field_flag(parser, f.name, hints[f.name], dest=prefix + f.name, default=default,
                       help=field_help(doc, f.name))


def from_args(cls, args: argparse.Namespace, prefix: str = "", **overrides):
    """An instance of ``cls`` from the parsed flags :func:`add_dataclass_flags` added (fields
    without a flag keep their defaults; ``overrides`` win)."""
    values = vars(args)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        nested = _nested_class(hints[f.name])
        if nested is not None and f.name not in overrides:
            kwargs[f.name] = from_args(nested, args, prefix=f"{prefix}{f.name}__")
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    kwargs.update(overrides)
    return cls(**kwargs)


def _nested_class(annotation):
    hints = _hints(annotation)
    if len(hints) == 1 and dataclasses.is_dataclass(hints[0]):
        return hints[0]
    return None
