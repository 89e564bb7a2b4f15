"""The leaderboard as rich tables, one per task, from the rows ``leaderboard.py`` computes (formatting only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from peftbench.report.baselines import NOT_RECORDED, informative
from peftbench.report.cell_text import DASH, human_bytes, human_count, or_dash, percent
from peftbench.report.leaderboard import best_values, retention_tasks, rows_for_task, skipped_studies
from peftbench.system.memory import HOST_BUSY_CORES, SHARED_GPU_BYTES


def leaderboard_tables(session: dict[str, Any], runs: list[dict[str, Any]]) -> list[Any]:
    """One table per task of the session with a row per method (seeds averaged): its score, how far it is from
    the best method and from the base model, what it cost, and its retention on the tasks it did not train on."""
    tasks = session.get("tasks") or {r["task"]: {} for r in runs}
    tables = []
    for task, info in tasks.items():
        metric = info.get("metric", "acc")
        rows = rows_for_task(runs, task, metric)
        if rows:
            tables.append(_task_table(session, [r for r in runs if r["task"] == task], task, metric, rows))
    return tables


def _task_table(session: dict[str, Any], task_runs: list[dict[str, Any]], task: str, metric: str,
                rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    kept = retention_tasks(rows)
    best = _best_values(rows, kept)
    # latency columns only when the session measured latency (latency_rounds=0 skips it)
    show_latency = any(r["latency_unmerged"] is not None or r["latency_merged"] is not None for r in rows)
    info = (session.get("tasks") or {}).get(task) or {}
    baselines = info.get("baselines")
    t = Table(title=_title(session, task_runs, task, metric, rows)
              + _informative_warning(rows, baselines, info.get("baselines_note")),
              title_justify="left", header_style="bold")
    for col, just in _columns(metric, rows, kept, show_latency):
        t.add_column(col, justify=just, no_wrap=col not in ("status", "method"))
    for r in rows:
        t.add_row(*_cells(r, best, kept, show_latency))
        if r["method"] == "base":
            for cells in _baseline_rows(baselines, len(t.columns)):
                t.add_row(*cells, style="dim")
    if not any(r["method"] == "base" for r in rows):
        for cells in _baseline_rows(baselines, len(t.columns)):
            t.add_row(*cells, style="dim")
    t.caption = _caption(kept, show_latency, skipped_studies(task_runs))
    return t


def _informative_warning(rows: list[dict[str, Any]], baselines: dict[str, Any] | None, note: str | None) -> str:
    """The title's mark of a task no method's CI lifts above its baselines (``report.baselines.informative``),
    or that the baselines are not known."""
    if not baselines:
        return f" — {note or NOT_RECORDED}"
    ok, why = informative(rows, baselines)
    return "" if ok else f" — uninformative: {why}; it decides no claim"


def _baseline_rows(baselines: dict[str, Any] | None, columns: int) -> list[list[str]]:
    """The rows of guessing, under the base row: chance and the majority class, in the score column."""
    if not baselines:
        return []
    n = f"n = {baselines['n']:,}" + (f", first {baselines['limit']}" if baselines.get("limit") else "")
    rows = [("chance (uniform guess)", baselines["chance"]),
            (f"majority class ('{baselines['majority_label']}')", baselines["majority"])]
    return [[label, f"{score:.3f}", *[DASH] * (columns - 3), f"baseline, {n}"] for label, score in rows]


def _best_values(rows: list[dict[str, Any]], kept: list[str]) -> dict[str, float]:
    """The best value of each column; a retention column's (``ret:<task>``) is the largest change vs base
    (negative = forgetting)."""
    best = best_values(rows)
    for name in kept:
        vals = [r["retention"][name]["delta"] for r in rows
                if r["method"] != "base" and name in r["retention"] and r["retention"][name]["delta"] is not None]
        if vals:
            best[f"ret:{name}"] = max(vals)
    return best


# ---- title and columns ----------------------------------------------------------------------------------------
def _title(session: dict[str, Any], task_runs: list[dict[str, Any]], task: str, metric: str,
           rows: list[dict[str, Any]]) -> str:
    """What was scored on which model and device, then each warning about what the columns can compare."""
    model = (session.get("model") or {}).get("source", "?")
    env = session.get("env") or {}
    device = env.get("gpu") or env.get("device", "?")
    limit = next((r["config"]["train"].get("limit") for r in task_runs if r.get("config")), 0)
    title = f"{task} — {metric} on {model} ({device})" + (f", scored on first {limit} examples" if limit else "")
    return title + "".join(_title_warnings(session, task_runs, rows))


def _title_warnings(session: dict[str, Any], task_runs: list[dict[str, Any]],
                    rows: list[dict[str, Any]]) -> Iterator[str]:
    if (session.get("model") or {}).get("kind") in ("tiny", "shape"):
        yield " — random weights: scores carry no accuracy, only costs do"
    mixed = mixed_loops(task_runs)
    if mixed:
        yield (" — training loops differ between methods, so their time, tok/s and memory are not comparable: "
               + "; ".join(f"{m}: {sig}" for m, sig in mixed.items()))
    shared = [r for r in rows if r.get("gpu_shared")]
    if shared:
        alone = all(r.get("costs_alone") for r in shared)
        yield (" — 'GPU shared': other processes used the GPU while those cells ran (over "
               f"{SHARED_GPU_BYTES / 1024**3:.0f} GiB of its memory), so their "
               + ("train s is not the method's alone (tok/s and latency: measured alone, in the cost phase)" if alone
                  else "time, tok/s and latency are not the method's alone"))
    beside = [r for r in rows if r.get("beside_cells") and r["method"] != "base"]
    if beside:
        yield (" — 'beside cells': the cell ran while other cells of its --jobs session shared the device, so its "
               + ("train s is not the method's alone; tok/s and latency come from the session's cost phase "
                  "(cost/), measured with the device to itself" if all(r.get("costs_alone") for r in beside)
                  else "train s and tok/s are not the method's alone (no cost phase measured them alone: "
                       "`peftbench run --resume` runs it)"))
    if any(r.get("host_busy") for r in rows):
        yield (" — 'host busy': other processes kept over "
               f"{HOST_BUSY_CORES:g} CPU core busy on average while those cells ran, which slows host-bound "
               "steps and decoding even on a GPU of its own")


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


def _columns(metric: str, rows: list[dict[str, Any]], kept: list[str], show_latency: bool) -> list[tuple[str, str]]:
    """(header, justification) of each column."""
    score = f"{metric} [95% CI]" if any(r.get("score_ci") for r in rows) else f"{metric} ± se"
    costs = ("vs best", "Δ base", "% of full gain", "trainable", "peak mem", "train s", "tok/s", "artifact")
    latency = ("lat. unmerged", "lat. merged") if show_latency else ()
    return [("method", "left"), (score, "right"), *((col, "right") for col in costs),
            *((col, "right") for col in latency), *((f"{name} Δ", "right") for name in kept), ("status", "left")]


def _caption(kept: list[str], show_latency: bool, skipped: list[str]) -> str:
    return ("chance / majority class: the score of a uniform guess / of always giving the test set's most "
            "frequent answer; a task where no method's 95% CI clears both is marked uninformative; "
            "95% CIs: a bootstrap over seeds and test examples, paired across methods (docs/statistics.md); "
            "vs best: the difference to the best method with its CI; '≈ best' = the CI contains 0, a tie, "
            "not a rank; "
            "Δ base: score minus the zero-shot base; % of full gain: Δ / full fine-tuning's Δ; "
            + ("latency: decode time per token vs the base model (+x% slower), at the latency grid's first "
               "shape, static regime when timed, else eager; " if show_latency else "")
            + (f"{', '.join(kept)} Δ: retention, the change on a task not trained on vs the base model's "
               "score (shown in the base row; negative = forgetting); " if kept else "")
            + "best values in green."
            + "".join(f" Not measured: {why}." for why in skipped))


# ---- one row ----------------------------------------------------------------------------------------------
def _cells(r: dict[str, Any], best: dict[str, float], kept: list[str], show_latency: bool) -> list[str]:
    def marked(col: str, text: str) -> str:
        return _mark_best(r, col, text, best)

    latency = [marked("latency_unmerged", percent(r["latency_unmerged"])),
               marked("latency_merged", percent(r["latency_merged"]))] if show_latency else []
    return [
        _method_text(r),
        marked("score", _score_text(r)),
        _vs_best(r),
        marked("delta", DASH if r["delta"] is None else f"{r['delta'] * 100:+.1f} pts"),
        marked("pct_of_full_gain", percent(r["pct_of_full_gain"], signed=False)),
        marked("trainable", _trainable_text(r)),
        marked("peak_memory", human_bytes(r["peak_memory"])),
        marked("train_time", or_dash(r["train_time"], ".1f")),
        marked("tokens_per_s", or_dash(r["tokens_per_s"], ",.0f")),
        marked("artifact_bytes", human_bytes(r["artifact_bytes"])),
        *latency,
        *(_retention_cell(r, name, best) for name in kept),
        _status_text(r),
    ]


def _method_text(r: dict[str, Any]) -> str:
    """The method, and for a tuned session's final cells the values the tuning chose and how
    (``lora (lr 3e-4; tuned: acc on validation, seed 0; lr on grid edge)``)."""
    if r["method"] == "base":
        return "base (zero-shot)"
    tuning = r.get("tuning")
    if not tuning or not tuning.get("values"):
        return r["method"]
    values = ", ".join(f"{k} {_short(v)}" for k, v in tuning["values"].items())
    how = f"tuned: {tuning['chosen_by']}" if tuning.get("chosen_by") else "tuned"
    edge = tuning.get("on_edge")
    if edge:
        how += "; " + (", ".join(edge) if isinstance(edge, list) else "value") + " on grid edge"
    return f"{r['method']} ({values}; {how})"


def _short(value: Any) -> str:
    """An option value as a person writes it: 3e-4, 16, 0.05."""
    if isinstance(value, float) and value and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _mark_best(r: dict[str, Any], col: str, text: str, best: dict[str, float]) -> str:
    """``text`` in green when the row holds the column's best value."""
    value = r["retention"].get(col[4:], {}).get("delta") if col.startswith("ret:") else r[col]
    return f"[bold green]{text}[/]" if col in best and value == best[col] and text != DASH else text


