"""What the listing commands show: each method's plugin, capabilities, availability and options; each
task's use, data source and whether its data is here; each plugin's distribution, hooks and methods."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from peftbench.api.options import describe_fields
from peftbench.api.plugins import PluginHost, sentence, task_dirs
from peftbench.api.registry import collect_methods
from peftbench.errors import PluginError


def describe_methods(host: PluginHost, device: str = "auto") -> list[dict[str, Any]]:
    if device == "auto":
        import importlib.util

        device = "cpu"
        if importlib.util.find_spec("torch") is not None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
    reg = collect_methods(host)
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


def describe_tasks(host: PluginHost, tasks_dirs: list[Path],
                   data_dir: Path | None) -> tuple[Path | None, list[dict[str, Any]]]:
    """The local data folder (None: hub sources), and one row per task the plugins and ``tasks_dirs`` define,
    the same set ``peftbench run --tasks`` chooses from."""
    from peftbench.session.plan import all_tasks
    from peftbench.tasks.data import availability, count_rows, data_root

    found = all_tasks(host, tasks_dirs)
    root = data_root(data_dir)
    rows = []
    for t in found.values():
        row = t.describe()
        if row.get("broken"):  # its task file did not load: listed with the error, the other tasks unaffected
            row.update(available=False, source="broken task file", sizes=None)
        elif t.spec is None:
            row.update(available=True, source=f"generated ({t.data['generate']})", sizes=None)
        else:
            ok, source = availability(t.spec, root)
            row.update(available=ok, source=source, sizes=count_rows(t.spec, root))
        rows.append(row)
    return root, rows


def describe_plugins(host: PluginHost) -> list[dict[str, Any]]:
    """One dict per plugin: name, distribution, version, hooks implemented, methods registered, status
    (``loaded``; ``conflict`` or ``failed`` when its registrations went wrong, with the error and fix); then
    the plugins that failed to load or were disabled for a hook that does not exist, and those disabled."""
    methods = collect_methods(host)
    task_dirs(host)  # notes a broken register_tasks in host.problems
    by_plugin: dict[str, list[str]] = {}
    for entry in methods.entries.values():
        by_plugin.setdefault(entry.plugin, []).append(entry.name)
    out = []
    for name, plugin in host.pm.list_name_plugin():
        if plugin is None:
            continue
        dist = host.distributions.get(name)
        hooks = sorted(h.name for h in host.pm.get_hookcallers(plugin) or [])
        problems = host.problems.get(name, [])
        status = "loaded" if not problems else "conflict" if all("already taken" in p for p in problems) else "failed"
        out.append({"name": name, "distribution": dist[0] if dist else None,
                    "version": dist[1] if dist else None, "hooks": hooks,
                    "methods": sorted(by_plugin.get(name, [])), "status": status,
                    "error": " ".join(problems) or None})
    for f in host.failures:
        out.append({"name": f.name, "distribution": f.distribution, "version": None, "hooks": [],
                    "methods": [], "status": "failed", "error": sentence(f.error, f.hint)})
    for name in host.blocked:
        out.append({"name": name, "distribution": None, "version": None, "hooks": [], "methods": [],
                    "status": "disabled", "error": None})
    return out
