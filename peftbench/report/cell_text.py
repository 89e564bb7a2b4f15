"""How a number reads in a table cell: a dash when it is missing, bytes and counts in human units."""

from __future__ import annotations

DASH = "—"


def or_dash(v: float | None, fmt: str) -> str:
    return DASH if v is None else format(v, fmt)


def percent(v: float | None, signed: bool = True) -> str:
    """A fraction as a signed percentage (+12.3%), or an unsigned percentage as is (97%)."""
    return DASH if v is None else (f"{v * 100:+.1f}%" if signed else f"{v:.0f}%")


def human_bytes(n: float | None) -> str:
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return DASH


def human_count(n: float | None) -> str:
    if n is None:
        return DASH
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"