def _score_text(r: dict[str, Any]) -> str:
    if r["score"] is None:
        return DASH
    if r.get("score_ci"):
        return f"{r['score']:.3f} [{r['score_ci'][0]:.3f}, {r['score_ci'][1]:.3f}]"
    return f"{r['score']:.3f} ± {or_dash(r['stderr'], '.3f')}"


def _vs_best(r: dict[str, Any]) -> str:
    cmp = r.get("vs_best")
    if r["method"] == "base" or not cmp:
        return DASH
    if cmp.get("method") == "best":
        return "best"
    if cmp.get("ci95") is None:
        return f"{cmp['diff'] * 100:+.1f} pts"
    lo, hi = cmp["ci95"]
    text = f"{cmp['diff'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]"
    return f"≈ best ({text})" if r.get("tied_with_best") else text


def _trainable_text(r: dict[str, Any]) -> str:
    if r["trainable"] is None or r["method"] == "base":
        return DASH
    return f"{human_count(r['trainable'])} ({r['trainable_pct']:.2f}%)"


def _retention_cell(r: dict[str, Any], name: str, best: dict[str, float]) -> str:
    """The base row shows its score on a kept task; a method's row, its change vs base in points."""
    e = r["retention"].get(name)
    if e and e["score"] is None and e.get("errors"):
        return "error"   # the run files hold retention.<task>.error
    if not e or e["score"] is None:
        return DASH
    if r["method"] == "base":
        return f"{e['score']:.3f}"
    return _mark_best(r, f"ret:{name}", DASH if e["delta"] is None else f"{e['delta'] * 100:+.1f} pts", best)


def _status_text(r: dict[str, Any]) -> str:
    """The cell's status, its failure reason, and each check that flagged it."""
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
    if r.get("beside_cells"):
        status += " [yellow]beside cells[/]"
    return status
