"""What ``peftbench methods`` shows: each method's plugin, capabilities, availability and options."""

from __future__ import annotations

import dataclasses
from typing import Any

from peftbench.api.options import describe_fields
from peftbench.api.registry import collect_methods
from peftbench.errors import PluginError


def describe_methods(host: Any, device: str = "auto") -> list[dict[str, Any]]:
    if device == "auto":
        import importlib.util

        device = "cpu"
        if importlib.util.find_spec("torch") is not None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
    reg = collect_methods(host, strict=False)
    rows = []
    for name in reg.names():
        entry = reg.entries[name]
        row: dict[str, Any] = {"name": name, "aliases": list(entry.aliases), "plugin": entry.plugin}
        try:
            cls = entry.load_class()
            avail = cls().availability(device)
            row.update(description=cls.description, capabilities=dataclasses.asdict(cls.capabilities),
                       default_lr=cls.default_lr, available=avail.ok, reason=avail.reason or None,
                       options=describe_fields(cls.Config))
        except PluginError as e:
            row.update(description="", capabilities=None, default_lr=None, available=False, reason=str(e), options=[])
        rows.append(row)
    return rows
