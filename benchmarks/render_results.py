"""docs/results.md from results/reference/: issue 8's reference results, rendered by peftbench itself.

Every table and figure in the document comes from the committed files through the same code as
``peftbench report`` / ``peftbench claims`` (and ``train_throughput.py --markdown`` for the 8B-shape cost
rows), so re-rendering reproduces the document exactly; ``--check`` says whether it does (a test runs it).

Layout of ``results/reference/``:
  <task>/            one ``peftbench run`` session per task (benchmarks/device/reference-gpu.sh)
  8b-shape/          throughput.json, throughput-ckpt.json (train_throughput.py on shape:llama-3.1-8b,
                     without / with activation checkpointing) and latency/ (a ``peftbench latency`` session)

    python benchmarks/render_results.py            # write docs/results.md and its plots
    python benchmarks/render_results.py --check    # exit 1 if docs/results.md is not what the files give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:headline -->", "<!-- /results:headline -->"  # the README's headline block

LIMITS = """\
- **One small model.** SmolLM2-135M-Instruct has 135M parameters; how methods rank on 1B–70B models,
  where LoRA's rank is a smaller share of the weights and full fine-tuning is far costlier, is not shown
  here. The 8B-shape rows give cost at that scale, not quality.
- **One GPU type, one software stack** (the versions above). Speeds and latencies are this machine's;
  ratios travel better than absolute numbers.
- **One budget per task** (the same optimizer steps and examples for every method) and each method's
  default learning rate; no per-method tuning. A method that needs more steps or another learning rate
  is at a disadvantage that tuning could remove.
- **Three seeds.** The CIs are the hierarchical bootstrap over seeds and test examples
  ([statistics.md](statistics.md)); differences inside them are not findings (the leaderboard marks ties
  with the best).
- **Latency is for batch-1 decoding of short prompts** in the cells; the latency grid of docs/latency.md
  covers more shapes.
