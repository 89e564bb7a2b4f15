"""The plugin manager: built-ins, then entry points of group ``peftbench``, then ``--plugin`` modules.

Discovery order (as pytest and simonw/llm do it):

1. names blocked with ``--disable-plugin NAME`` or ``PEFTBENCH_DISABLE_PLUGINS=a,b`` are never loaded;
2. the built-in plugins, an explicit list;
3. entry points of group ``peftbench`` (skipped entirely with ``PEFTBENCH_DISABLE_PLUGIN_AUTOLOAD=1``),
   each loaded in its own try/except: a broken plugin is reported by ``peftbench plugins`` and the
   rest keep working (``PEFTBENCH_STRICT_PLUGINS=1`` or ``strict=True`` re-raises instead);
4. modules named with ``--plugin module.path`` or ``PEFTBENCH_PLUGINS=a,b``;
5. each plugin, as it is registered, is checked: a hook implementation whose name matches no hookspec (a
   misspelling) gets the plugin unregistered and reported with a did-you-mean and the fix, or raised when
   strict; the other plugins and every command that does not need it keep working.
"""

from __future__ import annotations

import difflib
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
    "peftbench_plugins.peft_tuners",
    "peftbench.tasks.builtin",
)


@dataclass
class LoadFailure:
    """A plugin that is not in use: it failed to import (``kind="import"``) or implements a hook that does
    not exist (``kind="hook"``, then it is unregistered). ``hint`` says how to fix or silence it."""

    name: str
    distribution: str | None
    error: str
    traceback: str = ""
    kind: str = "import"
    hint: str = ""

    @property
    def message(self) -> str:
        """The whole story in a sentence or three: which plugin, what went wrong, the fix."""
        said = self.error if self.error.startswith("plugin ") else f"plugin {self.name!r} failed to load: {self.error}"
        return sentence(said, self.hint)

    @property
    def fatal_message(self) -> str:
        """``message`` for ``--strict-plugins``, which stops instead of disabling the plugin."""
        return self.message.replace(DISABLED, "")


@dataclass
class PluginHost:
    """The plugin manager plus what loading it taught us (failures, which distribution gave which)."""

    pm: pluggy.PluginManager
    failures: list[LoadFailure] = field(default_factory=list)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)  # plugin name -> (dist, version)
    blocked: tuple[str, ...] = ()
    strict: bool = False  # plugin problems raise PluginError instead of being reported
    problems: dict[str, list[str]] = field(default_factory=dict)  # loaded plugin -> what its hooks got wrong

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
    """Build the plugin manager. A plugin that fails to import or has a bad hook is left out and listed in
    ``host.failures``; ``strict`` (default from ``PEFTBENCH_STRICT_PLUGINS``) raises PluginError instead."""
    strict = _env_flag("PEFTBENCH_STRICT_PLUGINS") if strict is None else strict
    if load_entrypoints is None:
        load_entrypoints = not _env_flag("PEFTBENCH_DISABLE_PLUGIN_AUTOLOAD")
    blocked = tuple(dict.fromkeys([*disable, *_env_list("PEFTBENCH_DISABLE_PLUGINS")]))
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm=pm, blocked=blocked, strict=strict)
    for name in blocked:
        pm.set_blocked(name)

    def add(name: str, loader, dist: tuple[str, str] | None) -> None:
        if pm.is_blocked(name):
            return
        failure = _register(pm, name, loader, dist)
        if failure is None:
            if dist:
                host.distributions[name] = dist
        elif strict:
            raise PluginError(failure.fatal_message) from None
        else:
            host.failures.append(failure)

    for mod in BUILTIN_PLUGINS:
        add(mod, lambda mod=mod: importlib.import_module(mod), ("peftbench", _version("peftbench")))
    if load_entrypoints:
        for ep in importlib.metadata.entry_points(group=PROJECT):
            dist = (ep.dist.name, ep.dist.version) if ep.dist else None
            add(ep.name, ep.load, dist)
    for mod in [*extra_plugins, *_env_list("PEFTBENCH_PLUGINS")]:
        add(mod, lambda mod=mod: importlib.import_module(mod), None)
    return host


