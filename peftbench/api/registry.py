"""Method registry: names and aliases to Method classes, with lazy import and did-you-mean."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from peftbench.api.method import Method, validate_method_class
from peftbench.api.plugins import (
    LoadFailure,
    PluginHost,
    describe_call,
    note_problem,
    registrations,
    sentence,
)
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
    failures: list[LoadFailure] = field(default_factory=list)  # plugins that did not load: they may own a name
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
        raise self._unknown(name, where)

    def _unknown(self, name: str, where: str) -> UsageError:
        """'Unknown method', and when plugins failed to load, which (the one named like the method first):
        the method may be theirs."""
        error = unknown("method", name, [*self.entries, *self.aliases], where)
        if not self.failures:
            return error
        key = name.strip().lower()
        owner = next((f for f in self.failures if key in _name_parts(f)), None)
        if owner is not None:
            package = f" (package {owner.distribution})" if owner.distribution else ""
            how = "failed to load" if owner.kind == "import" else "is disabled"
            return UsageError(sentence(f"{where + ': ' if where else ''}method {name!r} comes from plugin "
                                       f"{owner.name!r}{package}, which {how}: {owner.error}",
                                       owner.hint, "peftbench plugins shows every plugin and its error"))
        if "Did you mean" in str(error):
            return error
        failed = "; ".join(f"{f.name!r} ({f.error})" for f in self.failures)
        return UsageError(sentence(str(error), f"These plugins failed to load and may register it: {failed}",
                                   "peftbench plugins shows each with its fix"))

    def base(self, name: str) -> str:
        """The registered method a name, alias or variant runs: ``adapter@pfeiffer`` -> ``adapter``."""
        return self.canonical(name).split("@", 1)[0]

    def add(self, name: str, method: Any, aliases: tuple[str, ...] | list[str] = (), *, plugin: str) -> None:
        """``register(name, method, aliases=())`` of the ``register_methods`` hook, made by ``plugin``. A name
        or alias already taken is an error naming both plugins, and nothing of this call is added."""
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugin {plugin!r} registered a method with an invalid name {name!r}")
        if isinstance(aliases, str) or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise PluginError(f"plugin {plugin!r}: the aliases of method {name!r} must be a list of names, "
                              f"got {aliases!r}")
        key = name.strip().lower()
        for alias in ("", *(a.strip().lower() for a in aliases)):
            wanted = alias or key
            owner = self.entries.get(wanted) or self.entries.get(self.aliases.get(wanted, ""))
            if owner is None and alias != key:
                continue
            what = f"alias {alias!r} of method {key!r}" if alias else f"method name {key!r}"
            by = f"plugin {owner.plugin!r}" if owner is not None else "the method's own name"
            raise PluginError(f"{what} registered by plugin {plugin!r} is already taken by {by}, which keeps "
                              f"it (the first registered does); this registration of {key!r} is ignored. Rename "
                              f"it in plugin {plugin!r}, or run with --disable-plugin {plugin}")
        self.entries[key] = MethodEntry(key, method, plugin, tuple(a.strip().lower() for a in aliases))
        for alias in aliases:
            self.aliases[alias.strip().lower()] = key

    def get(self, name: str) -> Method:
        """The (stateless) Method instance for a name, alias or variant."""
        key = self.base(name)
        if key not in self._instances:
            self._instances[key] = self.entries[key].load_class()()
        return self._instances[key]


def collect_methods(host: PluginHost, strict: bool | None = None) -> MethodRegistry:
    """Call every plugin's ``register_methods`` and build the registry. A registration that fails (a name
    taken twice: the first registered keeps it; a bad call) is an error naming the plugins when ``strict``
    (default: the host's ``--strict-plugins``); otherwise it is ignored, recorded in ``registry.errors`` and
    in ``host.problems`` (``peftbench plugins`` shows it), and the plugin's other methods stay."""
    strict = host.strict if strict is None else strict
    reg = MethodRegistry(failures=list(host.failures))
    for r in registrations(host, "register_methods"):
        try:
            reg.add(*r.args, **r.kwargs, plugin=r.plugin)
        except (PluginError, TypeError) as e:
            message = str(e) if isinstance(e, PluginError) else (
                f"plugin {r.plugin!r} called register_methods' register{describe_call(r)}, which takes "
                f"(name, method, aliases=()): {e}; the call is ignored")
            if strict:
                raise PluginError(message) from None
            reg.errors.append(message)
            note_problem(host, r.plugin, message, strict=False)
    return reg


def _name_parts(failure: LoadFailure) -> set[str]:
    """The names a failed plugin goes by (entry point, module path, package), whole and split at . - _: a
    method of the same name is likely theirs."""
    parts: set[str] = set()
    for whole in (failure.name, failure.distribution or ""):
        whole = whole.lower()
        parts |= {whole, *re.split(r"[._-]", whole)}
    return parts - {"", "peftbench", "plugin", "plugins"}