"""


def lossy_merge_note(runs: list[dict[str, Any]]) -> str:
    """A limits bullet for lossy merges (QLoRA into its dequantized base) flagged beyond the logit tolerance: how
    many, by how much, and whether the unmerged model -- the same dequantized base with the adapter applied
    separately -- is off by the same amount, in which case the difference is the dequantization, not the merge.
    Empty when no lossy merge was flagged."""
    from peftbench.report.leaderboard import dequantization_only

    lossy = [r for r in runs if r.get("status") == "ok" and (r.get("merge") or {}).get("lossy")
             and r["merge"].get("ok") is not None]
    flagged = [r for r in lossy if r["merge"]["ok"] is False]
    if not flagged:
        return ""
    dequantization = dequantization_only(flagged)
    cells = ", ".join(f"{r['task']} seed {r['seed']} ({100 * r['merge']['max_rel_logit_diff']:.1f} %)"
                      for r in sorted(flagged, key=lambda r: (r["task"], r["seed"])))
    same = all(r["merge"].get("unmerge_max_rel_logit_diff") is not None and
               abs(r["merge"]["unmerge_max_rel_logit_diff"] - r["merge"]["max_rel_logit_diff"])
               <= 0.01 * r["merge"]["max_rel_logit_diff"] for r in lossy)
    deltas = [100 * r["merge"]["eval"]["delta"] for r in flagged
              if isinstance((r["merge"].get("eval") or {}).get("delta"), (int, float))]
    methods = sorted({r["method"] for r in flagged})
    text = (f"- **Lossy merges flagged.** {len(flagged)} of {len(lossy)} {', '.join(methods)} merges differ from the "
            f"unmerged model by more than the {100 * flagged[0]['merge']['tolerance_rel']:g} % logit tolerance "
            f"(largest logit difference relative to the largest logit): {cells}, so the merge fidelity table marks "
            f"them '{'dequantization > tol' if dequantization else 'merge mismatch'}'.")
    if dequantization:
        worst = max(r["merge"]["same_base"]["max_rel_logit_diff"] for r in flagged)
        text += (" Against the unmerged model on the same dequantized base (`merge.same_base`) every one is within "
                 f"it (at most {100 * worst:.2g} %): the gap is the dequantization, not the merge.")
    elif same:
        text += (f" In all {len(lossy)} cells the model after unmerging (the same dequantized base, the adapter "
                 "applied separately again) differs from the 4-bit model by the same amount, within 1 %: the "
                 "difference comes from replacing the 4-bit layers by dequantized ones (bitsandbytes' kernels "
                 "compute differently), not from adding the delta; hence 'unmerge mismatch' beside it.")
    if deltas:
        text += (f" The flagged merges moved the lm-eval score by {min(deltas):+.2f} to {max(deltas):+.2f} points.")
    return text + "\n"


def reference_parts(ref: Path) -> tuple[list[Path], Path | None]:
    """(the task session folders, the 8B-shape folder or None)."""
    sessions = sorted(p for p in ref.iterdir() if (p / "session.json").is_file() and (p / "runs").is_dir()) \
        if ref.is_dir() else []
    shape = ref / "8b-shape"
    return sessions, (shape if shape.is_dir() else None)


def _md(tables: list[Any]) -> str:
    from peftbench.report.markdown import render_markdown

    return render_markdown(tables).strip()


def setup_section(session: dict[str, Any], runs: list[dict[str, Any]], sessions: list[tuple[Path, dict]]) -> str:
    """What was run: model, machine, versions, methods with their options, budgets and seeds."""
    model = session.get("model") or {}
    envs = [s.get("env") or {} for _, s in sessions]
    gpus = sorted({e.get("gpu") or e.get("device") or "?" for e in envs})
    versions = (envs[0].get("versions") or {}) if envs else {}
    dates = sorted({str(s.get("started", ""))[:10] for _, s in sessions if s.get("started")})
    lines = [f"- **Model**: `{model.get('source', '?')}` ({model.get('architecture', '?')}, "
             f"{model.get('parameters', 0):,} parameters; {model.get('note', '')}).",
             f"- **Machine**: {', '.join(gpus)}; " + ", ".join(f"{k} {versions[k]}" for k in
                                                              ("torch", "transformers", "peft", "bitsandbytes",
                                                               "lm_eval") if k in versions) + ".",
             f"- **Sessions**: {', '.join(f'`{p.name}`' for p, _ in sessions)} ({', '.join(dates) or 'undated'}).",
             f"- **Seeds**: {', '.join(str(s) for s in sorted({r['seed'] for r in runs if r['method'] != 'base'}))}"
             + ("; the zero-shot base row once per task." if any(r["method"] == "base" for r in runs) else ".")]
    method_configs: dict[str, Any] = {}
    budgets: dict[tuple[str, str], dict[str, Any]] = {}
    for _, s in sessions:
        method_configs.update(s.get("method_configs") or {})
        for key, cfg in (s.get("train_configs") or {}).items():
            method, task = key.split("--", 1)
            budgets[(method, task)] = cfg
    trained = [c for (m, _), c in budgets.items() if m != "base"]
    shared = {k: v for k, v in (trained[0] if trained else {}).items() if all(c.get(k) == v for c in trained)}
    lines.append("- **Training options shared by every method and task**: "
                 + ", ".join(f"`{k}={v}`" for k, v in shared.items()) + ".")
    tokens: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        if r["status"] == "ok" and (r.get("train") or {}).get("tokens"):
            tokens.setdefault((r["method"], r["task"]), []).append(r["train"]["tokens"])
    rows = ["| method | options | learning rate | steps × batch, mean tokens trained (per task) |", "|---|---|---|---|"]
    for method in sorted(method_configs):
        opts = ", ".join(f"{k}={v}" for k, v in (method_configs[method] or {}).items())
        per = {t: c for (m, t), c in budgets.items() if m == method}
        lrs = sorted({c.get("lr") for c in per.values()}, key=str)
        steps = "; ".join(f"{t}: {c.get('steps')} × {c.get('batch_size')}"
                          + (f", {sum(tokens[(method, t)]) / len(tokens[(method, t)]):,.0f}"
                             if tokens.get((method, t)) else "") for t, c in sorted(per.items()))
        rows.append(f"| {method} | {opts} | {', '.join(map(str, lrs))} | {steps} |")
    return "\n".join(lines) + "\n\n" + "\n".join(rows)


def cells_section(runs: list[dict[str, Any]]) -> str:
    """Every cell's status; those not ok with their recorded reason."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    text = f"{len(runs)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        text += "\n\n| cell | status | reason |\n|---|---|---|\n" + "\n".join(
            f"| {r['key']} | {r['status']} | {(r.get('reason') or (r.get('error') or {}).get('message') or '—')[:200]} |"
            for r in sorted(bad, key=lambda r: r["key"]))
    return text


