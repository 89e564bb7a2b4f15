"""Rendering: rich leaderboard tables from leaderboard rows. No computation beyond formatting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.report.leaderboard import (
    best_values,
    dequantization_only,
    merge_variant,
    retention_tasks,
    rows_for_task,
)
from peftbench.system.memory import HOST_BUSY_CORES, SHARED_GPU_BYTES, neighbour_flags


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


def _vs_best(r: dict[str, Any]) -> str:
    cmp = r.get("vs_best")
    if r["method"] == "base" or not cmp:
        return "—"
    if cmp.get("method") == "best":
        return "best"
    if cmp.get("ci95") is None:
        return f"{cmp['diff'] * 100:+.1f} pts"
    lo, hi = cmp["ci95"]
    text = f"{cmp['diff'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]"
    return f"≈ best ({text})" if r.get("tied_with_best") else text


def _pct(v: float | None, signed: bool = True) -> str:
    return "—" if v is None else (f"{v * 100:+.1f}%" if signed else f"{v:.0f}%")


def loop_signature(run: dict[str, Any]) -> str | None:
    """How a run's training loop ran, in words (``None`` for runs that predate ``train.loop``)."""
    loop = (run.get("train") or {}).get("loop")
    if not loop:
        return None
    parts = [loop.get("loop", "?")]
    parts += [name for key, name in (("padding_free", "packed"), ("chunked_loss", "chunked loss"),
                                     ("gradient_checkpointing", "checkpointing")) if loop.get(key)]
    compiled = str(loop.get("compile") or "off")
    if compiled.startswith("blocks"):
        parts.append("compiled")
    elif compiled.startswith("failed"):
        parts.append("compile failed")
    if loop.get("optimizer"):
        parts.append(str(loop["optimizer"]))
    return ", ".join(parts)


