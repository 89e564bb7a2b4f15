"""Errors a person can act on. Each carries a message that names the input, what was wrong and what
would be valid; the CLI prints it (no traceback) and exits with ``exit_code``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PeftbenchError(Exception):
    """Base class for errors peftbench reports to the user without a traceback."""

    exit_code = 1


class UsageError(PeftbenchError):
    """Bad input from the user (unknown name, bad value, missing file): exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration field has a bad value or does not exist."""


class PluginError(PeftbenchError):
    """A plugin is broken (raises on import, registers a taken name, bad hook implementation)."""


class NotSupported(PeftbenchError):
    """A method was asked for something its capabilities say it cannot do (e.g. merge an adapter)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for an unknown ``name``, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown(kind: str, name: str, choices: Iterable[str], where: str = "") -> UsageError:
    """The standard 'unknown X' error: the bad name, a did-you-mean, and every valid choice."""
    choices = sorted(choices)
    loc = f" ({where})" if where else ""
    return UsageError(
        f"Unknown {kind} {name!r}{loc}.{did_you_mean(name, choices)} "
        f"Valid {kind}s: {', '.join(choices) if choices else '(none registered)'}."
    )