def shape_section(shape: Path | None) -> str:
    if shape is None:
        return "Not run yet."
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import markdown

    parts = ["These rows use random weights of the published Llama-3.1-8B shape: **they carry no accuracy**, "
             "only cost.", shape_summary(shape)]
    for name, what in (("throughput.json", "without activation checkpointing"),
                       ("throughput-ckpt.json", "with activation checkpointing"),
                       ("throughput-h100.json", "without checkpointing, allocations capped at 79 GiB"),
                       ("throughput-h100-ckpt.json", "with checkpointing, allocations capped at 79 GiB")):
        f = shape / name
        if f.is_file():
            parts.append(f"Training, {what} (`{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}`):\n\n"
                         + markdown(json.loads(f.read_text())))
    if (shape / "latency").is_dir():
        from peftbench.report.folders import folder_tables

        tables, failed = folder_tables(shape)
        parts.append("Latency (static regime):\n\n" + _md(tables) + (
            "\n\nNot timed: " + ", ".join(f"{m} ({r.get('status')})" for m, r in sorted(failed.items()))
            if failed else ""))
    return "\n\n".join(parts)


SHAPE_FILES = {"throughput.json": "plain", "throughput-ckpt.json": "ckpt",  # train_throughput.py outputs
               "throughput-h100.json": "h100", "throughput-h100-ckpt.json": "h100-ckpt"}  # capped at 79 GiB


def shape_summary(shape: Path) -> str:
    """One row per method: trainable parameters, artifact, peak memory and tokens/s without / with activation
    checkpointing, whether each setting fits an 80 GB H100 (measured with allocations capped at 79 GiB, when
    those runs exist: an out-of-memory run shows the memory it reached), and the latency overhead at batch 1 x
    prompt 128 (static regime)."""
    from peftbench.report.cell_text import human_bytes

    runs: dict[str, dict[str, Any]] = {}
    settings = None
    for name, kind in SHAPE_FILES.items():
        f = shape / name
        if f.is_file():
            data = json.loads(f.read_text())
            settings = settings or {**data["settings"], "gpu": (data.get("env") or {}).get("gpu")}
            for r in data["results"]:
                runs.setdefault(r["method"], {})[kind] = next(iter(r["variants"].values()), {})
    lat: dict[str, Any] = {}
    if (shape / "latency").is_dir():
        from peftbench.session.latency_only import load_latency

        lat = {m: r.get("latency") or {} for m, r in load_latency(shape)[1].items() if r.get("status") == "ok"}
    if not runs or settings is None:
        return ""

    def mem(v: dict[str, Any] | None) -> str:
        if not v:
            return "not run"
        b = v.get("peak_memory_bytes")
        text = "—" if b is None else human_bytes(b)
        return f"**out of memory** at {text}" if v.get("status") == "oom" else text

    def fits(v: dict[str, Any] | None) -> str:
        if not v:
            return "not measured"
        return "yes" if v.get("status") == "ok" else f"**no** ({mem(v)})" if v.get("status") == "oom" else \
            str(v.get("status"))

    def tps(v: dict[str, Any] | None) -> str:
        return "—" if not v or v.get("tokens_per_s") is None else f"{v['tokens_per_s']:,.0f}"

    def overhead(m: str) -> str:
        for cell in ((lat.get(m) or {}).get("regimes") or {}).get("static", []):
            if cell["batch_size"] == 1 and cell["prompt_tokens"] == 128:
                o = cell["overhead"]
                return ", ".join(f"{k} {o[k]['ratio'] * 100:+.1f}%" for k in ("unmerged", "merged") if k in o)
        return "not timed yet"

    rows = [f"At batch {settings['batch_size']} × {settings['seq_len']} tokens, weights {settings['weights_dtype']}, "
            f"the fast loop, on one {settings.get('gpu') or 'GPU'}. \"Fits an 80 GB H100\" is measured: the same "
            "runs with this process's CUDA allocations capped at 79 GiB (`--memory-limit-gib 79`: an H100's "
            "81,559 MiB less its CUDA context).", "",
            "| method | trainable | artifact | peak memory (no checkpointing / checkpointing) | tokens/s (same) | "
            "fits an 80 GB H100 (same) | latency vs base, batch 1 × 128 |", "|---|---|---|---|---|---|---|"]
    for m, v in runs.items():
        any_v = next((x for x in v.values() if x.get("trainable")), {})
        trainable, total = any_v.get("trainable"), any_v.get("total_params")
        share = f" ({100 * trainable / total:.2f} %)" if trainable and total else ""
        art = next(((x.get("artifact") or {}).get("bytes") for x in v.values() if x.get("artifact")), None)
        rows.append(f"| {m} | {'—' if trainable is None else f'{trainable:,}'}{share} | "
                    f"{human_bytes(art) if art else '—'} | {mem(v.get('plain'))} / {mem(v.get('ckpt'))} | "
                    f"{tps(v.get('plain'))} / {tps(v.get('ckpt'))} | {fits(v.get('h100'))} / {fits(v.get('h100-ckpt'))} | "
                    f"{overhead(m)} |")
    return "\n".join(rows)


