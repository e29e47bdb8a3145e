"""The machinery of the typed configuration: declared fields, checked on construction, turned into a command line.

Standard library only (the command line validates before anything heavy is imported). A configuration is a
frozen dataclass deriving from :class:`Config` whose fields are declared with :func:`option`::

    @dataclass(frozen=True)
    class MyConfig(Config):
        GROUP = "my options"                         # argparse group of the fields declared here
        lr: float = option(1e-4, "learning rate", low=0.0, low_open=True)
        mode: str = option("a", "what to do", choices=("a", "b"))

        def check(self) -> None:                     # cross-field rules (call super().check() first)
            super().check()

On construction every field is converted and checked against its annotation (``int``, ``float`` — an int is
accepted and made a float —, ``int | float`` — a count or a fraction, kept as given: ``2`` vs ``2.0`` on the
command line —, ``bool``, ``str`` — an ``os.PathLike`` too when ``path=True`` —, ``dict`` — a JSON string too
when ``json=True`` —, ``tuple[int, int]``, ``tuple[T, ...]`` — one or more values, ``nargs="+"`` on the command
line, a single value accepted —, each optionally ``| None``), its ``choices`` (per item for a tuple) and its
range; then ``check()`` runs. Every failure is one ``ValueError`` naming the option and what to give instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from typing import Any, TypeVar

from makd.core.errors import ArgumentParser

C = TypeVar("C", bound="Config")
_NONE = type(None)


class Number:
    """The base type of an ``int | float`` field: a count (int) or a fraction (float), kept as given."""


def number(text: str) -> int | float:
    """A command-line value of an ``int | float`` field: ``"2"`` -> 2 (a count), ``"2.0"``/``"0.5"`` -> a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def option(default: Any, help: str = "", *, choices: tuple | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False, json: bool = False,
           path: bool = False, model: bool = False, group: str | None = None,
           metavar: str | tuple | None = None) -> Any:
    """A configuration field: default, help text and what is valid (``choices``; ``low``/``high`` bounds,
    inclusive unless ``*_open``); ``json``: a string value is parsed as JSON; ``path``: an ``os.PathLike`` is
    accepted as a string; ``model``: a model name, folder or hub id, where an existing folder must hold a
    ``config.json``; ``group``: the argparse group (default: the declaring class's ``GROUP``)."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open, "json": json, "path": path, "model": model, "group": group,
            "metavar": metavar, "empty": default == ()}   # a tuple option whose default is () may stay empty
    return dataclasses.field(default=default, metadata=meta)


def _kind(hint: Any) -> tuple[Any, tuple, bool]:
    """(base type, tuple item types, optional) of an annotation such as ``int | None`` or ``tuple[int, int]``."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = _NONE in args
    if int in args and float in args:                 # int | float: a count or a fraction, the type kept
        return Number, (), optional
    base = next(a for a in args if a is not _NONE)
    if typing.get_origin(base) is tuple:
        return tuple, typing.get_args(base), optional
    return base, (), optional


