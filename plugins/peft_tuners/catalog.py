"""The catalog: what the survey (``python -m peftbench_plugins.peft_tuners.survey``) measured of each PEFT
tuner on tiny:llama, stored as ``catalog.json`` so that listing and registering methods read a file instead
of importing peft."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).with_name("catalog.json")


@functools.cache
def load() -> dict[str, Any]:
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def keys() -> list[str]:
    """Every tuner of the catalog (offered or not), e.g. ``vera``."""
    return sorted(load()["tuners"])


def entry(key: str) -> dict[str, Any]:
    """Tuner ``key``'s facts, with the peft version they were measured with."""
    catalog = load()
    return {**catalog["tuners"][key], "peft_version": catalog["peft_version"]}
