"""Method registry: names and aliases to Method classes, with lazy import and did-you-mean."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from peftbench.api.method import Method, validate_method_class
from peftbench.api.plugins import PluginHost, registrations
from peftbench.errors import PluginError, UsageError, unknown


@dataclass
class MethodEntry:
    name: str
    target: Any  # a Method subclass or "module:Class"
    plugin: str
    aliases: tuple[str, ...] = ()
    _cls: type[Method] | None = None

    def load_class(self) -> type[Method]:
        if self._cls is None:
            target = self.target
            if isinstance(target, str):
                module, _, attr = target.partition(":")
                try:
                    target = getattr(importlib.import_module(module), attr)
                except Exception as e:
                    raise PluginError(f"method {self.name!r} (plugin {self.plugin!r}): cannot import "
                                      f"{self.target!r}: {type(e).__name__}: {e}") from e
            validate_method_class(target, self.plugin)
            if target.name != self.name:
                raise PluginError(f"method registered as {self.name!r} by plugin {self.plugin!r} has "
                                  f"name {target.name!r}; the two must match")
            self._cls = target
        return self._cls


VARIANT_LABEL = re.compile(r"[a-z0-9_-]+")


@dataclass
class MethodRegistry:
    entries: dict[str, MethodEntry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _instances: dict[str, Method] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def canonical(self, name: str, where: str = "") -> str:
        """The registered name for a name or alias; a variant ``NAME@LABEL`` (the method NAME run with its own
        options, set as ``--set NAME@LABEL.KEY=VALUE``) keeps its label: ``bottleneck@pf`` -> ``adapter@pf``."""
        key = name.strip().lower()
        if "@" in key:
            base, label = key.split("@", 1)
            if not VARIANT_LABEL.fullmatch(label):
                raise UsageError(f"{where + ': ' if where else ''}method variant {name!r}: the label after '@' must be "
                                 "letters, digits, '_' or '-' (e.g. adapter@pfeiffer), so that "
                                 f"--set {base}@LABEL.KEY=VALUE can name it.")
            return f"{self.canonical(base, where)}@{label}"
        if key in self.entries:
            return key
        if key in self.aliases:
            return self.aliases[key]
        raise unknown("method", name, [*self.entries, *self.aliases], where)

    def base(self, name: str) -> str:
        """The registered method a name, alias or variant runs: ``adapter@pfeiffer`` -> ``adapter``."""
        return self.canonical(name).split("@", 1)[0]

    def add(self, name: str, method: Any, aliases: tuple[str, ...] | list[str] = (), *, plugin: str) -> None:
        """``register(name, method, aliases=())`` of the ``register_methods`` hook, made by ``plugin``."""
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugin {plugin!r} registered a method with an invalid name {name!r}")
        key = name.strip().lower()
        taken = self.entries.get(key) or (self.entries.get(self.aliases[key]) if key in self.aliases else None)
        if taken is not None:
            raise PluginError(f"method name {key!r} registered by plugin {plugin!r} is already taken by "
                              f"plugin {taken.plugin!r}; choose another name or disable one plugin "
                              f"(--disable-plugin {plugin})")
        self.entries[key] = MethodEntry(key, method, plugin, tuple(a.lower() for a in aliases))
        for alias in aliases:
            a = alias.strip().lower()
            if a in self.entries or a in self.aliases:
                raise PluginError(f"alias {a!r} of method {key!r} (plugin {plugin!r}) is already taken")
            self.aliases[a] = key

    def get(self, name: str) -> Method:
        """The (stateless) Method instance for a name, alias or variant."""
        key = self.base(name)
        if key not in self._instances:
            self._instances[key] = self.entries[key].load_class()()
        return self._instances[key]


def collect_methods(host: PluginHost, strict: bool = True) -> MethodRegistry:
    """Call every plugin's ``register_methods`` and build the registry. A name taken twice is an error
    naming both plugins (``strict``) or is recorded in ``registry.errors``, and that plugin registers
    nothing more."""
    reg = MethodRegistry()
    failed: set[str] = set()
    for r in registrations(host, "register_methods"):
        if r.plugin in failed:
            continue
        try:
            reg.add(*r.args, **r.kwargs, plugin=r.plugin)
        except PluginError as e:
            if strict:
                raise
            reg.errors.append(str(e))
            failed.add(r.plugin)
    return reg
