"""Typed configs from `params.yaml`: a profile's section becomes a (nested) dataclass; unknown keys are errors.

`params.yaml` holds `profile: <name>` and one block per profile; `load_section(path, "render_pairs")` reads
`<profile>.render_pairs`. Overrides use dotted keys, as `dvc exp run -S` does: `plan.seed=3`.
"""

from __future__ import annotations

import dataclasses
import math
import re
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


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; `key` is its dotted path (`model.codec.factor`), so the
    caller that knows the file (params.yaml, a model folder's relightful.json) can name both."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}" if key else reason)


# Numeric fields that measure an extent or a scale, or count the items of a unit or the steps of a run: `image_size`,
# `sky_height`, `widths`, `block_out_channels`, `factor`, `micro_batch`, `pairs_per_shard`, `layers_per_block`,
# `steps`. Zero or less is never meaningful there and would fail deep inside a job (a division, an empty tensor, a
# reshape) instead of at load. Counts that may be zero (`n_visual`, `warmup_steps`, `code_dim`) do not match, nor
# do the entries of a per-name mapping (`pairs_per_subject: {val: 0}`).
_POSITIVE_FIELD = re.compile(r"(?:^|_)(?:size|height|width|widths|channels|factor|batch)$|_per_|^steps$")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a dict, checking every value against the field's annotation (int, float, bool,
    str, Optional/Union, Literal, tuples, dicts, nested dataclasses) and positivity where the field's name says it
    is a size, factor or step count (`_POSITIVE_FIELD`). Lists become tuples; whole numbers written as floats become
    ints (JSON and kfp's pipeline parameters carry every number as a float). Anything else raises `ConfigError`
    naming the dotted key, never a TypeError from deep inside a job."""
    if not isinstance(values, dict):
        raise ConfigError(where, f"expected a mapping of {cls.__name__} settings, got {_shown(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(where, f"unknown key(s) {unknown}; expected some of {sorted(fields)}")
    kwargs = {key: _coerce(hints[key], value, f"{where}.{key}" if where else key, bool(_POSITIVE_FIELD.search(key)))
              for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # a missing required field, or the class's own __post_init__ check
        raise ConfigError(where, str(err)) from None


def _coerce(hint, value, where: str, positive: bool = False):
    """`value` checked against the type `hint` and returned in that type's form (see `from_dict`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, positive)
            except ConfigError as err:
                errors.append((arg, err))
        shaped = [err for arg, err in errors if _same_shape(arg, value)]
        if len(shaped) == 1:  # a mapping given for `int | dict[str, int]`: the mapping's own error is the useful one
            raise shaped[0]
        raise ConfigError(where, f"expected {_describe(hint, positive)}, got {_shown(value)}")
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):  # 1 is not True, nor 1.0 1
            return value
        raise ConfigError(where, f"expected one of {', '.join(map(repr, args))}, got {_shown(value)}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected {_describe(hint, positive)}, got {_shown(value)}")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else typing.Any
            return tuple(_coerce(item, v, f"{where}[{i}]", positive) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(where, f"expected {_describe(hint, positive)}, got {_shown(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]", positive) for i, (a, v) in enumerate(zip(args, value)))
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected {_describe(hint, positive)}, got {_shown(value)}")
        item = args[0] if args else typing.Any
        return [_coerce(item, v, f"{where}[{i}]", positive) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected {_describe(hint, positive)}, got {_shown(value)}")
        key_hint, value_hint = args if args else (typing.Any, typing.Any)
        # entries per name (per split) may be zero: "nothing for this one" (pairs_per_subject: {val: 0})
        return {_coerce(key_hint, k, where): _coerce(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):  # 0/1 or "yes" in quotes: say so rather than guess
            raise ConfigError(where, f"expected true or false, got {_shown(value)}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(where, f"expected {_describe(int, positive)}, got {_shown(value)}")
        if positive and value < 1:
            raise ConfigError(where, f"expected {_describe(int, positive)}, got {_shown(value)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 1e-3 as a string: a float written so is meant as one
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(where, f"expected {_describe(float, positive)}, got {_shown(value)}")
        if positive and value <= 0:
            raise ConfigError(where, f"expected {_describe(float, positive)}, got {_shown(value)}")
        return value  # an int stays an int: configs are hashed into fingerprints and written to JSON as given
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {_shown(value)}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(where, f"expected {_describe(hint, positive)}, got {_shown(value)}")
    return value


def _same_shape(hint, value) -> bool:
    """Whether `value` is the kind of container `hint` is (a mapping for dicts and dataclasses, a list for tuples
    and lists): which arm of a Union the value was meant for."""
    origin = typing.get_origin(hint) or hint
    if isinstance(value, dict):
        return origin is dict or dataclasses.is_dataclass(hint)
    if isinstance(value, (list, tuple)):
        return origin in (tuple, list)
    return False


def _describe(hint, positive: bool = False) -> str:
    """A type annotation in words, for messages: `tuple[int, ...]` -> "a list of positive whole numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a, positive) for a in args)
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} settings"
    if origin is tuple or hint is tuple or origin is list or hint is list:
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} {_plural(args[0], positive)}"
        return f"a list of {_plural(args[0], positive)}" if args else "a list"
    if origin is dict or hint is dict:
        return f"a mapping of names to {_plural(args[1], False)}" if args else "a mapping"
    words = {int: ("a positive whole number", "a whole number"), float: ("a positive number", "a number"),
             bool: ("true or false",) * 2, str: ("a string",) * 2}
    if hint in words:
        return words[hint][0 if positive else 1]
    return f"a {getattr(hint, '__name__', hint)}"


def _plural(hint, positive: bool) -> str:
    words = {int: "whole numbers", float: "numbers", bool: "booleans", str: "strings"}
    if hint in words:
        return f"positive {words[hint]}" if positive and hint in (int, float) else words[hint]
    return _describe(hint, positive)


def _shown(value) -> str:
    """A value as a message shows it: repr, shortened."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def config_error_source(err: ConfigError, path: str | Path | None, overrides: list[str] | None = None) -> str:
    """Where a bad value came from, for the message: the `--set` override that wrote its key, else the params
    file, else the command line's defaults."""
    key = "." + re.sub(r"\[\d+\]", "", err.key) + "."
    for item in overrides or []:
        name = item.partition("=")[0].strip()
        if name and f".{name}." in key:
            return f"--set {item}"
    return str(path) if path else "config"


def load_config(cls: type[T], path: str | Path | None, section: str, overrides: list[str] | None = None,
                profile: str | None = None) -> T:
    """The dataclass config of a job: defaults, then params.yaml's section, then overrides. A bad value raises
    `InputError` naming the file (or the `--set` that gave it) and the key."""
    values = load_section(path, section, profile) if path else {}
    try:
        return from_dict(cls, apply_overrides(values, overrides or []), section)
    except ConfigError as err:
        raise InputError(config_error_source(err, path, overrides), str(err)) from None
