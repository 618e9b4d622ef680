"""One parser from a recipe's mapping (or command-line values) to a typed, frozen config dataclass.

Keys may use dashes or underscores; an unknown key is refused at once with the valid keys listed; each
value is checked against the field's annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``,
``tuple[str, ...]``, ``tuple[float, float]``), lists become tuples. The config's own ``__post_init__``
then checks ranges and choices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from onnxq.errors import ConfigError


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation} of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_config(cls: type, data: Any, *, where: str, aliases: dict[str, str] | None = None) -> Any:
    """``cls(**data)`` with keys normalised and values checked; ConfigError names ``where`` and the key."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: options must be a mapping of option names to values, got {data!r:.80}",
            hint=f"write them as {{name: value}}; valid names: {', '.join(sorted(field_types(cls)))}",
        )
    known = field_types(cls)
    aliases = aliases or {}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = aliases.get(name, name)
        if name not in known:
            valid = sorted([*known, *aliases])
            raise ConfigError(f"{where}: unknown option {key!r}", hint=f"valid options: {', '.join(valid)}")
        kwargs[name] = coerce(value, known[name], f"{where}: {name}")
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-ready values (tuples as lists), the inverse of :func:`parse_config`."""
    return {
        f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v) for f in dataclasses.fields(config)
    }


def describe_type(annotation: Any) -> str:
    """A short name of an annotation for help texts: ``int | None``, ``list of str``."""
    args = typing.get_args(annotation)
    if _is_union(annotation):
        return " | ".join(describe_type(a) for a in args)
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {describe_type(args[0])}"
        return f"list of {len(args)} {describe_type(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against ``annotation`` (lists to tuples, ints to floats); ConfigError otherwise."""
    if _is_union(annotation):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if typing.get_origin(annotation) is tuple:
        return _coerce_tuple(value, typing.get_args(annotation), where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r:.80}", hint="write true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r:.80}", hint="write a whole number, e.g. 8")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r:.80}", hint="write a number, e.g. 0.5")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r:.80}", hint='write it in quotes, e.g. "float"')
        return value
    raise TypeError(f"parse_config cannot check annotation {annotation!r} ({where})")


def _coerce_tuple(value: Any, args: tuple, where: str) -> tuple:
    if isinstance(value, str) and args and args[0] is str:  # "a,b" from a flag or a recipe
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {value!r:.80}", hint="write a list, e.g. [1, 2]")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], where) for v in value)
    if len(value) != len(args):
        raise ConfigError(
            f"{where} must be a list of {len(args)} values, got {value!r:.80}",
            hint=f"write exactly {len(args)} values, e.g. [{', '.join(['1'] * len(args))}]",
        )
    return tuple(coerce(v, a, where) for v, a in zip(value, args, strict=True))
