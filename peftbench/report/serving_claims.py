"""The serving claims' quantities (``claims.yaml``: ``quantity: serving_*``), from a serve-bench section
(``peftbench serve-bench``: ``latency/serving-<method>.json``). Each is a ratio of median decode times per
token, taken at one shape (the largest batch timed: the most adapters fit in it), with a 95 % CI from the
same paired bootstrap as the latency overheads -- rounds resampled together, every mode's value of a round
drawn with it -- and the same doubts (too few rounds, a failed sanity check, neighbours, or no record of
them: ``doubts.timing_doubts``), so a serving timing decides only when it was measured alone.

- ``serving_second_adapter``: mixed2 / mixed1, a batch whose rows ask for two adapters against the same
  batch on one adapter ("adding a second adapter costs 3-5 %").
- ``serving_scaling``: ((mixedK - mixed1) / (K - 1)) / (mixed2 - mixed1) at the largest K timed: what each
  adapter beyond the first costs on average, as a share of what the second cost. 1: latency linear in K (every
  added adapter costs what the second did, as in naive implementations); below 1: sub-linear (later adapters
  cost less); undefined when the second adapter cost nothing.
- ``serving_loaded``: single / one, a request for one adapter on the model that holds all K against the
  same request on a model that holds only it ("loading many adapters at once degrades serving").
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from typing import Any

from peftbench.latency.serving_config import mixed_k, mixed_mode
from peftbench.latency.summary import headline_regime
from peftbench.report.doubts import SUSPECT, timing_doubts

PREFIX = "serving-"  # a serve-bench method's key among a folder's latency results (serving-<method>)


def serving_section(latency: dict[str, dict[str, Any]], method: str) -> dict[str, Any] | None:
    """The serve-bench section of ``method`` among a model's latency results, if there is one."""
    lat = latency.get(PREFIX + method)
    return lat if lat and lat.get("serving") else None


def paired_ratio(samples: list[list[float]], fn: Callable[..., float | None], n_boot: int,
                 seed: int) -> tuple[float | None, list[float] | None]:
    """``fn`` of the modes' medians, and its 95 % bootstrap CI: rounds resampled with replacement, a round's
    values of every mode drawn together (they were timed side by side); resamples where ``fn`` is undefined
    (None) are dropped. One round: the CI is the point."""
    point = fn(*(statistics.median(s) for s in samples))
    if point is None:
        return None, None
    n = len(samples[0])
    if n < 2:
        return point, [point, point]
    rng = random.Random(seed)
    boots = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        value = fn(*(statistics.median([s[i] for i in idx]) for s in samples))
        if value is not None:
            boots.append(value)
    if not boots:
        return point, None
    boots.sort()
    return point, [boots[int(0.025 * (len(boots) - 1))], boots[int(0.975 * (len(boots) - 1))]]


def _decode(cell: dict[str, Any], mode: str) -> list[float] | None:
    record = cell["modes"].get(mode) or {}
    return (record.get("samples") or {}).get("decode")


def _judge(ev: Any, method: str, modes_of: Callable[[dict[str, Any]], list[str] | None],
           fn: Callable[..., float | None], what: str) -> tuple[Any, Any, str]:
    """The quantity at the largest batch whose cell has every mode ``modes_of(cell)`` names, with the range over
    the other cells that have them, and the section's timing doubts."""
    lat = serving_section(ev.latency, method)
    if lat is None:
        return None, None, ""
    regime = headline_regime(lat)
    cells = []
    for cell in (lat.get("regimes") or {}).get(regime, []):
        modes = modes_of(cell)
        if modes and all(_decode(cell, m) for m in modes):
            cells.append((cell, modes))
    if not cells:
        return None, None, ""
    plan = lat.get("plan") or {}
    boot, seed = plan.get("bootstrap", 2000), plan.get("seed", 1234)
    cell, modes = max(cells, key=lambda c: (c[0]["batch_size"], -c[0]["prompt_tokens"]))
    value, ci = paired_ratio([_decode(cell, m) for m in modes], fn, boot, seed)
    if value is None:
        return None, None, ""
    spread = [v for v in (fn(*(statistics.median(_decode(c, m)) for m in ms)) for c, ms in cells) if v is not None]
    how = (f"{what}; {regime} regime, batch {cell['batch_size']} x prompt {cell['prompt_tokens']}, "
           f"{lat['serving'].get('adapters', 'random-initialised')} adapters; over {len(cells)} shapes "
           f"{min(spread):.3f}x to {max(spread):.3f}x")
    doubts = timing_doubts(lat, regime)
    return round(value, 4), [round(x, 4) for x in ci] if ci else None, how + (
        f"; {SUSPECT}: {', '.join(doubts)}" if doubts else "")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def second_adapter(ev: Any, task: str, method: str) -> tuple[Any, Any, str]:
    return _judge(ev, method, lambda cell: [mixed_mode(2), mixed_mode(1)], _ratio,
                  "mixed2 / mixed1: a batch on two adapters vs on one")


def _largest_mixed(cell: dict[str, Any]) -> list[str] | None:
    """mixed1, mixed2 and the largest mixedK (K > 2) timed at ``cell``, else None."""
    ks = [k for k in (mixed_k(m) for m in cell["modes"]) if k and _decode(cell, mixed_mode(k))]
    return [mixed_mode(1), mixed_mode(2), mixed_mode(max(ks))] if {1, 2} <= set(ks) and max(ks) > 2 else None


def scaling(ev: Any, task: str, method: str) -> tuple[Any, Any, str]:
    def share(one: float, two: float, many: float, k: int) -> float | None:
        return (many - one) / (k - 1) / (two - one) if two > one else None

    lat = serving_section(ev.latency, method)
    if lat is None:
        return None, None, ""
    ks: dict[int, int] = {}  # batch size -> the largest K timed there (for the ratio's K)
    for cells in (lat.get("regimes") or {}).values():
        for cell in cells:
            modes = _largest_mixed(cell)
            if modes:
                ks[cell["batch_size"]] = mixed_k(modes[-1])
    batch = max(ks, default=None)
    if batch is None:
        return None, None, ""
    k = ks[batch]
    return _judge(ev, method, lambda cell: _largest_mixed(cell) if cell["batch_size"] == batch else None,
                  lambda one, two, many: share(one, two, many, k),
                  f"((mixed{k} - mixed1) / {k - 1}) / (mixed2 - mixed1): each adapter beyond the first, on average, "
                  "as a share of the second's cost")


def loaded(ev: Any, task: str, method: str) -> tuple[Any, Any, str]:
    return _judge(ev, method, lambda cell: ["single", "one"], _ratio,
                  "single / one: one adapter's request with all adapters loaded vs with it alone")


SERVING_QUANTITIES: dict[str, Callable[..., tuple[Any, Any, str]]] = {
    "serving_second_adapter": second_adapter, "serving_scaling": scaling, "serving_loaded": loaded,
}
