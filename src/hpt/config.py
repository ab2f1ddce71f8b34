"""YAML in, validated dataclasses out: every error names the bad key and what would be valid."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hpt.errors import HptError

T = TypeVar("T")
#: A plain decimal number, with an optional exponent: 0.03, 1e-3, 3E-4, -2.5e+5.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is an HptError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise HptError(f"config file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise HptError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8, "
                       f"e.g. iconv -f latin1 -t utf-8 {path} > fixed.yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise HptError(f"{path} is not valid YAML: {_yaml_problem(err)}; fix the YAML there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HptError(f"{path} must hold a mapping of keys at the top level, not a {type(data).__name__}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line and column, 1-based) and what the parser found."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(problem.split()) + (f" ({' '.join(context.split())})" if context else "")


def unknown_key_error(key: str, where: str, valid: typing.Iterable[str]) -> HptError:
    """The error for a key that the section does not have, with the valid keys and a guess."""
    valid = sorted(valid)
    guess = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    name = f"{where}.{key}" if where else key
    return HptError(f"unknown config key '{name}'{hint} (valid keys here: {', '.join(valid)})")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking every key and value type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise HptError(f"config section '{where or cls.__name__}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise unknown_key_error(str(key), where, fields)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise HptError(f"missing config key '{path}'")
    return cls(**kwargs)


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Check (and lightly coerce) one value against its type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if isinstance(hint, type) and hasattr(hint, "from_config"):  # a value type read from one YAML value
        return hint.from_config(value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except HptError as err:
                errors.append(str(err))
        raise HptError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise HptError(f"{path} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HptError(f"{path} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise HptError(f"{path} must have {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise HptError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise HptError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HptError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HptError(f"{path} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise HptError(f"{path} must be a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise HptError(f"{path} must be a path, got {value!r}")
        return Path(value)
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML-able data; a value type (one with as_config, e.g. a DataSpec) as its YAML value."""
    if hasattr(obj, "as_config") and not isinstance(obj, type):
        return obj.as_config()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML). In a list of named items, a name selects an item:
    `stages.target.steps=100`; a number selects by position: `stages.2.steps=100`."""
    for item in overrides:
        if "=" not in item:
            raise HptError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                index = _list_index(node, part, where)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise HptError(f"override {item!r}: '{'.'.join(parts[:depth])}' is not a section")
    return raw


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.isdigit():
        index = int(part)
        if index >= len(items):
            raise HptError(f"override '{where}': there are only {len(items)} items")
        return index
    names = [it.get("name") for it in items if isinstance(it, dict)]
    if part in names:
        return names.index(part)
    raise HptError(f"override '{where}': no item named '{part}' (names: {', '.join(map(str, names))})")


def deep_merge(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` over `defaults`, recursively for nested mappings."""
    out = dict(defaults)
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def field_at(cls: type, key: str) -> tuple[Any, Any]:
    """The type hint and the default of the dataclass field at dotted `key` (e.g. 'moco.queue_size'), looking into
    nested dataclasses and optional ones ('stop.every' of `stop: StopConfig | None`); the default is
    dataclasses.MISSING for a required field. KeyError for a key that is no field."""
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if head not in fields:
        raise KeyError(f"{cls.__name__} has no field {head!r}")
    hint = typing.get_type_hints(cls)[head]
    if rest:
        section = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if not section:
            raise KeyError(f"{cls.__name__}.{head} is no section")
        return field_at(section[0], rest)
    field = fields[head]
    if field.default_factory is not dataclasses.MISSING:
        return hint, field.default_factory()
    return hint, field.default


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given by dotted keys as nested mappings: {'moco.dim': 16, 'lr': 0.1} -> {'moco': {'dim': 16},
    'lr': 0.1}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *sections, last = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    return out
