"""Configuration: dataclasses with help text, built from mappings or ``--set KEY=VALUE`` strings.

Every error names the field, the bad value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import field
from typing import Any

from peftbench.errors import ConfigError, did_you_mean


def option(text: str, **kw: Any) -> Any:
    """A dataclass field with its help text (shown by ``peftbench options`` / ``methods`` and in the docs)."""
    return field(metadata={"help": text}, **kw)


def check_choices(what: str, values: dict[str, tuple[Any, tuple[str, ...]]]) -> None:
    """Raise a ConfigError naming the first option whose value is not among its valid ones."""
    for name, (value, valid) in values.items():
        if value not in valid:
            raise ConfigError(f"{what} {name!r} must be one of {', '.join(valid)}; got {value!r}."
                              f"{did_you_mean(str(value), valid)}")


DTYPES = ("auto", "fp32", "bf16")


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """Name, type, default and help of each field (for ``peftbench methods`` and the docs)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                    "help": f.metadata.get("help", "")})
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON value) to the annotated type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin in (list, tuple):
        items = [coerce(v, args[0] if args else str, where) for v in _as_list(value, where)]
        return items if origin is list else tuple(items)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}.")
        return value
    scalar = _SCALARS.get(tp)
    return scalar(value, where) if scalar else value


def _coerce_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    """The first member type that takes ``value`` (None, 'none' or 'null' for an optional)."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in args:
            return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")


def _as_list(value: Any, where: str) -> list[Any]:
    """A list from a JSON list, a comma-separated string or a list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: {value!r} is not a JSON list ({e.msg}).") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list (comma-separated or JSON), got {value!r}.")
    return list(value)


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}.")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}.")


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}.")


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected a string, got {value!r}.")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, coercing types; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"Unknown option {key!r} for {where}.{did_you_mean(key, names)} "
                              f"Valid options: {', '.join(names)}.")
        kwargs[key] = coerce(value, hints[key], f"option {key!r} of {where}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_jsonable(obj: Any) -> Any:
    """A dataclass (or nested structure) as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def parse_sets(items: list[str], method_names: list[str], option_names: list[str]
               ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split ``--set`` strings into shared options and per-method options.

    ``KEY=VALUE`` sets a shared option (one of ``option_names``: training, evaluation and latency options);
    ``METHOD.KEY=VALUE`` sets an option of that method's config. Values stay strings here; they are typed
    when the configs are built.
    """
    train: dict[str, Any] = {}
    per_method: dict[str, dict[str, Any]] = {}
    train_names = list(option_names)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE or METHOD.KEY=VALUE, e.g. --set lr=1e-4 "
                              "or --set lora.r=8.")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            method, sub = key.split(".", 1)
            if method.split("@", 1)[0] not in method_names:  # NAME@LABEL: a variant of NAME
                raise ConfigError(f"--set {item!r}: unknown method {method!r}.{did_you_mean(method, method_names)}"
                                  f" Methods: {', '.join(sorted(method_names))}.")
            per_method.setdefault(method, {})[sub] = value
        else:
            if key not in train_names:
                raise ConfigError(f"--set {item!r}: unknown training option {key!r}.{did_you_mean(key, train_names)}"
                                  f" Training options: {', '.join(train_names)}; method options are set as "
                                  "METHOD.KEY=VALUE (see `peftbench methods`).")
            train[key] = value
    return train, per_method