def _register(pm: pluggy.PluginManager, name: str, loader: Any, dist: tuple[str, str] | None
              ) -> LoadFailure | None:
    """Import and register one plugin; what went wrong (None: nothing). A plugin that fails to import, whose
    hooks take arguments their hookspec does not name, or that implements a hook no hookspec declares is
    left unregistered: it must not take peftbench down."""
    where = dist[0] if dist else None
    try:
        plugin = loader()
    except Exception as e:
        return LoadFailure(name, where, f"{type(e).__name__}: {e}", traceback.format_exc(), hint=_fix(name, dist))
    try:
        pm.register(plugin, name=name)
    except Exception as e:  # pluggy checks each hook's arguments against its hookspec
        if pm.get_plugin(name) is plugin:  # pluggy registered the hooks before the bad one
            pm.unregister(name=name)
        return LoadFailure(name, where, f"{type(e).__name__}: {e}", traceback.format_exc(), kind="hook",
                           hint=_fix(name, dist))
    bad = _unknown_hooks(pm, plugin)
    if bad:
        pm.unregister(name=name)
        return LoadFailure(name, where, _unknown_hooks_message(name, dist, bad), kind="hook",
                           hint=_fix(name, dist, unregistered=True))
    return None


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """The hook names ``plugin`` implements that no hookspec declares (pluggy's ``check_pending``, for one
    plugin), optional hooks aside."""
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                  if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook
                                                   for i in caller.get_hookimpls()))


def _unknown_hooks_message(name: str, dist: tuple[str, str] | None, bad: list[str]) -> str:
    package = f" (package {dist[0]} {dist[1]})" if dist else ""
    names = hook_names()
    close = {b: difflib.get_close_matches(b, names, n=1, cutoff=0.6) for b in bad}
    each = ", ".join(f"{b!r}" + (f" (did you mean {close[b][0]!r}?)" if close[b] else "") for b in bad)
    listed = "" if all(close.values()) else f" Hook names: {', '.join(sorted(names))}."
    return (f"plugin {name!r}{package} implements {'a hook' if len(bad) == 1 else 'hooks'} that does not "
            f"exist: {each}.{listed}")


def sentence(*parts: str) -> str:
    """Join message parts, each ended with a full stop."""
    return " ".join(p if p.endswith((".", "?", "!")) else p + "." for p in (p.strip() for p in parts) if p)


def note_problem(host: PluginHost, plugin: str, message: str, strict: bool | None = None) -> None:
    """Record what a loaded plugin's hooks got wrong (shown by ``peftbench plugins``); raise when ``strict``
    (default: the host's)."""
    full = sentence(message) if "--disable-plugin" in message else sentence(message, fix_hint(host, plugin))
    if host.strict if strict is None else strict:
        raise PluginError(full)
    if full not in host.problems.setdefault(plugin, []):
        host.problems[plugin].append(full)


def fix_hint(host: PluginHost, plugin: str) -> str:
    return _fix(plugin, host.distributions.get(plugin))


DISABLED = "It is disabled: none of its hooks run. "


def _fix(name: str, dist: tuple[str, str] | None, unregistered: bool = False) -> str:
    what = f"the package {dist[0]}" if dist and dist[0] != "peftbench" else "the plugin"
    return ((DISABLED if unregistered else "")
            + f"Fix {what}, or run with --disable-plugin {name} to stop loading it.")


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
    last-loaded plugin first and not say who registered what. A plugin whose hook raises is noted in
    ``host.problems`` (``peftbench plugins`` shows it; strict: raised) and its calls are not used."""
    impls = getattr(host.hook, hook).get_hookimpls()  # load order
    made: list[Registration] = []
    for impl in impls:
        others = [i.plugin for i in impls if i.plugin is not impl.plugin]
        only_this = host.pm.subset_hook_caller(hook, remove_plugins=others)
        mine: list[Registration] = []
        try:
            only_this(register=_recorder(mine, impl.plugin_name))
        except Exception as e:  # one plugin's broken hook must not take the others down
            note_problem(host, impl.plugin_name, f"plugin {impl.plugin_name!r}: its {hook} hook raised "
                         f"{type(e).__name__}: {e}; nothing it registered there is used")
            continue
        made.extend(mine)
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

    out = []
    for r in registrations(host, "register_tasks"):
        try:
            out.append(folder(*r.args, **r.kwargs))
        except TypeError as e:
            note_problem(host, r.plugin, f"plugin {r.plugin!r} called register_tasks' register"
                         f"{describe_call(r)}, which takes one folder path ({e}); the call is ignored")
    return out


def describe_call(r: Registration) -> str:
    return "(" + ", ".join([*map(repr, r.args), *(f"{k}={v!r}" for k, v in r.kwargs.items())]) + ")"
