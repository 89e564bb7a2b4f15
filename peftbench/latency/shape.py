"""What one shape of the grid records: the samples its timed rounds collected, and the cell built from
them (per-mode summaries, overheads vs base, and the sanity check of modes that must time like base)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from peftbench.latency.clock import RoundTimes
from peftbench.latency.config import LatencyPlan
from peftbench.latency.stats import overhead, rel_half_width, summarize
from peftbench.latency.summary import MIN_ROUNDS_TO_JUDGE, sanity_holds

PHASES = ("prefill", "decode", "decode_mean")  # the order of RoundTimes


@dataclass
class ShapeSamples:
    """Per mode, one value per timed round in round order: the round's times and the host core and clock
    it ran on; and the modes that failed, with their error."""

    times: dict[str, dict[str, list[float]]]
    host: dict[str, dict[str, list[Any]]]
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, names: list[str]) -> ShapeSamples:
        return cls(times={m: {phase: [] for phase in PHASES} for m in names},
                   host={m: {"core": [], "mhz": []} for m in names})

    def add(self, mode: str, times: RoundTimes, host_state: tuple[Any, Any]) -> None:
        core, mhz = host_state
        self.host[mode]["core"].append(core)
        self.host[mode]["mhz"].append(mhz)
        for phase, value in zip(PHASES, times, strict=True):
            self.times[mode][phase].append(value)


def shape_cell(where: dict[str, Any], names: list[str], samples: ShapeSamples, plan: LatencyPlan,
               same_as_base: tuple[str, ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The shape's cell of the section and its sanity entries. ``where`` names the shape (regime, batch
    size, prompt tokens). Without base's timings there is nothing to compare with: no overheads."""
    batch = where["batch_size"]
    rounds = max((len(t["decode"]) for t in samples.times.values()), default=0)
    cell: dict[str, Any] = {"batch_size": batch, "prompt_tokens": where["prompt_tokens"],
                            "new_tokens": plan.new_tokens, "rounds": rounds,
                            "timed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "modes": {}, "overhead": {}, "prefill_overhead": {}}
    for mode in names:
        cell["modes"][mode] = ({"error": samples.failed[mode]} if mode in samples.failed
                               else _mode_record(batch, samples.times[mode], samples.host[mode]))
    sanity: list[dict[str, Any]] = []
    if "base" in samples.failed:
        return cell, sanity
    base = samples.times["base"]
    for mode in names:
        if mode == "base" or mode in samples.failed:
            continue
        times = samples.times[mode]
        cell["overhead"][mode] = overhead(times["decode"], base["decode"], plan.bootstrap, plan.seed)
        cell["prefill_overhead"][mode] = overhead(times["prefill"], base["prefill"], plan.bootstrap,
                                                  plan.seed)
        if mode in same_as_base:
            sanity.append(_sanity_entry(where, mode, cell["overhead"][mode], plan, len(times["decode"])))
    return cell, sanity


def _mode_record(batch: int, times: dict[str, list[float]], host: dict[str, list[Any]]) -> dict[str, Any]:
    decode = summarize(times["decode"])
    tightness = rel_half_width(times["decode"])
    return {"prefill_ms": summarize(times["prefill"]), "decode_ms_per_token": decode,
            "decode_rel_ci": round(tightness, 4) if math.isfinite(tightness) else None,
            "decode_ms_per_token_mean": summarize(times["decode_mean"]),
            "tokens_per_s": round(batch * 1000.0 / decode["median"], 2) if decode["median"] else None,
            "samples": {phase: [round(v, 4) for v in values] for phase, values in times.items()},
            "host": host}


def _sanity_entry(where: dict[str, Any], mode: str, decode_overhead: dict[str, Any],
                  plan: LatencyPlan, rounds: int) -> dict[str, Any]:
    """A mode that computes with base's weights and nothing more is suspect when its overhead exceeds the
    tolerance (``sanity_holds``: the point estimate decides, not whether the CI spans 0)."""
    entry = {**where, "mode": mode, "overhead": decode_overhead["ratio"], "ci95": decode_overhead["ci95"],
             "tolerance": plan.tolerance}
    if rounds < MIN_ROUNDS_TO_JUDGE:
        return {**entry, "ok": None, "note": f"fewer than {MIN_ROUNDS_TO_JUDGE} rounds: not judged"}
    return {**entry, "ok": sanity_holds(entry)}
