"""Serving tables (``peftbench serve-bench``): per method, each batch size's modes -- base, merged, one
adapter alone, one adapter among K loaded, and mixed batches of K adapters -- with decode ms per token and
its ratio to base, to the merged adapter and to the same batch on one adapter; then what changing adapters
costs (load, swap, merge/unmerge), the memory per extra adapter and the mixed-batch correctness check; and
the methods that cannot serve per-row adapters, with the reason."""

from __future__ import annotations

from typing import Any

from peftbench.latency.serving_config import mixed_k, mixed_mode
from peftbench.latency.stats import overhead
from peftbench.latency.summary import headline_regime
from peftbench.report.cell_text import DASH, or_dash
from peftbench.system.memory import neighbour_flags

MIB = 2**20
CAPTION = ("modes: base = the base model; merged = one adapter merged into it (served unloaded); one = one adapter "
           "on a model that holds only it; single = one adapter active on the model that holds all K; mixedK = a "
           "batch whose rows ask for K different adapters (row i: adapter i mod K; PEFT's adapter_names). Ratios: "
           "median decode ms/token / the reference's - 1, timed in the same rotated rounds; 95% CI: paired "
           "bootstrap over rounds. vs mixed1: the same batch on one adapter through the same per-row path. "
           "extra peak: memory one short generate needed beyond the weights held (CUDA only).")
OPS_CAPTION = ("load: load_adapter from disk under a new name; swap: set_adapter between two loaded adapters; "
               "merge/unmerge: merge_adapter / unmerge_adapter of one adapter; median (p10 to p90 in brackets) over repeats. "
               "MiB per adapter: its parameters, and (CUDA) the growth of allocated memory per adapter added. add s: "
               "the wall time of PEFT's add_adapter for the first and the last adapter added. "
               "check: every mixed batch gave each row its adapter's logits within the tolerance (K failing are "
               "not timed).")


def serving_tables(session: dict[str, Any], results: dict[str, dict[str, Any]], title: str = "") -> list[Any]:
    """The sweep table of each method with a section, the operations table, and the unsupported methods."""
    ok = {m: r["latency"] for m, r in results.items() if r.get("latency")}
    tables = [_sweep_table(m, lat, title) for m, lat in ok.items()]
    if ok:
        tables.append(_operations_table(ok, title))
    unsupported = session.get("unsupported") or {}
    if unsupported:
        tables.append(_unsupported_table(unsupported, title))
    return tables


def _ratio_text(o: dict[str, Any] | None) -> str:
    if o is None:
        return DASH
    return f"{o['ratio'] * 100:+.1f}% [{o['ci95'][0] * 100:+.1f}, {o['ci95'][1] * 100:+.1f}]"


def _versus(cell: dict[str, Any], mode: str, reference: str, plan: dict[str, Any]) -> dict[str, Any] | None:
    a = ((cell["modes"].get(mode) or {}).get("samples") or {}).get("decode")
    b = ((cell["modes"].get(reference) or {}).get("samples") or {}).get("decode")
    if not a or not b or mode == reference:
        return None
    return overhead(a, b, plan.get("bootstrap", 2000), plan.get("seed", 1234))


def _sweep_table(method: str, lat: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    regime = headline_regime(lat)
    plan, serving = lat.get("plan") or {}, lat.get("serving") or {}
    flags = "".join(f", {f}" for f in neighbour_flags(lat))
    t = Table(title=f"{title}serving {method}: K adapters on one base ({regime} regime, {lat.get('dtype', '?')}, "
              f"{serving.get('adapters', '?')} adapters{flags}): decode ms/token, ratios [95% CI]",
              title_justify="left", header_style="bold")
    for col in ("batch", "prompt", "mode", "decode ms/tok", "vs base", "vs merged", "vs mixed1", "prefill ms",
                "prefill vs base", "extra peak MiB"):
        t.add_column(col, justify="left" if col == "mode" else "right", no_wrap=True)
    for cell in (lat.get("regimes") or {}).get(regime, []):
        peaks = cell.get("peak_extra_bytes") or {}
        for mode, record in cell["modes"].items():
            if record.get("error"):
                t.add_row(str(cell["batch_size"]), str(cell["prompt_tokens"]), mode, "failed", *[DASH] * 6)
                continue
            k = mixed_k(mode)
            t.add_row(str(cell["batch_size"]), str(cell["prompt_tokens"]), mode,
                      or_dash(record["decode_ms_per_token"]["median"], ".2f"),
                      _ratio_text(cell["overhead"].get(mode)), _ratio_text(_versus(cell, mode, "merged", plan)),
                      _ratio_text(_versus(cell, mode, mixed_mode(1), plan)) if k else DASH,
                      or_dash(record["prefill_ms"]["median"], ".1f"),
                      _ratio_text((cell.get("prefill_overhead") or {}).get(mode)),
                      or_dash(peaks[mode] / MIB if mode in peaks else None, ".1f"))
    not_timed = {key: v for key, v in (serving.get("not_timed") or {}).items() if v.get("wrong_logits")}
    t.caption = CAPTION + (f" Not timed for wrong logits: {not_timed}." if not_timed else "")
    return t


def _summary(ms: dict[str, Any] | None) -> str:
    return DASH if not ms else f"{ms['median']:.2f} [{ms['p10']:.2f}, {ms['p90']:.2f}]"


def _operations_table(sections: dict[str, dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    t = Table(title=f"{title}serving: changing adapters and what each costs in memory", title_justify="left",
              header_style="bold")
    for col in ("method", "adapters", "load ms", "swap ms", "merge ms", "unmerge ms", "MiB/adapter",
                "allocated MiB/adapter", "add s (first, last)", "check"):
        t.add_column(col, justify="left" if col in ("method", "check") else "right", no_wrap=True)
    for method, lat in sections.items():
        serving = lat.get("serving") or {}
        ops, mem = serving.get("operations") or {}, serving.get("memory") or {}
        per = mem.get("parameter_bytes_per_adapter")
        alloc = mem.get("allocated_bytes_per_adapter")
        merge = "skipped" if (ops.get("merge") or {}).get("skipped") else _summary(ops.get("merge_ms"))
        t.add_row(method, str(mem.get("adapters", DASH)), _summary(ops.get("load_ms")), _summary(ops.get("swap_ms")),
                  merge, DASH if merge == "skipped" else _summary(ops.get("unmerge_ms")),
                  or_dash(per / MIB if per is not None else None, ".2f"),
                  or_dash(alloc / MIB if alloc is not None else None, ".2f"), _add_text(mem.get("add_adapter_s")),
                  _check_text(serving.get("checks") or []))
    t.caption = OPS_CAPTION
    return t


def _add_text(seconds: list[float] | None) -> str:
    return DASH if not seconds else f"{seconds[0]:.2f}, {seconds[-1]:.2f}"


def _check_text(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return DASH
    bad = [c["adapters"] for c in checks if not c["ok"]]
    worst = max(c["relative_error"] for c in checks)
    ks = ",".join(str(c["adapters"]) for c in checks)
    return (f"[red]wrong for K={bad}[/]" if bad else f"ok for K={ks}") + f" (max rel. error {worst:.1e})"


def _unsupported_table(unsupported: dict[str, str], title: str) -> Any:
    from rich.table import Table

    t = Table(title=f"{title}serving: methods that cannot serve per-row adapters", title_justify="left",
              header_style="bold")
    t.add_column("method")
    t.add_column("why")
    for method, why in unsupported.items():
        t.add_row(method, why)
    return t