def shared_flags(runs: list[dict[str, Any]]) -> str:
    """The neighbour flags ('GPU shared', 'host busy') any ok cell earned, quoted for the text ('' if none)."""
    from peftbench.system.memory import neighbour_flags

    return " / ".join(repr(f) for f in sorted({f for r in runs if r["status"] == "ok" for f in neighbour_flags(r)}))


def headline_note(runs: list[dict[str, Any]], uninformative: dict[str, str] | None = None) -> str:
    """What the headline cannot show by itself: cells still pending, tasks where no method beats a fixed guess
    (``uninformative``: task -> why, from ``report.claims.uninformative``), and cost columns measured on a
    shared GPU or busy host. Empty when every cell is ok, informative and measured alone."""
    notes = []
    if uninformative:
        why = "; ".join(f"{t}: {w}" for t, w in uninformative.items())
        notes.append(f"**Uninformative**: {' and '.join(uninformative)} separate no method from guessing ({why}), "
                     "so their columns rank nothing and decide no claim "
                     "([docs/results.md](docs/results.md), \"Claims\").")
    ok = sum(r["status"] == "ok" for r in runs)
    if ok < len(runs):
        notes.append(f"**Partial**: {ok} of {len(runs)} cells are done so far (the rest are pending GPU sessions; "
                     "[docs/results.md](docs/results.md) lists each); scores are over the seeds finished.")
    flags = shared_flags(runs)
    if flags:
        notes.append(f"The cost columns come from cells marked {flags}: other "
                     "processes shared the machine, so time and tokens/s are not the method's alone "
                     "([docs/performance.md](docs/performance.md) has the dedicated measurements).")
    return "\n\n".join(notes)


