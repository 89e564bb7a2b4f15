"""Latency tables: each method's decode overhead vs the base model, per regime and shape timed."""

from __future__ import annotations

from typing import Any

from peftbench.latency.serving_config import mixed_k
from peftbench.latency.summary import sanity_holds
from peftbench.report.cell_text import DASH, or_dash
from peftbench.system.memory import HOST_BUSY_CORES, neighbour_flags

MODE_ORDER = ("unmerged", "merged", "stack2", "stack4")

CAPTION = ("overhead: the mode's median decode time per token / base's - 1, base timed in the same "
           "rotated rounds; CI: paired bootstrap over rounds. sanity: merged (and full fine-tuning) must "
           "time like base (|overhead| within the tolerance, whatever the CI); a flag means the timing is suspect, "
           "not a finding. GPU shared: other processes "
           "used the GPU while it was timed. host busy: other processes kept over "
           f"{HOST_BUSY_CORES:g} CPU core busy on average while it was timed.")


def latency_tables(latencies: dict[str, dict[str, Any]], title: str = "") -> list[Any]:
    """One table per regime: a row per method x shape; decode ms/token of base, then each mode's overhead
    vs base (decode) with its bootstrap 95 % CI. ``latencies`` maps a row label (the method) to a
    ``latency`` section (``peftbench.latency.timer.measure``)."""
    regimes, modes = _regimes_and_modes(latencies)
    return [_regime_table(latencies, regime, modes, title) for regime in regimes]


def _regimes_and_modes(latencies: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Every regime timed, in the order first seen; every mode but base, in ``MODE_ORDER`` (others after, by name)."""
    regimes: list[str] = []
    modes: list[str] = []
    for lat in latencies.values():
        for regime in lat.get("regimes") or {}:
            regimes += [regime] if regime not in regimes else []
        for m in lat.get("modes") or []:
            modes += [m] if m != "base" and m not in modes else []
    modes.sort(key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), _mode_name_key(m)))
    return regimes, modes


def _mode_name_key(mode: str) -> tuple[str, int]:
    """``mixedK`` modes in the order of K (mixed2 before mixed16), the others by name."""
    k = mixed_k(mode)
    return ("mixed", k) if k is not None else (mode, 0)


def _regime_table(latencies: dict[str, dict[str, Any]], regime: str, modes: list[str], title: str) -> Any:
    from rich.table import Table

    any_lat = next(iter(latencies.values()))
    dtype, timer = any_lat.get("dtype", "?"), any_lat.get("timer", "?")
    t = Table(title=f"{title}latency, {regime} regime ({dtype}, {timer}): decode overhead vs base, median "
              "[95% CI]", title_justify="left", header_style="bold")
    for col in ("method", "batch", "prompt", "new", "base ms/tok", "base prefill ms", *modes, "sanity"):
        t.add_column(col, justify="left" if col in ("method", "sanity") else "right", no_wrap=True)
    for label, lat in latencies.items():
        for cell in (lat.get("regimes") or {}).get(regime, []):
            base = cell["modes"].get("base", {})
            t.add_row(label, str(cell["batch_size"]), str(cell["prompt_tokens"]), str(cell["new_tokens"]),
                      or_dash((base.get("decode_ms_per_token") or {}).get("median"), ".2f"),
                      or_dash((base.get("prefill_ms") or {}).get("median"), ".1f"),
                      *(_overhead_text(cell, m) for m in modes), _sanity_text(lat, regime, cell))
    t.caption = CAPTION
    return t


def _overhead_text(cell: dict[str, Any], mode: str) -> str:
    o = cell["overhead"].get(mode)
    if (cell["modes"].get(mode) or {}).get("error"):
        return "failed"
    if o is None:
        return DASH
    return f"{o['ratio'] * 100:+.1f}% [{o['ci95'][0] * 100:+.1f}, {o['ci95'][1] * 100:+.1f}]"


def _sanity_text(lat: dict[str, Any], regime: str, cell: dict[str, Any]) -> str:
    """The harness's own check at this shape (a mode that should time like base did not, judged again from the
    stored overhead and tolerance, or too few rounds to judge), then the neighbours that shared the machine
    while it was timed."""
    shape = (regime, cell["batch_size"], cell["prompt_tokens"])
    checks = [s for s in lat.get("sanity") or [] if (s["regime"], s["batch_size"], s["prompt_tokens"]) == shape]
    failed = [s for s in checks if sanity_holds(s) is False]
    if failed:
        flag = failed[-1]
        sanity = f"[red]{flag['mode']} {flag['overhead'] * 100:+.1f}% ≠ base[/]"
    elif any(sanity_holds(s) is None for s in checks):
        sanity = "not judged (too few rounds)"
    else:
        sanity = "ok"
    return sanity + "".join(f" [yellow]{flag}[/]" for flag in neighbour_flags(lat))


def run_latencies(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {row label: latency section}} for the run files that hold a latency grid. A cell that reused
    another's timing (``latency_once``: ``measured_in``) adds no row of its own when that cell is among
    ``runs``: the measuring row names it instead ("lora (seed 0; also seed 1, 2)")."""
    ok = [r for r in runs if r.get("status") == "ok" and (r.get("latency") or {}).get("regimes")]
    keys = {r.get("key") for r in ok}
    reusers: dict[tuple[str, str], list[str]] = {}
    for r in ok:
        src = r["latency"].get("measured_in")
        if src and src in keys:
            reusers.setdefault((r["task"], src), []).append(str(r["seed"]))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in ok:
        if r["latency"].get("measured_in") in keys:
            continue
        also = reusers.get((r["task"], r.get("key")), [])
        label = f"{r['method']} (seed {r['seed']}" + (f"; also seed {', '.join(also)}" if also else "") + ")"
        out.setdefault(r["task"], {})[label] = r["latency"]
    return out
