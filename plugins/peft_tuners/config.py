"""A tuner's peftbench ``Config``: a dataclass made from the catalog's option list (PEFT's own fields, help
and defaults), and its values turned back into PEFT's config keyword arguments."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from peftbench import ConfigError

TYPES: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str, "list[str]": list[str],
                         "list[int]": list[int], "int | float": int | float}
ALL_LINEAR = "all-linear"


def python_type(option: dict[str, Any]) -> Any:
    """The annotation of a catalog option: its type, a ``Literal`` of its choices, ``| None`` if it may be
    unset."""
    name = option["type"]
    optional = name.endswith(" | None")
    name = name.removesuffix(" | None")
    choices = tuple(option.get("choices", ()))
    if name == "bool | str":
        tp: Any = bool | typing.Literal[choices]
    elif choices:
        tp = typing.Literal[choices]
    else:
        tp = TYPES[name]
    return tp | None if optional else tp


def make_config_class(key: str, options: list[dict[str, Any]]) -> type:
    """The dataclass ``PeftConfig_<key>`` with one field per option, PEFT's default and help text."""
    fields = []
    for option in options:
        default = option["default"]
        value = (dataclasses.field(default_factory=lambda d=default: list(d), metadata={"help": option["help"]})
                 if isinstance(default, list) else dataclasses.field(default=default, metadata={"help": option["help"]}))
        fields.append((option["name"], python_type(option), value))
    cls = dataclasses.make_dataclass(f"PeftConfig_{key}", fields, namespace={"__post_init__": _check_numbers})
    cls.__module__ = __name__
    return cls


def _check_numbers(self) -> None:
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        if isinstance(value, float) and value != value:
            raise ConfigError(f"option {f.name!r} must be a number, got nan.")


def peft_kwargs(config: Any, options: list[dict[str, Any]]) -> dict[str, Any]:
    """``config``'s values as PEFT's config takes them: a list option PEFT also takes as one string gets
    ``all-linear`` as that string."""
    out = {}
    for option in options:
        value = getattr(config, option["name"])
        if option.get("single") and value == [ALL_LINEAR]:
            value = ALL_LINEAR
        out[option["name"]] = value
    return out
