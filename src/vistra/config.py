"""Layered, typed run configs: dataclass defaults <- YAML file <- `--set key=value` overrides.

Configs are (nested) dataclasses. `resolve_config` builds one from the layers, checking every key and
converting every value to the field's type, and `save_config` writes the resolved result as YAML into the
run folder, where `resolve_config(..., yaml_path=that file)` reads it back to the same object.
Every problem raises ValueError naming the key (and file) involved.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vistra.atomic_io import write_text_atomic

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with YAML 1.2's floats: `1e-3` and `5e4` are numbers, not strings (PyYAML wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load, with `1e-3`-style floats read as numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def parse_set(item: str) -> tuple[str, Any, str]:
    """`"train.lr=1e-3"` -> ("train.lr", parsed value, raw text). Values are read as YAML scalars or lists."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {item!r}: expected key=value, e.g. train.lr=0.001")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"--set {item!r}: value is not valid YAML ({' '.join(str(err).split())})") from None
    return key, value, raw


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file holding a mapping -> dict ({} for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file does not exist")
    try:
        data = load_yaml_text(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def resolve_config(
    cls: type[T],
    yaml_path: str | os.PathLike | None = None,
    sets: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Build `cls` from its defaults, then `base` (a nested dict), then the YAML file, then `--set` items.

    Dotted keys address nested sections (`train.lr`). Unknown keys and values of the wrong type raise
    ValueError; the message names the key and, for YAML, the file.
    """
    cfg = cls()
    if base:
        cfg = merge(cfg, base, source="base config")
    if yaml_path is not None:
        cfg = merge(cfg, load_yaml(yaml_path), source=str(yaml_path))
    for item in sets:
        key, value, raw = parse_set(item)
        cfg = set_key(cfg, key, value, raw=raw, source="--set")
    return cfg


def merge(cfg: T, values: Mapping[str, Any], source: str, prefix: str = "") -> T:
    """A copy of dataclass `cfg` with the (nested) mapping `values` applied on top."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(values).__name__}")
    for key, value in values.items():
        cfg = set_key(cfg, str(key), value, source=source, prefix=prefix)
    return cfg


def set_key(cfg: T, key: str, value: Any, source: str, raw: str | None = None, prefix: str = "") -> T:
    """A copy of `cfg` with the dotted `key` set to `value`, converted to the field's type.

    `prefix` is the dotted path of `cfg` itself inside the whole config (for messages only).
    """
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    if head not in fields:
        raise ValueError(f"{source}: unknown config key {prefix + key!r}{_suggest(head, fields)}")
    hints = typing.get_type_hints(type(cfg))
    current = getattr(cfg, head)
    if dataclasses.is_dataclass(current):
        if rest:
            new = set_key(current, rest, value, source, raw, prefix=f"{prefix}{head}.")
        else:
            new = merge(current, value, source, prefix=f"{prefix}{head}.")
        return _replace(cfg, head, new, source)
    if rest:
        raise ValueError(f"{source}: config key {prefix + head!r} is a value, not a section (got {prefix + key!r})")
    return _replace(cfg, head, coerce(value, hints[head], prefix + key, source, raw), source)


def _replace(cfg: T, name: str, value: Any, source: str) -> T:
    try:
        return dataclasses.replace(cfg, **{name: value})  # type: ignore[type-var]
    except (TypeError, ValueError) as err:  # __post_init__ validation
        raise ValueError(f"{source}: {err}") from None


def coerce(value: Any, hint: Any, key: str, source: str, raw: str | None = None) -> Any:
    """Convert a YAML value to the type `hint` (int, float, bool, str, Optional, list, tuple, dict, Any)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, source, raw)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{source}: {key}={value!r} does not fit {_name(hint)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: {key}={value!r} must be a list ({_name(hint)})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{source}: {key}={value!r} must have {len(args)} items ({_name(hint)})")
            return tuple(coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{source}: {key}={value!r} must be a mapping ({_name(hint)})")
        key_type, value_type = args or (Any, Any)
        return {coerce(k, key_type, key, source): coerce(v, value_type, f"{key}.{k}", source) for k, v in value.items()}
    return _scalar(value, hint, key, source, raw)


def _scalar(value: Any, hint: Any, key: str, source: str, raw: str | None) -> Any:
    bad = ValueError(f"{source}: {key}={value!r} must be {_name(hint)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if raw is not None:
            return raw.strip()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise bad


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as nested plain dicts/lists (tuples become lists), ready for YAML or JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (field order kept); returns the path."""
    return write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _suggest(name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")