def mixed_loops(runs: list[dict[str, Any]]) -> dict[str, str] | None:
    """method -> loop signature, when the methods of one table did not all train in the same loop (their time,
    tokens/s and memory columns are then not comparable); else ``None``."""
    sigs: dict[str, set[str]] = {}
    for r in runs:
        sig = loop_signature(r)
        if r.get("method") != "base" and sig is not None:
            sigs.setdefault(r["method"], set()).add(sig)
    if len({s for v in sigs.values() for s in v}) <= 1:
        return None
    return {m: " / ".join(sorted(v)) for m, v in sorted(sigs.items())}


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
        if (session.get("model") or {}).get("kind") in ("tiny", "shape"):
            title += " — random weights: scores carry no accuracy, only costs do"
        mixed = mixed_loops([r for r in runs if r["task"] == task])
        if mixed:
            title += (" — training loops differ between methods, so their time, tok/s and memory are not comparable: "
                      + "; ".join(f"{m}: {sig}" for m, sig in mixed.items()))
        if any(r.get("gpu_shared") for r in rows):
            title += (" — 'GPU shared': other processes used the GPU while those cells ran (over "
                      f"{SHARED_GPU_BYTES / 1024**3:.0f} GiB of its memory), so their time, tok/s and latency are not "
                      "the method's alone")
        if any(r.get("host_busy") for r in rows):
            title += (" — 'host busy': other processes kept over "
                      f"{HOST_BUSY_CORES:g} CPU core busy on average while those cells ran, which slows host-bound "
                      "steps and decoding even on a GPU of its own")
        t = Table(title=title, title_justify="left", header_style="bold")
        # latency columns only when the session measured latency (latency_rounds=0 skips it)
        show_lat = any(r["latency_unmerged"] is not None or r["latency_merged"] is not None for r in rows)
        lat_cols = (("lat. unmerged", "right"), ("lat. merged", "right")) if show_lat else ()
        multi = any(r["seeds"] > 1 for r in rows)
        for col, just in (("method", "left"), (f"{metric} ± se" if not multi else f"{metric} [95% CI]", "right"),
                          ("vs best", "right"), ("Δ base", "right"),
                          ("% of full gain", "right"), ("trainable", "right"), ("peak mem", "right"),
                          ("train s", "right"), ("tok/s", "right"), ("artifact", "right"), *lat_cols,
                          *((f"{name} Δ", "right") for name in kept), ("status", "left")):
            t.add_column(col, justify=just, no_wrap=col != "status")

        def mark(r: dict[str, Any], col: str, text: str, best: dict = best) -> str:
            value = r["retention"].get(col[4:], {}).get("delta") if col.startswith("ret:") else r[col]
            return f"[bold green]{text}[/]" if col in best and value == best[col] and text != "—" else text

        def kept_cell(r: dict[str, Any], name: str) -> str:
            e = r["retention"].get(name)
            if e and e["score"] is None and e.get("errors"):
                return "error"   # the run files hold retention.<task>.error
            if not e or e["score"] is None:
                return "—"
            if r["method"] == "base":
                return f"{e['score']:.3f}"
            return mark(r, f"ret:{name}", "—" if e["delta"] is None else f"{e['delta'] * 100:+.1f} pts")

        for r in rows:
            if r["score"] is None:
                score = "—"
            elif r.get("score_ci"):
                score = f"{r['score']:.3f} [{r['score_ci'][0]:.3f}, {r['score_ci'][1]:.3f}]"
            else:
                score = f"{r['score']:.3f} ± {_num(r['stderr'], '.3f')}"
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
            if r.get("gpu_shared"):
                status += " [yellow]GPU shared[/]"
            if r.get("host_busy"):
                status += " [yellow]host busy[/]"
            t.add_row(
                r["method"] if r["method"] != "base" else "base (zero-shot)",
                mark(r, "score", score),
                _vs_best(r),
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
        t.caption = ("vs best: the difference to the best method with its 95% CI (paired over seeds, else a paired "
                     "bootstrap over examples, else from the standard errors); '≈ best' = the CI contains 0, a tie, "
                     "not a rank; "
                     "Δ base: score minus the zero-shot base; % of full gain: Δ / full fine-tuning's Δ; "
                     + ("latency: decode time per token vs the base model (+x% slower), at the latency grid's first "
                        "shape, static regime when timed, else eager; " if show_lat else "")
                     + (f"{', '.join(kept)} Δ: retention, the change on a task not trained on vs the base model's "
                        "score (shown in the base row; negative = forgetting); " if kept else "")
                     + "best values in green.")
        tables.append(t)
    return tables


def _pts_over_seeds(values: list[float]) -> str:
    """Score changes (fractions) as points: the mean, and the seeds' range when there are several."""
    if not values:
        return "—"
    mean = sum(values) / len(values) * 100
    if len(values) == 1:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ({min(values) * 100:+.2f}..{max(values) * 100:+.2f})"


def _min_text(values: list[float], fmt: str) -> str:
    return format(min(values), fmt) if values else "—"


def merge_tables(runs: list[dict[str, Any]], title: str = "") -> list[Any]:
    """Merge fidelity, one row per task x mergeable method over its ok seeds: the merged model against the
    unmerged one in the run's dtype (max abs Δ logit, greedy-token agreement, lm-eval score change), and the
    two ways to merge for bf16 serving (``merge.precision``: merge in fp32 then cast, or cast then merge in
    bf16), each against the unmerged model in bf16. Empty when no run merged."""
    from rich.table import Table

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("status") == "ok" and (r.get("merge") or {}).get("supported"):
            groups.setdefault((r["task"], r["method"]), []).append(r)
    if not groups:
        return []
    precision = any((r["merge"].get("precision") or {}) for rs in groups.values() for r in rs)
    t = Table(title=f"{title}merge fidelity: the merged model vs the unmerged one", title_justify="left",
              header_style="bold")
    cols = ["task", "method", "seeds", "max Δ logit", "greedy", "score Δ pts"]
    if precision:
        cols += ["fp32→bf16: Δ pts", "greedy", "in bf16: Δ pts", "greedy"]
    cols += ["status"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("task", "method", "status") else "right", no_wrap=True)

    def deltas(rs: list[dict[str, Any]], path: str) -> tuple[list[float], list[float]]:
        ds, agree = [], []
        for r in rs:
            m = merge_variant(r, path)
            d = (m.get("eval") or {}).get("delta")
            ds += [d] if d is not None else []
            agree += [m["greedy_agreement"]] if m.get("greedy_agreement") is not None else []
        return ds, agree

    for (task, method), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        logit = [r["merge"]["max_abs_logit_diff"] for r in rs if r["merge"].get("max_abs_logit_diff") is not None]
        d_merged, a_merged = deltas(rs, "merged")
        row = [task, method, ", ".join(str(r["seed"]) for r in rs), _num(max(logit) if logit else None, ".2g"),
               _min_text(a_merged, ".3f"), _pts_over_seeds(d_merged)]
        if precision:
            for path in ("merge_fp32_then_cast", "merge_in_bf16"):
                d, a = deltas(rs, path)
                row += [_pts_over_seeds(d), _min_text(a, ".3f")]
        status = ["lossy"] if any(r["merge"].get("lossy") for r in rs) else []
        if dequantization_only(rs):  # unmerging leaves the dequantized base by design: not flagged apart
            status += ["[yellow]dequantization > tol[/]"]
        else:
            status += ["[red]merge mismatch[/]"] if any(r["merge"].get("ok") is False for r in rs) else []
            status += ["[red]unmerge mismatch[/]"] if any(r["merge"].get("unmerge_ok") is False for r in rs) else []
        t.add_row(*row, " ".join(status) or "ok")
    t.caption = ("max Δ logit: the largest absolute logit difference over the probe prompts and seeds; greedy: "
                 "the share of greedy tokens that match, the lowest over seeds; Δ pts: the merged model's lm-eval "
                 "score minus the unmerged one's, in points, mean over seeds (range). Merging for bf16 serving, "
                 "against the unmerged model in bf16: fp32→bf16 merges in fp32 then casts, in bf16 casts then "
                 "merges. lossy: QLoRA merges into its dequantized 4-bit base. mismatch: merged logits beyond "
                 "the method's tolerance. dequantization > tol: beyond it from the 4-bit model, but within it "
                 "from the unmerged model on the same dequantized base: the gap is the dequantization, not the "
                 "merge.")
    return [t]


MODE_ORDER = ("unmerged", "merged", "stack2", "stack4")


def latency_tables(latencies: dict[str, dict[str, Any]], title: str = "") -> list[Any]:
    """One table per regime: a row per method x shape; decode ms/token of base, then each mode's overhead
    vs base (decode) with its bootstrap 95 % CI. ``latencies`` maps a row label (the method) to a
    ``latency`` section (``peftbench.latency.timer.measure``)."""
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
                     if s["ok"] is False}
            for cell in (lat.get("regimes") or {}).get(regime, []):
                base = cell["modes"].get("base", {})
                cols = []
                for m in modes:
                    o = cell["overhead"].get(m)
                    err = (cell["modes"].get(m) or {}).get("error")
                    cols.append("failed" if err else "—" if o is None else
                                f"{o['ratio'] * 100:+.1f}% [{o['ci95'][0] * 100:+.1f}, {o['ci95'][1] * 100:+.1f}]")
                flag = flags.get((regime, cell["batch_size"], cell["prompt_tokens"]))
                unjudged = any(s.get("ok") is None for s in lat.get("sanity") or []
                               if (s["regime"], s["batch_size"], s["prompt_tokens"]) ==
                               (regime, cell["batch_size"], cell["prompt_tokens"]))
                sanity = (f"[red]{flag['mode']} {flag['overhead'] * 100:+.1f}% ≠ base[/]" if flag else
                          "not judged (too few rounds)" if unjudged else "ok")
                sanity += "".join(f" [yellow]{flag}[/]" for flag in neighbour_flags(lat))
                t.add_row(label, str(cell["batch_size"]), str(cell["prompt_tokens"]), str(cell["new_tokens"]),
                          _num((base.get("decode_ms_per_token") or {}).get("median"), ".2f"),
                          _num((base.get("prefill_ms") or {}).get("median"), ".1f"), *cols, sanity)
        t.caption = ("overhead: the mode's median decode time per token / base's - 1, base timed in the same "
                     "rotated rounds; CI: paired bootstrap over rounds. sanity: merged (and full fine-tuning) must "
                     "time like base; a flag means the timing is suspect, not a finding. GPU shared: other processes "
                     "used the GPU while it was timed. host busy: other processes kept over "
                     f"{HOST_BUSY_CORES:g} CPU core busy on average while it was timed.")
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


