"""Rebuild a config dataclass from the dict ``dataclasses.asdict`` made of it (config.json, checkpoints)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: Any, section: str,
                     nested: dict[str, type | Callable[[Any], Any]] | None = None) -> T:
    """``cls(**d)`` with lists turned back into tuples where the field is a tuple.

    ``nested`` rebuilds the named fields: a dataclass type recursively (as section ``name``
    below the top level ``section=""``, else ``section.name``), anything else by calling it on
    the value. A key that is no field of ``cls`` is a ValueError naming the section and the key
    (a record of a newer megamix).
    """
    label = f"config section {section!r}" if section else "config"
    if not isinstance(d, dict):
        raise ValueError(f"{label}: expected an object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in fields]
    if unknown:
        raise ValueError(f"{label}: unknown key {unknown[0]!r} (written by a newer megamix?); "
                         f"known keys: {', '.join(fields)}")
    nested = nested or {}
    kwargs = {}
    for name, value in d.items():
        build = nested.get(name)
        if isinstance(build, type) and dataclasses.is_dataclass(build):
            value = config_from_dict(build, value, f"{section}.{name}" if section else name)
        elif build is not None:
            value = build(value)
        elif isinstance(value, list) and "tuple" in str(fields[name].type):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