def headline(records: list[dict[str, Any]], tasks: list[str], runs: list[dict[str, Any]] | None = None,
             uninformative: dict[str, str] | None = None) -> str:
    """The README's headline: each method's score on every task (mean over seeds, with the 95 % CI) and its
    cost, from the same leaderboard rows as the document, with ``headline_note`` below it."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    # peak memory and tokens/s depend on the task's sequence lengths: take them from one task for every method,
    # the first where every method has a finished cell (else, per method, its first task, and say so)
    trained = [m for m in methods if m != "base"]

    def cost_of(m: str, t: str | None) -> dict[str, Any] | None:  # t None: the method's first task with a cost
        return next((r for r in records if r["method"] == m and t in (None, r["task"]) and r.get("trainable")), None)

    where = next((t for t in tasks if all(cost_of(m, t) for m in trained)), None)
    on = f" ({where})" if where else " (each method's first task)"
    head = "| method | " + " | ".join(tasks) + f" | trainable | peak memory{on} | tokens/s{on} |"
    rows = [head, "|---|" + "---|" * (len(tasks) + 3)]
    from peftbench.report.cell_text import human_bytes

    for m in methods:
        cells = []
        cost = {} if m == "base" else cost_of(m, where) or {}
        for t in tasks:
            r = next((x for x in records if x["method"] == m and x["task"] == t), None)
            if r is None or r.get("score") is None:
                cells.append("—")
                continue
            ci = "" if r.get("score_ci_low") is None else f" [{r['score_ci_low']:.3f}, {r['score_ci_high']:.3f}]"
            cells.append(f"{r['score']:.3f}{ci}")
        trainable = "—" if cost.get("trainable") is None else f"{cost['trainable'] / 1e6:.2f}M"
        memory = "—" if cost.get("peak_memory_bytes") is None else human_bytes(cost["peak_memory_bytes"])
        tps = "—" if cost.get("tokens_per_s") is None else f"{cost['tokens_per_s']:,.0f}"
        label = "base (zero-shot)" if m == "base" else m
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {trainable} | {memory} | {tps} |")
    note = headline_note(runs or [], uninformative)
    return "\n".join(rows) + (f"\n\n{note}" if note else "")


def render(ref: Path, plots: Path, doc: Path, plot_out: Path | None = None) -> tuple[str, str | None, list[Path]]:
    """(docs/results.md's text, the README headline block or None, the plot files written). The document links
    the plots in ``plots``; they are written to ``plot_out`` (default: ``plots``; --check writes them aside)."""
    plot_out = plot_out or plots
    from peftbench.report.claims import check, uninformative
    from peftbench.report.claims_table import claims_tables
    from peftbench.report.export import export_rows
    from peftbench.report.folders import load_folders, merged_session
    from peftbench.report.latency_table import latency_tables, run_latencies
    from peftbench.report.leaderboard_table import leaderboard_tables
    from peftbench.report.merge_table import merge_tables

    sessions, shape = reference_parts(ref)
    out = ["# Reference results", "",
           f"Rendered by `python benchmarks/render_results.py` from `{_rel(ref)}/`: every table and figure comes "
           "from the committed result files through `peftbench report` / `peftbench claims`. Do not edit by hand; "
           "a test re-renders the document and compares.", ""]
    files: list[Path] = []
    head = None
    limits = LIMITS
    if not sessions:
        out += ["## Quality and cost on SmolLM2-135M-Instruct", "", "Not run yet.", ""]
    else:
        merged = load_folders(sessions)
        session, runs = merged_session(merged["sessions"]), merged["runs"]
        tasks = [t for t in (session.get("tasks") or {}) if any(r["task"] == t for r in runs if r["method"] != "base")]
        out += ["## What was run", "", setup_section(session, runs, merged["sessions"]), "",
                "## Cells", "", cells_section(runs), "",
                "## Leaderboards", "", _md(leaderboard_tables(session, runs)), ""]
        fidelity = merge_tables(runs)
        out += ["## Merge fidelity", "", _md(fidelity) if fidelity else "No cell merged.", ""]
        lat = [t for task, lats in run_latencies(runs).items() for t in latency_tables(lats, title=f"{task} — ")]
        out += ["## Latency", "", _md(lat) if lat else "No cell timed latency.", ""]
        from peftbench.report.plots import pareto_plots

        plot_out.mkdir(parents=True, exist_ok=True)
        for old in plot_out.glob("*.png"):
            old.unlink()
        files = pareto_plots(session, runs, merged["latency"], plot_out, formats=("png",))
        out += ["## Pareto plots", ""] + [f"![{p.stem}]({_rel(plots / p.name, doc.parent)})" for p in sorted(files)] + [""]
        verdicts = check(runs, merged["latency"], tasks=session.get("tasks"))
        out += ["## Claims", "", claims_intro(verdicts, session.get("tasks") or {}),
                "", _md(claims_tables(verdicts)) if verdicts else "No claim can be measured.", ""]
        head = headline(export_rows(session, runs), tasks, runs, uninformative(runs, session.get("tasks") or {}))
        flags = shared_flags(runs)
        if flags:
            limits += ("- **Cost columns measured beside other work.** Cells marked "
                       f"{flags} ran while other sessions shared the GPU or "
                       "the host (the sessions ran side by side to fit the device time): their training time, tokens/s "
                       "and latency are not the method's alone, and the claims built on time or latency say "
                       "'timing suspect'. Scores, trainable parameters, artifact sizes and each process's peak memory "
                       "are unaffected. docs/performance.md and docs/latency.md hold the dedicated measurements.\n")
        limits += lossy_merge_note(runs)
    out += ["## Cost at 8B scale", "", shape_section(shape), "",
            "## What these numbers do and do not show", "", limits]
    return "\n".join(out).rstrip() + "\n", head, files


def claims_intro(verdicts: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> str:
    """What the claims table rests on: the intervals' procedure, and each task excluded as uninformative (no
    method's 95 % CI clears its chance or majority baseline) with the task's own description and the reason."""
    text = ("Each claim's 95 % CI is the hierarchical bootstrap over seeds and test examples described in "
            "[statistics.md](statistics.md), the same engine as the leaderboards' intervals; the claims and their "
            "sources are in [claims.md](claims.md).")
    excluded: dict[str, str] = {}
    for v in verdicts:
        if v["verdict"].startswith("excluded (uninformative: "):
            excluded.setdefault(v["task"], v["verdict"][len("excluded (uninformative: "):-1])
    if not excluded:
        return text
    names = " and ".join(f"`{t}`" for t in excluded)
    text += (f" {names} {'is' if len(excluded) == 1 else 'are'} uninformative on this model: their score claims "
             "are *excluded* and decide no claim, whatever their figures, since no method is shown to do "
             "better than a fixed guess:\n")
    for task, why in excluded.items():
        about = re.split(r"[.:] ", (tasks.get(task) or {}).get("description") or "")[0].rstrip(".")  # 1st clause
        text += f"\n- `{task}`{f' ({about})' if about else ''}: {why}."
    return text


def _rel(p: Path, start: Path = ROOT) -> str:
    try:
        return str(p.resolve().relative_to(start.resolve()))
    except ValueError:
        import os

        return os.path.relpath(p.resolve(), start.resolve())


def with_headline(readme: str, block: str) -> str:
    """``readme`` with the text between the headline markers replaced by ``block`` (markers kept)."""
    a, b = readme.find(BEGIN), readme.find(END)
    if a < 0 or b < a:
        raise SystemExit(f"README: no {BEGIN} ... {END} block to fill")
    return readme[:a + len(BEGIN)] + "\n" + block + "\n" + readme[b:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=ROOT / "results/reference")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs/results.md")
    ap.add_argument("--plots", type=Path, default=ROOT / "docs/results/reference-plots")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import tempfile

    from peftbench.errors import PeftbenchError

    with tempfile.TemporaryDirectory(prefix="pb-plots-") as aside:
        try:
            text, head, files = render(args.reference, args.plots, args.doc,
                                       plot_out=Path(aside) if args.check else None)
        except PeftbenchError as e:  # e.g. a result file changed after its session wrote it
            print(f"render_results: {e}", file=sys.stderr)
            return 2
        missing = [p.name for p in files if not (args.plots / p.name).is_file()] if args.check else []
    readme = args.readme.read_text() if args.readme.is_file() else None
    new_readme = with_headline(readme, head) if head is not None and readme is not None and BEGIN in readme else readme
    if args.check:
        stale = [str(args.doc)] if not args.doc.is_file() or args.doc.read_text() != text else []
        stale += [str(args.readme)] if new_readme != readme else []
        stale += [f"{args.plots / name} (missing)" for name in missing]
        print("stale: " + ", ".join(stale) if stale else "current")
        return 1 if stale else 0
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)
    if new_readme != readme:
        args.readme.write_text(new_readme)
    print(f"wrote {args.doc} and {len(files)} plots" + (f"; {args.readme} headline" if new_readme != readme else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