def _check_folder(output: Path) -> None:
    from peftbench.errors import UsageError

    if not any((output / name).exists() for name in ("session.json", "runs", "latency")):
        raise UsageError(f"{output}: not a peftbench results folder (no session.json, runs/ or latency/).")


def folder_data(output: Path) -> dict[str, Any]:
    """A results folder as one JSON-able dict: a run session's session and runs, or a latency session's."""
    _check_folder(output)
    if (output / "latency").is_dir():
        from peftbench.session.latency_only import load_latency

        session, results = load_latency(output)
        return {"session": session, "latency": results}
    from peftbench.results.store import load_runs, load_session, verify_run_files

    session = load_session(output)
    verify_run_files(output, session)
    return {"session": session, "runs": list(load_runs(output).values())}


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
    tables = leaderboard_tables(session, runs) + merge_tables(runs)
    for task, lats in run_latencies(runs).items():
        tables += latency_tables(lats, title=f"{task} — ")
    return tables, {}


# ---- several folders at once (report, claims) ---------------------------------------------------------------
def load_folders(folders: list[Path], allow_mixed: bool = False) -> dict[str, Any]:
    """Merge result folders (e.g. sessions made in several GPU calls): their runs and their latency results.
    Folders of different base models, or of different versions of a task, are refused unless
    ``allow_mixed``: their numbers do not compare."""
    from peftbench.errors import UsageError

    runs: list[dict[str, Any]] = []
    latency: dict[str, dict[str, Any]] = {}
    sessions: list[tuple[Path, dict[str, Any]]] = []
    models: dict[str, list[str]] = {}
    versions: dict[tuple[str, Any], list[str]] = {}
    for folder in folders:
        data = folder_data(Path(folder))
        session = data["session"]
        sessions.append((Path(folder), session))
        model = (session.get("model") or {}).get("source") or (session.get("config") or {}).get("model")
        if model:
            models.setdefault(model, []).append(str(folder))
        for name, info in (session.get("tasks") or {}).items():
            versions.setdefault((name, info.get("version")), []).append(str(folder))
        if "latency" in data:
            for method, r in data["latency"].items():
                if r.get("status") == "ok" and r.get("latency"):
                    latency.setdefault(method, r["latency"])
        else:
            seen = {(r["method"], r["task"], r["seed"]) for r in runs}
            for r in data["runs"]:
                if (r["method"], r["task"], r["seed"]) in seen:
                    raise UsageError(f"{folder}: {r['key']} is also in an earlier folder; merge sessions of different "
                                     "cells only (or pass one of them).")
                runs.append(r)
                lat = r.get("latency") or {}
                if r.get("status") == "ok" and lat.get("regimes") and r["method"] not in latency:
                    latency[r["method"]] = lat
    if not allow_mixed:
        if len(models) > 1:
            raise UsageError("these folders measured different base models (" + "; ".join(
                f"{m}: {', '.join(fs)}" for m, fs in models.items()) + "); pass --allow-mixed to merge anyway.")
        by_task: dict[str, set[Any]] = {}
        for (name, version) in versions:
            by_task.setdefault(name, set()).add(version)
        mixed = {t: v for t, v in by_task.items() if len(v) > 1}
        if mixed:
            raise UsageError("these folders used different versions of task(s) " + ", ".join(
                f"{t} ({', '.join(map(str, sorted(v, key=str)))})" for t, v in mixed.items())
                + "; pass --allow-mixed to merge anyway.")
    return {"sessions": sessions, "runs": runs, "latency": latency}


