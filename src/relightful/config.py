"""Typed configs from `params.yaml`: a profile's section becomes a (nested) dataclass; unknown keys are errors.

`params.yaml` holds `profile: <name>` and one block per profile; `load_section(path, "render_pairs")` reads
`<profile>.render_pairs`. Overrides use dotted keys, as `dvc exp run -S` does: `plan.seed=3`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from relightful.io.errors import InputError

T = TypeVar("T")


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "params file not found") from None
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({err})") from None
    if not isinstance(params, dict):
        raise InputError(path, "expected a mapping at the top level")
    return params


def load_section(path: str | Path, section: str, profile: str | None = None) -> dict[str, Any]:
    """The `section` block of the active profile (or of `profile` when given)."""
    params = read_params(path)
    name = profile or params.get("profile", "tiny")
    if name not in params or not isinstance(params[name], dict):
        raise InputError(path, f"profile {name!r} not found")
    block = params[name].get(section)
    if not isinstance(block, dict):
        raise InputError(path, f"profile {name!r} has no section {section!r}")
    return block


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, returning a new dict."""
    out = _deep_copy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def deep_merge(base: dict, top: dict) -> dict:
    """`base` with `top` over it, nested mappings merged key by key (a profile's `train` block under `train_stageN`)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a dict, recursing into nested dataclasses and converting lists to tuples."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or cls.__name__}; expected some of {sorted(names)}")
    return cls(**{key: _coerce(hints[key], value, f"{where}.{key}" if where else key)
                  for key, value in values.items()})


def _coerce(hint, value, where: str):
    """`value` as the type `hint` asks for: nested dataclasses from dicts, tuples from lists, and whole numbers
    written as floats as ints (JSON and kfp's pipeline parameters carry every number as a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ValueError:
                continue
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if (origin is tuple or hint is tuple) and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        return tuple(value)
    if hint is int and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{where}: expected a whole number, got {value}")
        return int(value)
    return value


def load_config(cls: type[T], path: str | Path | None, section: str, overrides: list[str] | None = None,
                profile: str | None = None) -> T:
    """The dataclass config of a job: defaults, then params.yaml's section, then overrides."""
    values = load_section(path, section, profile) if path else {}
    return from_dict(cls, apply_overrides(values, overrides or []), section)
