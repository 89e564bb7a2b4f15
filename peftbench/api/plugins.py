"""The plugin manager: built-ins, then entry points of group ``peftbench``, then ``--plugin`` modules.

Discovery order (as pytest and simonw/llm do it):

1. names blocked with ``--disable-plugin NAME`` or ``PEFTBENCH_DISABLE_PLUGINS=a,b`` are never loaded;
2. the built-in plugins, an explicit list;
3. entry points of group ``peftbench`` (skipped entirely with ``PEFTBENCH_DISABLE_PLUGIN_AUTOLOAD=1``),
   each loaded in its own try/except: a broken plugin is reported by ``peftbench plugins`` and the
   rest keep working (``PEFTBENCH_STRICT_PLUGINS=1`` or ``strict=True`` re-raises instead);
4. modules named with ``--plugin module.path`` or ``PEFTBENCH_PLUGINS=a,b``;
5. ``check_pending()``: a hook implementation whose name matches no hookspec fails loudly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from peftbench.api import hookspecs
from peftbench.errors import PluginError

PROJECT = "peftbench"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "peftbench.session.defaults",
    "peftbench_plugins.lora",
    "peftbench_plugins.qlora",
    "peftbench_plugins.adapter",
    "peftbench_plugins.full",
    "peftbench.tasks.builtin",
)


@dataclass
class LoadFailure:
    name: str
    distribution: str | None
    error: str
    traceback: str = ""


@dataclass
class PluginHost:
    """The plugin manager plus what loading it taught us (failures, which distribution gave which)."""

    pm: pluggy.PluginManager
    failures: list[LoadFailure] = field(default_factory=list)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)  # plugin name -> (dist, version)
    blocked: tuple[str, ...] = ()

    @property
    def hook(self) -> Any:
        return self.pm.hook


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def make_plugin_manager(
    extra_plugins: list[str] | tuple[str, ...] = (),
    disable: list[str] | tuple[str, ...] = (),
    strict: bool | None = None,
    load_entrypoints: bool | None = None,
) -> PluginHost:
    """Build the plugin manager. ``strict`` re-raises plugin load errors (default from
    ``PEFTBENCH_STRICT_PLUGINS``)."""
    strict = _env_flag("PEFTBENCH_STRICT_PLUGINS") if strict is None else strict
    if load_entrypoints is None:
        load_entrypoints = not _env_flag("PEFTBENCH_DISABLE_PLUGIN_AUTOLOAD")
    blocked = tuple(dict.fromkeys([*disable, *_env_list("PEFTBENCH_DISABLE_PLUGINS")]))
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm=pm, blocked=blocked)
    for name in blocked:
        pm.set_blocked(name)

    def add(name: str, loader, dist: tuple[str, str] | None) -> None:
        if pm.is_blocked(name):
            return
        try:
            plugin = loader()
            pm.register(plugin, name=name)
        except Exception as e:  # a broken plugin must not take peftbench down
            if strict:
                raise PluginError(f"plugin {name!r} failed to load: {type(e).__name__}: {e}") from e
            host.failures.append(LoadFailure(name, dist[0] if dist else None, f"{type(e).__name__}: {e}",
                                             traceback.format_exc()))
            return
        if dist:
            host.distributions[name] = dist

    for mod in BUILTIN_PLUGINS:
        add(mod, lambda mod=mod: importlib.import_module(mod), ("peftbench", _version("peftbench")))
    if load_entrypoints:
        for ep in importlib.metadata.entry_points(group=PROJECT):
            dist = (ep.dist.name, ep.dist.version) if ep.dist else None
            add(ep.name, ep.load, dist)
    for mod in [*extra_plugins, *_env_list("PEFTBENCH_PLUGINS")]:
        add(mod, lambda mod=mod: importlib.import_module(mod), None)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"a plugin implements a hook that does not exist: {e}. Hook names: "
                          f"{', '.join(sorted(hook_names()))}.") from None
    return host


def hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if not n.startswith("_") and hasattr(getattr(hookspecs, n),
                                                                             "peftbench_spec")]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def describe_plugins(host: PluginHost) -> list[dict[str, Any]]:
    """One dict per plugin: name, distribution, version, hooks implemented, methods/tasks registered."""
    from peftbench.api.registry import collect_methods

    methods = collect_methods(host, strict=False)
    by_plugin: dict[str, list[str]] = {}
    for entry in methods.entries.values():
        by_plugin.setdefault(entry.plugin, []).append(entry.name)
    out = []
    for name, plugin in host.pm.list_name_plugin():
        if plugin is None:
            continue
        dist = host.distributions.get(name)
        hooks = sorted(h.name for h in host.pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "distribution": dist[0] if dist else None,
                    "version": dist[1] if dist else None, "hooks": hooks,
                    "methods": sorted(by_plugin.get(name, [])), "status": "loaded", "error": None})
    for f in host.failures:
        out.append({"name": f.name, "distribution": f.distribution, "version": None, "hooks": [],
                    "methods": [], "status": "failed", "error": f.error})
    for name in host.blocked:
        out.append({"name": name, "distribution": None, "version": None, "hooks": [], "methods": [],
                    "status": "disabled", "error": None})
    return out
