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
from pathlib import Path
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


# ---- registration hooks -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Registration:
    """One call a plugin made to the ``register`` callback of a registration hook."""

    plugin: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def registrations(host: PluginHost, hook: str) -> list[Registration]:
    """Call the registration hook ``hook`` (``register_methods`` or ``register_tasks``) through pluggy, one
    plugin at a time in load order (built-ins first), and return every call each made to ``register``,
    credited to its plugin. Load order decides who keeps a taken name; pluggy alone would call the
    last-loaded plugin first and not say who registered what."""
    impls = getattr(host.hook, hook).get_hookimpls()  # load order
    made: list[Registration] = []
    for impl in impls:
        others = [i.plugin for i in impls if i.plugin is not impl.plugin]
        only_this = host.pm.subset_hook_caller(hook, remove_plugins=others)

        only_this(register=_recorder(made, impl.plugin_name))
    return made


def _recorder(made: list[Registration], plugin: str) -> Any:
    def register(*args: Any, **kwargs: Any) -> None:
        made.append(Registration(plugin, args, kwargs))

    return register


def task_dirs(host: PluginHost) -> list[Path]:
    """The task folders the plugins register (``register_tasks``), in load order: a later folder's task of
    the same name wins (``peftbench.tasks.task.discover_tasks``)."""

    def folder(path: str | Path) -> Path:  # the hookspec's register(path)
        return Path(path)

    return [folder(*r.args, **r.kwargs) for r in registrations(host, "register_tasks")]
