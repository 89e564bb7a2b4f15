"""What a latency section's headline is (the regime and shape its figures come from) and whether its sanity
check held. Torch-free, so the reports read it without loading the timing harness."""

from __future__ import annotations

from typing import Any

MIN_ROUNDS_TO_JUDGE = 3  # a CI from 1-2 rounds says nothing: the sanity check and the claims do not judge it


def sanity_holds(entry: dict[str, Any]) -> bool | None:
    """Whether a mode that must time like base (``merged``, full fine-tuning's ``unmerged``) did: its decode
    overhead's point estimate lies within the tolerance, whatever its CI -- a wide CI is no alibi (full
    fine-tuning at -37.7 % with a CI spanning 0 did not time like base). ``None``: not judged (too few rounds).
    Judged from the entry's stored figures, so files written under the earlier, lenient rule (flagged only when
    the CI also excluded 0) read the same way."""
    if entry.get("ok") is None and entry.get("note"):
        return None
    if entry.get("overhead") is None or entry.get("tolerance") is None:
        return entry.get("ok")  # no figures to judge from: the stored verdict
    return abs(entry["overhead"]) <= entry["tolerance"]


def sanity_failures(latency: dict[str, Any], regime: str | None = None) -> list[dict[str, Any]]:
    """The sanity entries of a latency section (of ``regime``, when given) that fail ``sanity_holds``."""
    return [s for s in latency.get("sanity") or []
            if (regime is None or s.get("regime") == regime) and sanity_holds(s) is False]


def headline_regime(latency: dict[str, Any]) -> str | None:
    """The regime a latency section's headline figures come from: static when it was timed -- it reproduces
    within about 1 % between runs, eager ``generate`` does not (docs/latency.md) -- else the first regime
    timed. The leaderboard, ``peftbench claims`` and the Pareto plots all read this one."""
    regimes = [r for r, cells in (latency.get("regimes") or {}).items() if cells]
    return "static" if "static" in regimes else next(iter(regimes), None)


def latency_headline(latency: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard's figures: decode overhead per mode (and its 95 % CI) at the grid's first shape (by
    default batch 1, the shortest prompt) in ``headline_regime``; stored as the section's ``summary``."""
    regime = headline_regime(latency)
    if regime is None:
        return {}
    c = latency["regimes"][regime][0]
    return {"regime": regime, "batch_size": c["batch_size"], "prompt_tokens": c["prompt_tokens"],
            "overhead": {m: o["ratio"] for m, o in c["overhead"].items()},
            "ci95": {m: o["ci95"] for m, o in c["overhead"].items()}}