def _number(name: str, value: Any, base: type) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {'an int' if base is int else 'a number'}, got {value!r}")
    if base is float:
        return float(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _convert(name: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    base, items, optional = _kind(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must be given (a {base.__name__}), got None")
    if meta.get("json") and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: {value!r} is not valid JSON ({err.msg}); give a mapping such as "
                             '\'{"mha": 0}\'') from None
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if base in (int, float, Number):
        value = value if base is Number and isinstance(value, (int, float)) and not isinstance(value, bool) \
            else _number(name, value, float if base is Number else base)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return value
    if base is str:
        if meta.get("path") and isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if base is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping (or its JSON text), got {value!r}")
        return dict(value)
    if base is tuple and items[-1:] == (Ellipsis,):      # tuple[T, ...]: one or more values of type T
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values and not meta.get("empty"):
            raise ValueError(f"{name} needs at least one value")
        return tuple(_item(name, v, items[0]) for v in values)
    if base is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ValueError(f"{name} must be {len(items)} values, got {value!r}")
        return tuple(_number(name, v, t) for v, t in zip(value, items))
    raise TypeError(f"{name}: unsupported option type {hint!r}")


def _item(name: str, value: Any, item: type) -> Any:
    if item is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be names (strings), got {value!r}")
        return value
    return _number(name, value, item)


def _check_value(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if value is None:
        return
    if meta.get("model") and os.path.isdir(os.path.expanduser(value)) and not os.path.isfile(
            os.path.join(os.path.expanduser(value), "config.json")):
        raise ValueError(f"{name} {value} is a folder without config.json, not a model: give a save_pretrained "
                         "folder (config.json, weights, tokenizer), an embedded name or a hub id")
    choices = meta.get("choices")
    for v in value if isinstance(value, tuple) and choices is not None else (value,):
        if choices is not None and v not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    low, high = meta.get("low"), meta.get("high")
    for v in value if isinstance(value, tuple) else (value,):
        if low is not None and (v < low or (meta.get("low_open") and v == low)):
            raise ValueError(f"{name} must be {'>' if meta.get('low_open') else '>='} {low}, got {value!r}")
        if high is not None and (v > high or (meta.get("high_open") and v == high)):
            raise ValueError(f"{name} must be {'<' if meta.get('high_open') else '<='} {high}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every configuration: converts and checks each field on construction, then runs ``check()``."""
    GROUP = "options"
    PROG = None        # the command's prog and epilog, for build_parser
    EPILOG = None

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = _convert(f.name, getattr(self, f.name), hints[f.name], f.metadata)
            _check_value(f.name, value, f.metadata)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Cross-field rules; each part overrides it and calls ``super().check()`` first."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def field_names(cls: type[Config]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_from_kwargs(cls: type[C], **options: Any) -> C:
    """``cls(**options)``, with an unknown name a TypeError listing the valid ones (a wrong value: ValueError)."""
    valid = field_names(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(valid)}")
    return cls(**options)


def coerce_numbers(cls: type[Config], options: dict[str, Any]) -> dict[str, Any]:
    """The options with every number given the type of its field (``epochs: 1`` in YAML -> 1.0), nothing else
    touched: what a grid hashes, so a grid cell and the same command line give the same config hash."""
    hints = _hints(cls)
    out = {}
    for key, value in options.items():
        base = _kind(hints[key])[0] if key in hints else None
        if base in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = base(value)
        out[key] = value
    return out


def _group_of(cls: type, f: dataclasses.Field) -> str:
    if f.metadata.get("group"):
        return f.metadata["group"]
    for klass in reversed(cls.__mro__):
        if f.name in klass.__dict__.get("__annotations__", {}):
            return klass.__dict__.get("GROUP", getattr(klass, "GROUP", "options"))
    return "options"


def build_parser(cls: type[Config], *, prog: str | None = None, description: str | None = None,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``cls``: one ``--name`` per field (``--no-name`` for a field that defaults to
    True), grouped by part; only the options given reach the dataclass, which supplies the defaults."""
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())      # the first paragraph, one line
    prog = prog or cls.PROG
    p = ArgumentParser(prog=prog, usage=f"{prog} [OPTIONS]  (--help lists them)",
                                description=description or doc, epilog=epilog or cls.EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        title = _group_of(cls, f)
        g = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        base, items, _ = _kind(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        if base is bool:
            if f.default:
                g.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=text)
            else:
                g.add_argument(flag, dest=f.name, action="store_true", help=text)
            continue
        shown = "" if f.default is None else f" (default: {f.default})"
        kw: dict[str, Any] = {"dest": f.name, "help": text + shown}
        if base is tuple:
            kw.update(nargs="+" if items[-1:] == (Ellipsis,) else len(items), type=items[0])
        elif base in (int, float):
            kw["type"] = base
        elif base is Number:
            kw["type"] = number
        if f.metadata.get("choices") is not None:
            kw["choices"] = f.metadata["choices"]
        if f.metadata.get("metavar") is not None:
            kw["metavar"] = f.metadata["metavar"]
        g.add_argument(flag, **kw)
    return p


def parse_config(cls: type[C], argv: list[str] | None = None, *, prog: str | None = None,
                 description: str | None = None, epilog: str | None = None) -> C:
    """Parse ``argv`` into ``cls``: a wrong type, choice or range is one ``error:`` line (exit 2, argparse's)."""
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    namespace = parser.parse_args(argv)
    try:
        return cls(**vars(namespace))
    except ValueError as err:
        parser.error(str(err))
