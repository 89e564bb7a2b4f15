"""The Method class of each tuner as a module attribute, made on first use: the registry's lazy target
``peftbench_plugins.peft_tuners.classes:vera`` imports this module and reads ``vera``."""

from __future__ import annotations

from .catalog import keys
from .method import tuner_class


def __getattr__(key: str):
    if key in keys():
        return tuner_class(key)
    raise AttributeError(f"no PEFT tuner {key!r} in peftbench's catalog")