def _claim_value(quantity: str, value: float) -> str:
    if quantity in ("share_of_full", "relative_gap", "latency_overhead"):
        return f"{value * 100:.1f}%" if quantity == "share_of_full" else f"{value * 100:+.1f}%"
    if quantity == "trainable_pct":
        return f"{value:.2f}%"
    if quantity == "merge_score_change":
        return f"{value * 100:+.2f}%"
    return f"{value:,.2f}x" if value < 10 else f"{value:,.0f}x"


def claims_table(results: list[dict[str, Any]], title: str = "") -> Any:
    from rich.table import Table

    from peftbench.report.claims import load_claims

    quantity = {c["id"]: c["quantity"] for c in load_claims()}
    t = Table(title=f"{title}claims checked against these results", title_justify="left", header_style="bold")
    for col in ("claim", "on", "measured", "95% CI", "claimed", "verdict"):
        t.add_column(col, justify="right" if col in ("measured", "95% CI", "claimed") else "left")
    colors = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}
    for r in results:
        q = quantity.get(r["id"], "")
        lo, hi = r["range"]
        claimed = (f">= {_claim_value(q, lo)}" if hi is None else f"<= {_claim_value(q, hi)}" if lo is None
                   else f"{_claim_value(q, lo)} to {_claim_value(q, hi)}")
        ci = "—" if not r["ci95"] else f"[{_claim_value(q, r['ci95'][0])}, {_claim_value(q, r['ci95'][1])}]"
        color = colors.get(r["verdict"].split(" (")[0], "white")
        t.add_row(r["claim"], r["task"], _claim_value(q, r["value"]), ci, claimed, f"[{color}]{r['verdict']}[/]")
    t.caption = ("verdict: holds = the 95% CI lies inside the claimed range; does not hold = entirely outside; "
                 "inconclusive = it straddles a bound; (no CI) = one measurement, judged by its value; (timing suspect) = "
                 "the latency harness flagged its own figure (sanity check, shared GPU, busy host). Definitions "
                 "and sources: docs/claims.md and peftbench/report/claims.yaml.")
    return t


