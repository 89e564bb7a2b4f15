"""A PEFT config dataclass's fields as peftbench options: name, type, default and help, as plain JSON (the
catalog stores them, so listing methods never imports peft).

Types are kept to what ``--set`` and a run file's JSON can carry: numbers, booleans, strings, lists of them,
a fixed set of strings (``Literal``), each optionally ``None``. PEFT's ``list[str] | str`` (module names, or
one regular expression) becomes a list of names; ``["all-linear"]`` is passed on as PEFT's ``"all-linear"``.
A field of another type (a dict such as ``rank_pattern``, a nested config such as ``loftq_config``) is left
at PEFT's default and not offered as an option: ``skipped`` lists them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any

# PeftConfig's own fields: peftbench sets these itself (task_type CAUSAL_LM) or they describe a saved adapter
BASE_FIELDS = ("auto_mapping", "base_model_name_or_path", "inference_mode", "peft_type", "peft_version",
               "revision", "task_type")
SCALARS = {int: "int", float: "float", bool: "bool", str: "str"}
NO_HELP = "(PEFT's config gives no help text for this field)"


def describe_config(cls: type) -> tuple[list[dict[str, Any]], list[str]]:
    """The options of PEFT config class ``cls`` and the names of the fields left out (their type or default
    cannot be written as JSON)."""
    hints = _hints(cls)
    options, skipped = [], []
    for f in dataclasses.fields(cls):
        if f.name in BASE_FIELDS or not f.init:
            continue
        option = _option(f, hints.get(f.name, f.type))
        (options.append(option) if option else skipped.append(f.name))
    return options, skipped


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that names something the module does not define at run time
        return {}


def _option(f: dataclasses.Field, hint: Any) -> dict[str, Any] | None:
    kind = _kind(hint)
    if kind is None:
        return None
    type_name, choices, as_list = kind
    default = _default(f)
    if default is dataclasses.MISSING:
        return None
    if isinstance(default, enum.Enum):
        default = default.value
    if as_list and isinstance(default, (str, int)) and not isinstance(default, bool):
        default = [default]
    try:
        json.dumps(default)
    except TypeError:
        return None
    if default is None and not type_name.endswith(" | None"):  # annotated int, defaulting to None: unset
        type_name += " | None"
    help_text = " ".join(str(f.metadata.get("help") or NO_HELP).split())
    return {"name": f.name, "type": type_name, "default": default, "help": help_text,
            **({"choices": list(choices)} if choices else {}), **({"single": True} if as_list else {})}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _kind(hint: Any) -> tuple[str, tuple[str, ...], bool] | None:
    """(type name, choices, whether a single value stands for a one-element list), or None: not offered."""
    if isinstance(hint, str):
        return None
    members = list(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    optional = type(None) in members
    members = [m for m in members if m is not type(None)]
    named = _members(members)
    if named is None:
        return None
    type_name, choices, as_list = named
    return (type_name + (" | None" if optional else "")), choices, as_list


def _members(members: list[Any]) -> tuple[str, tuple[str, ...], bool] | None:
    lists = [m for m in members if typing.get_origin(m) is list]
    rest = [m for m in members if m not in lists]
    if len(lists) == 1:  # list[X], or list[X] | X: one value is a list of one
        item = typing.get_args(lists[0])
        item = item[0] if item else str
        if item not in (str, int) or any(m not in (item, str) for m in rest):
            return None
        return f"list[{SCALARS[item]}]", (), bool(rest)
    literals = [m for m in rest if typing.get_origin(m) is typing.Literal]
    plain = [m for m in rest if m not in literals]
    choices = tuple(a for lit in literals for a in typing.get_args(lit))
    if any(not isinstance(c, str) for c in choices):
        return None
    plain = [str if isinstance(m, type) and issubclass(m, enum.Enum) else m for m in plain]  # enum: its value
    plain = list(dict.fromkeys(plain))
    if not plain and choices:
        return "str", choices, False
    if plain == [bool] and choices:
        return "bool | str", choices, False
    if choices and plain == [str]:
        return "str", (), False  # a Literal or any string: any string
    if sorted(map(str, plain)) == sorted(map(str, (int, float))):
        return "int | float", (), False
    if len(plain) == 1 and plain[0] in SCALARS:
        return SCALARS[plain[0]], (), False
    return None
