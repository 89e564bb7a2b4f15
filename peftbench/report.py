"""Rendering: rich leaderboard tables from leaderboard rows. No computation beyond formatting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .leaderboard import best_values, retention_tasks, rows_for_task


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def human_count(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _pct(v: float | None, signed: bool = True) -> str:
    return "—" if v is None else (f"{v * 100:+.1f}%" if signed else f"{v:.0f}%")


def leaderboard_tables(session: dict[str, Any], runs: list[dict[str, Any]]) -> list[Any]:
    from rich.table import Table

    tables = []
    tasks = session.get("tasks") or {r["task"]: {} for r in runs}
    model = (session.get("model") or {}).get("source", "?")
    device = (session.get("env") or {}).get("gpu") or (session.get("env") or {}).get("device", "?")
    for task, info in tasks.items():
        metric = info.get("metric", "acc")
        rows = rows_for_task(runs, task, metric)
        if not rows:
            continue
        best = best_values(rows)
        kept = retention_tasks(rows)
        for name in kept:  # retention: the change vs base on tasks not trained on (negative = forgetting)
            vals = [r["retention"][name]["delta"] for r in rows
                    if r["method"] != "base" and name in r["retention"] and r["retention"][name]["delta"] is not None]
            if vals:
                best[f"ret:{name}"] = max(vals)
        limit = next((r["config"]["train"].get("limit") for r in runs if r["task"] == task and r.get("config")), 0)
        title = f"{task} — {metric} on {model} ({device})" + (f", scored on first {limit} examples" if limit else "")
        t = Table(title=title, title_justify="left", header_style="bold")
        # latency columns only when the session measured latency (latency_rounds=0 skips it)
        show_lat = any(r["latency_unmerged"] is not None or r["latency_merged"] is not None for r in rows)
        lat_cols = (("lat. unmerged", "right"), ("lat. merged", "right")) if show_lat else ()
        for col, just in (("method", "left"), (f"{metric} ± se", "right"), ("Δ base", "right"),
                          ("% of full gain", "right"), ("trainable", "right"), ("peak mem", "right"),
                          ("train s", "right"), ("tok/s", "right"), ("artifact", "right"), *lat_cols,
                          *((f"{name} Δ", "right") for name in kept), ("status", "left")):
            t.add_column(col, justify=just, no_wrap=col != "status")

        def mark(r: dict[str, Any], col: str, text: str, best: dict = best) -> str:
            value = r["retention"].get(col[4:], {}).get("delta") if col.startswith("ret:") else r[col]
            return f"[bold green]{text}[/]" if col in best and value == best[col] and text != "—" else text

        def kept_cell(r: dict[str, Any], name: str) -> str:
            e = r["retention"].get(name)
            if not e or e["score"] is None:
                return "—"
            if r["method"] == "base":
                return f"{e['score']:.3f}"
            return mark(r, f"ret:{name}", "—" if e["delta"] is None else f"{e['delta'] * 100:+.1f} pts")

        for r in rows:
            score = "—" if r["score"] is None else f"{r['score']:.3f} ± {_num(r['stderr'], '.3f')}"
            trainable = "—" if r["trainable"] is None or r["method"] == "base" else (
                f"{human_count(r['trainable'])} ({r['trainable_pct']:.2f}%)")
            status = r["status"] + (f" ({r['seeds']} seeds)" if r["seeds"] > 1 else "")
            if r["reason"] and r["status"] != "ok":
                status += f": {r['reason'][:60]}"
            if r["merge_ok"] is False:
                status += " [red]merge mismatch[/]"
            if r["reload_ok"] is False:
                status += " [red]reload mismatch[/]"
            if r.get("latency_sane") is False:
                status += " [red]latency suspect[/]"
            t.add_row(
                r["method"] if r["method"] != "base" else "base (zero-shot)",
                mark(r, "score", score),
                mark(r, "delta", "—" if r["delta"] is None else f"{r['delta'] * 100:+.1f} pts"),
                mark(r, "pct_of_full_gain", _pct(r["pct_of_full_gain"], signed=False)),
                mark(r, "trainable", trainable),
                mark(r, "peak_memory", human_bytes(r["peak_memory"])),
                mark(r, "train_time", _num(r["train_time"], ".1f")),
                mark(r, "tokens_per_s", _num(r["tokens_per_s"], ",.0f")),
                mark(r, "artifact_bytes", human_bytes(r["artifact_bytes"])),
                *((mark(r, "latency_unmerged", _pct(r["latency_unmerged"])),
                   mark(r, "latency_merged", _pct(r["latency_merged"]))) if show_lat else ()),
                *(kept_cell(r, name) for name in kept),
                status)
        t.caption = ("Δ base: score minus the zero-shot base; % of full gain: Δ / full fine-tuning's Δ; "
                     + ("latency: decode time per token vs the base model (+x% slower); " if show_lat else "")
                     + (f"{', '.join(kept)} Δ: retention, the change on a task not trained on vs the base model's "
                        "score (shown in the base row; negative = forgetting); " if kept else "")
                     + "best values in green.")
        tables.append(t)
    return tables


MODE_ORDER = ("unmerged", "merged", "stack2", "stack4")


def latency_tables(latencies: dict[str, dict[str, Any]], title: str = "") -> list[Any]:
    """One table per regime: a row per method x shape; decode ms/token of base, then each mode's overhead
    vs base (decode) with its bootstrap 95 % CI. ``latencies`` maps a row label (the method) to a
    ``latency`` section (``peftbench.latency.measure``)."""
    from rich.table import Table

    regimes: list[str] = []
    modes: list[str] = []
    for lat in latencies.values():
        for regime in lat.get("regimes") or {}:
            regimes += [regime] if regime not in regimes else []
        for m in lat.get("modes") or []:
            modes += [m] if m != "base" and m not in modes else []
    modes.sort(key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), m))
    tables = []
    for regime in regimes:
        any_lat = next(iter(latencies.values()))
        dtype, timer = any_lat.get("dtype", "?"), any_lat.get("timer", "?")
        t = Table(title=f"{title}latency, {regime} regime ({dtype}, {timer}): decode overhead vs base, median "
                  "[95% CI]", title_justify="left", header_style="bold")
        for col in ("method", "batch", "prompt", "new", "base ms/tok", "base prefill ms", *modes, "sanity"):
            t.add_column(col, justify="left" if col in ("method", "sanity") else "right", no_wrap=True)
        for label, lat in latencies.items():
            flags = {(s["regime"], s["batch_size"], s["prompt_tokens"]): s for s in lat.get("sanity") or []
                     if not s["ok"]}
            for cell in (lat.get("regimes") or {}).get(regime, []):
                base = cell["modes"].get("base", {})
                cols = []
                for m in modes:
                    o = cell["overhead"].get(m)
                    err = (cell["modes"].get(m) or {}).get("error")
                    cols.append("failed" if err else "—" if o is None else
                                f"{o['ratio'] * 100:+.1f}% [{o['ci95'][0] * 100:+.1f}, {o['ci95'][1] * 100:+.1f}]")
                flag = flags.get((regime, cell["batch_size"], cell["prompt_tokens"]))
                t.add_row(label, str(cell["batch_size"]), str(cell["prompt_tokens"]), str(cell["new_tokens"]),
                          _num((base.get("decode_ms_per_token") or {}).get("median"), ".2f"),
                          _num((base.get("prefill_ms") or {}).get("median"), ".1f"), *cols,
                          f"[red]{flag['mode']} {flag['overhead'] * 100:+.1f}% ≠ base[/]" if flag else "ok")
        t.caption = ("overhead: the mode's median decode time per token / base's - 1, base timed in the same "
                     "rotated rounds; CI: paired bootstrap over rounds. sanity: merged (and full fine-tuning) must "
                     "time like base; a flag means the timing is suspect, not a finding.")
        tables.append(t)
    return tables


def render_markdown(tables: list[Any]) -> str:
    """Rich tables as GitHub Markdown."""
    from rich.console import Console

    out = []
    for table in tables:
        headers = [c.header for c in table.columns]
        cells = [list(c.cells) for c in table.columns]
        out.append(f"**{table.title}**\n")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" for _ in headers) + "|")
        console = Console(width=400)
        for i in range(len(cells[0])):
            row = []
            for col in cells:
                with console.capture() as cap:
                    console.print(col[i], end="")
                row.append(cap.get())
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def markdown_table(session: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The same leaderboard as GitHub Markdown (for the README)."""
    return render_markdown(leaderboard_tables(session, runs))


