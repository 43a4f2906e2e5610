"""One way to build and check a settings dataclass, with errors that name the config key.

Every settings dataclass (ModelConfig, DataConfig and its noise configs, GenerationConfig,
EvalConfig, CopyWarmup) is built from a YAML mapping by `from_mapping`, which refuses unknown
and missing keys and values of the wrong type, and checks its own values in `__post_init__`
with `require` (and `check_types`, when it can also be built directly in Python). Every error
is one ValueError naming the full key, e.g. `data.noise.bart.mask_ratio=2 must be in [0, 1)`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from types import UnionType
from typing import Any, Literal

PREFIX_FIELD = "key_prefix"  # a dataclass field that receives the key prefix, if it has one


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless `condition`."""
    if not condition:
        raise ValueError(message)


def number(key: str, value: Any) -> float:
    """`value` as a float if it is an int or float (not a bool), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}={value!r} must be a number")
    return float(value)


def check_type(key: str, value: Any, hint: Any) -> None:
    """Reject e.g. a string where an int belongs (a bool is not a number, an int is a float)."""
    union = typing.get_origin(hint) in (typing.Union, UnionType)
    allowed = typing.get_args(hint) if union else (hint,)
    for option in allowed:
        if option is type(None) and value is None:
            return
        if typing.get_origin(option) is Literal:
            return  # the dataclass checks the value itself, with a better message
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option in (int, str) and isinstance(value, option) and not isinstance(value, bool):
            return
        if option is bool and isinstance(value, bool):
            return
        origin = typing.get_origin(option)
        if origin in (tuple, list, dict) and isinstance(value, origin):
            return
        if dataclasses.is_dataclass(option) and isinstance(value, option):
            return
    names = " or ".join(
        "null" if o is type(None) else getattr(o, "__name__", str(o)) for o in allowed
    )
    raise ValueError(f"{key}={value!r} must be {names}")


def check_types(settings: Any, prefix: str) -> None:
    """`check_type` for every field of a dataclass instance, keys `prefix.field`."""
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        if field.name != PREFIX_FIELD:
            check_type(f"{prefix}.{field.name}", getattr(settings, field.name), hints[field.name])


def from_mapping(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate a (nested) frozen dataclass from a mapping, with errors that name the key.

    Nested dataclasses and `dict[str, SomeDataclass]` fields are built from nested mappings; a
    dataclass with a `key_prefix` field is given its prefix (for its own error messages)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{prefix} must be a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != PREFIX_FIELD}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown key {prefix}.{unknown[0]}; valid keys of {prefix}: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_mapping(hint, value, f"{prefix}.{name}")
        elif typing.get_origin(hint) is dict:  # a mapping of names to dataclasses
            item = typing.get_args(hint)[1]
            if not isinstance(value, Mapping):
                raise ValueError(f"{prefix}.{name} must be a mapping of names to settings")
            value = {k: from_mapping(item, v, f"{prefix}.{name}.{k}") for k, v in value.items()}
        else:
            check_type(f"{prefix}.{name}", value, hint)
        kwargs[name] = value
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing key {prefix}.{missing[0]}")
    if any(f.name == PREFIX_FIELD for f in dataclasses.fields(cls)):
        kwargs[PREFIX_FIELD] = prefix
    return cls(**kwargs)