# ---- exports --------------------------------------------------------------------------------------------------
EXPORT_COLUMNS = ("task", "method", "seeds", "status", "metric", "score", "stderr", "score_sd", "score_ci_low",
                  "score_ci_high",
                  "vs_best", "vs_best_ci_low", "vs_best_ci_high", "vs_best_method", "tied_with_best", "delta_base",
                  "pct_of_full_gain", "trainable", "trainable_pct", "peak_memory_bytes", "train_time_s",
                  "tokens_per_s", "artifact_bytes", "latency_unmerged", "latency_merged")


def export_rows(session: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leaderboard as flat records (CSV, JSON, LaTeX)."""
    out = []
    tasks = session.get("tasks") or {r["task"]: {} for r in runs}
    for task, info in tasks.items():
        metric = info.get("metric", "acc")
        for r in rows_for_task(runs, task, metric):
            ci, vs = r.get("score_ci") or [None, None], r.get("vs_best") or {}
            vci = vs.get("ci95") or [None, None]
            rec = {"task": task, "method": r["method"], "seeds": r["seeds"], "status": r["status"], "metric": metric,
                   "score": r["score"], "stderr": r["stderr"], "score_sd": r.get("score_sd"), "score_ci_low": ci[0],
                   "score_ci_high": ci[1],
                   "vs_best": vs.get("diff"), "vs_best_ci_low": vci[0], "vs_best_ci_high": vci[1],
                   "vs_best_method": vs.get("method"), "tied_with_best": r.get("tied_with_best"),
                   "delta_base": r["delta"], "pct_of_full_gain": r["pct_of_full_gain"], "trainable": r["trainable"],
                   "trainable_pct": r["trainable_pct"], "peak_memory_bytes": r["peak_memory"],
                   "train_time_s": r["train_time"], "tokens_per_s": r["tokens_per_s"],
                   "artifact_bytes": r["artifact_bytes"], "latency_unmerged": r["latency_unmerged"],
                   "latency_merged": r["latency_merged"]}
            rec.update({f"retention_{k}_delta": v.get("delta") for k, v in (r.get("retention") or {}).items()})
            out.append(rec)
    return out


def to_csv(records: list[dict[str, Any]]) -> str:
    import csv
    import io

    present = list(dict.fromkeys(k for r in records for k in r))
    cols = [c for c in EXPORT_COLUMNS if c in present] + sorted(set(present) - set(EXPORT_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    return buf.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def to_latex(records: list[dict[str, Any]], model: str = "") -> str:
    """One booktabs table per task, for ``\\input`` in a paper (needs ``\\usepackage{booktabs}``)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        metric = rows[0]["metric"]
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lrrrrrr}", r"\toprule",
                f"Method & {_tex(metric)} & vs.\\ best & $\\Delta$ base & Trainable (\\%) & Peak mem. (GiB) & "
                r"Artifact (MiB) \\", r"\midrule"]
        for r in rows:
            score = "--" if r["score"] is None else (
                f"{r['score']:.3f} [{r['score_ci_low']:.3f}, {r['score_ci_high']:.3f}]" if r["score_ci_low"] is not None
                else f"{r['score']:.3f} $\\pm$ {r['stderr']:.3f}" if r["stderr"] is not None else f"{r['score']:.3f}")
            if r["method"] == "base" or r["vs_best"] is None:
                vs = "--"
            elif r["vs_best_method"] == "best":
                vs = "best"
            else:
                vs = f"{r['vs_best'] * 100:+.1f}" + (r"$^{\approx}$" if r["tied_with_best"] else "")
            delta = "--" if r["delta_base"] is None else f"{r['delta_base'] * 100:+.1f}"
            tp = "--" if r["method"] == "base" or r["trainable_pct"] is None else f"{r['trainable_pct']:.2f}"
            mem = "--" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.1f}"
            art = "--" if r["artifact_bytes"] is None else f"{r['artifact_bytes'] / 2**20:.1f}"
            name = "base (zero-shot)" if r["method"] == "base" else r["method"]
            out.append(f"{_tex(name)} & {score} & {vs} & {delta} & {tp} & {mem} & {art} \\\\")
        out += [r"\bottomrule", r"\end{tabular}",
                f"\\caption{{{_tex(task)}: {_tex(metric)} of each method{(' on ' + _tex(model)) if model else ''}. "
                r"vs.\ best: points behind the best method; $^{\approx}$: its 95\% CI contains 0 (a tie). "
                r"$\Delta$ base: points over the zero-shot base.}",
                f"\\label{{tab:peftbench-{_tex(task).replace(chr(92), '')}}}", r"\end{table}", ""]
    return "\n".join(out)


def merged_session(sessions: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """A session record standing for several run sessions: their tasks, the first one's model and env."""
    run_sessions = [s for _, s in sessions if s.get("kind") != "latency"]
    if not run_sessions:
        return {}
    first = dict(run_sessions[0])
    tasks: dict[str, Any] = {}
    for s in run_sessions:
        for name, info in (s.get("tasks") or {}).items():
            tasks.setdefault(name, info)
    first["tasks"] = tasks
    return first