def run_latencies(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {method: latency section}} for the run files that hold a latency grid."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        lat = r.get("latency") or {}
        if r.get("status") == "ok" and lat.get("regimes"):
            out.setdefault(r["task"], {})[f"{r['method']} (seed {r['seed']})"] = lat
    return out


def _check_folder(output: Path) -> None:
    from .errors import UsageError

    if not any((output / name).exists() for name in ("session.json", "runs", "latency")):
        raise UsageError(f"{output}: not a peftbench results folder (no session.json, runs/ or latency/).")


def folder_data(output: Path) -> dict[str, Any]:
    """A results folder as one JSON-able dict: a run session's session and runs, or a latency session's."""
    _check_folder(output)
    if (output / "latency").is_dir():
        from .latency_session import load_latency

        session, results = load_latency(output)
        return {"session": session, "latency": results}
    from .results import load_runs, load_session

    return {"session": load_session(output), "runs": list(load_runs(output).values())}


def folder_tables(output: Path) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """The tables ``peftbench report`` prints for a results folder, and the methods that failed there
    (latency sessions; a run session shows failures in its leaderboard)."""
    data = folder_data(output)
    session = data["session"]
    if "latency" in data:
        results = data["latency"]
        ok = {m: r["latency"] for m, r in results.items() if r.get("status") == "ok" and r.get("latency")}
        model = (session.get("model") or {}).get("source", "?")
        gpu = (session.get("env") or {}).get("gpu") or (session.get("env") or {}).get("device", "?")
        failed = {m: r for m, r in results.items() if r.get("status") != "ok"}
        return (latency_tables(ok, title=f"{model} ({gpu}) — ") if ok else []), failed
    runs = data["runs"]
    tables = leaderboard_tables(session, runs)
    for task, lats in run_latencies(runs).items():
        tables += latency_tables(lats, title=f"{task} — ")
    return tables, {}
