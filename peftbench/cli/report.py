"""``peftbench report`` and ``peftbench claims``: render saved sessions, and check the folklore against them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from peftbench.cli import flags
from peftbench.cli.output import print_gaps, print_json, print_tables, show_folder, stderr_console
from peftbench.errors import UsageError, did_you_mean

ALLOW_MIXED = click.option("--allow-mixed", is_flag=True,
                           help="merge folders of different base models or task versions")


@click.command()
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "latex", "csv", "json"]), default="table",
              show_default=True, help="table (terminal), markdown, latex (booktabs), csv or json")
@click.option("--markdown", is_flag=True, help="same as --format markdown")
@click.option("--json", "as_json", is_flag=True, help="same as --format json (with one folder: its raw files)")
@click.option("--tasks", "only_tasks", help="only these tasks (comma-separated)")
@click.option("--methods", "only_methods", help="only these methods (comma-separated; base is kept)")
@ALLOW_MIXED
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path),
              help="also write Pareto plots (score vs parameters, memory, time, latency; PNG and SVG) here")
@click.option("--metric", help="rank and compare by this metric (e.g. acc_norm) instead of each task's own")
@click.option("--columns", help="csv/json: only these columns (comma-separated; see docs/results-schema.md)")
def report(directories, fmt, markdown, as_json, only_tasks, only_methods, allow_mixed, plots_dir, metric, columns):
    """Render saved sessions: leaderboards and latency tables. Several folders (e.g. sessions made in
    separate GPU calls) are merged; folders of different base models or task versions are refused unless
    --allow-mixed (latency tables then stay one per model). Plain files among DIRECTORIES are skipped. Cells without a finished result are listed under the tables. Exit 0: every file verifies
    and every planned cell finished; 1: some cell has no finished result (missing, cancelled, failed) or the
    session did not end; 2: a file does not verify (missing, changed, damaged, from another session)."""
    fmt = "markdown" if markdown else "json" if as_json else fmt
    directories = _folders_only(directories)
    one_folder_as_run_shows_it = len(directories) == 1 and (
        fmt in ("table", "markdown") and not (only_tasks or only_methods or plots_dir or metric)
        or fmt == "json" and as_json)
    if one_folder_as_run_shows_it:
        if show_folder(directories[0], fmt == "json", fmt == "markdown", gaps=True):
            sys.exit(1)
        return
    from peftbench.report.folders import load_folders

    merged = load_folders(list(directories), allow_mixed=allow_mixed)
    session, runs = _selection(merged, only_tasks, only_methods, metric)
    model = (session.get("model") or {}).get("source", "")
    if plots_dir:
        from peftbench.report.plots import pareto_plots

        files = pareto_plots(session, runs, merged["latency_by_model"].get(model) or merged["latency"], Path(plots_dir))
        stderr_console().print(f"{len(files)} plot files in {plots_dir}")
    if fmt in ("csv", "json", "latex"):
        _export(fmt, session, runs, columns, model, folders=[p for p, _ in merged["sessions"]], gaps=merged["gaps"])
        print_gaps(merged["gaps"], err=True)
        _exit_on_gaps(merged["gaps"])
        return
    from peftbench.report.latency_table import latency_tables
    from peftbench.report.leaderboard_table import leaderboard_tables
    from peftbench.report.serving_claims import PREFIX
    from peftbench.report.serving_table import serving_tables

    tables = leaderboard_tables(session, runs) if runs else []
    for lat_model, latency in merged["latency_by_model"].items():  # --allow-mixed: each model's apart
        served = {m[len(PREFIX):]: {"latency": lat} for m, lat in latency.items() if lat.get("serving")}
        timed = {m: lat for m, lat in latency.items() if not lat.get("serving")}
        tables += latency_tables(timed, title=f"{lat_model} — ") if timed else []
        tables += serving_tables({}, served, title=f"{lat_model} — ") if served else []  # serve-bench's own tables
    print_tables(tables, markdown=fmt == "markdown")
    print_gaps(merged["gaps"], markdown=fmt == "markdown")
    _exit_on_gaps(merged["gaps"])


def _exit_on_gaps(gaps: list[Any]) -> None:
    if gaps:
        sys.exit(1)


def _selection(merged: dict[str, Any], only_tasks: str | None, only_methods: str | None,
               metric: str | None) -> tuple[dict[str, Any], list[dict]]:
    """The merged session and its runs, narrowed to --tasks and --methods, ranked by --metric."""
    from peftbench.report.folders import merged_session

    runs = merged["runs"]
    if only_tasks:
        keep = set(_known(flags.comma_list(only_tasks, "--tasks"), "task", "--tasks", merged))
        runs = [r for r in runs if r["task"] in keep]
    if only_methods:
        keep = set(_known(flags.comma_list(only_methods, "--methods"), "method", "--methods", merged)) | {"base"}
        runs = [r for r in runs if r["method"] in keep]
    session = merged_session(merged["sessions"])
    if only_tasks:
        keep = set(flags.comma_list(only_tasks, "--tasks"))
        session["tasks"] = {k: v for k, v in (session.get("tasks") or {}).items() if k in keep}
    if metric:
        known = {m for r in runs for m in ((r.get("eval") or {}).get("metrics") or {})}
        if metric not in known:
            raise UsageError(f"--metric {metric!r}: these runs record {', '.join(sorted(known)) or 'no metrics'}.")
        session["tasks"] = {k: {**v, "metric": metric} for k, v in (session.get("tasks") or {}).items()}
    return session, runs


def _known(names: list[str], kind: str, flag: str, merged: dict[str, Any]) -> list[str]:
    """``names``, each a task (or method) the folders ran or planned; else a UsageError listing those."""
    from peftbench.results.store import planned_cells

    keys = [r["key"] for r in merged["runs"]] + [k for _, s in merged["sessions"] for k in planned_cells(s)]
    have = sorted({(k.split("--", 1)[1].rsplit("--seed", 1)[0] if kind == "task" else k.split("--", 1)[0])
                   for k in keys if "--" in k})
    for name in names:
        if name not in have:
            where = "the folder has" if len(merged["sessions"]) == 1 else "the folders have"
            raise UsageError(f"Unknown {kind} {name!r} ({flag}).{did_you_mean(name, have)} "
                             f"{where[0].upper()}{where[1:]}: {', '.join(have) or 'none'}.")
    return names


def _export(fmt: str, session: dict[str, Any], runs: list[dict], columns: str | None, model: str,
            folders: list[Path], gaps: list[Any]) -> None:
    """One row per run as csv, json or a LaTeX table; csv and json only the --columns asked for."""
    from peftbench.report.export import export_rows, to_csv, to_latex

    records = export_rows(session, runs)
    if columns:
        keep = flags.comma_list(columns, "--columns")
        unknown = [c for c in keep if not any(c in r for r in records)]
        if unknown:
            raise UsageError(f"--columns: no column {', '.join(unknown)}; columns: {', '.join(records[0]) if records else '-'}.")
        if fmt == "latex":
            raise UsageError("--columns applies to csv and json; the LaTeX table has a fixed layout.")
        records = [{c: r.get(c) for c in keep} for r in records]
    if fmt == "csv":
        click.echo(to_csv(records), nl=False)
    elif fmt == "latex":
        click.echo(to_latex(records, model))
    else:
        extra = {"gaps": [g.as_json() for g in gaps]} if gaps else {}
        print_json({"folders": [str(p) for p in folders], "model": model, "rows": records, **extra})


@click.command()
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--allow-mixed", is_flag=True, help="check folders that ran different versions of a task on the same "
                                                  "base model together (different models are always kept apart)")
def claims(directories, fmt, allow_mixed):
    """Check the folklore (LoRA reaches 97-99 % of full fine-tuning, merged LoRA adds no latency, ...)
    against results: each claim's measured value, its 95 % CI and a verdict, per task, in one table per base
    model (folders of several models are grouped, never mixed). A score claim on a task where no method beats
    the majority class is excluded; a timing measured beside other processes, or in a file that does not say,
    decides nothing. Plain files among DIRECTORIES (a README.md a glob picked up) are skipped. The scale claims
    no GPU here can measure (70B, 13B) follow in a table of their own, checked by calculation (peftbench
    estimate): the same whatever the folders, and never counted among a model's measured verdicts."""
    from peftbench.report.calculated import check_by_calculation
    from peftbench.report.claims import check_models
    from peftbench.report.claims_table import claims_tables
    from peftbench.report.folders import load_folders, merged_session, session_model

    merged = load_folders(_folders_only(directories), allow_mixed=allow_mixed, by_model=True)
    tasks = {m: merged_session([(p, s) for p, s in merged["sessions"] if session_model(s) == m]).get("tasks") or {}
             for m in {session_model(s) for _, s in merged["sessions"]}}
    measured = check_models(merged["runs"], merged["latency_by_model"], tasks_by_model=tasks)
    if not measured:  # folders that measure nothing are a mistake, whatever the calculation says
        print_gaps(merged["gaps"], err=True)
        raise UsageError("no claim can be measured from these folders: they need runs of lora/full/base (scores, "
                         "memory, time, artifacts), a `peftbench latency` or a `peftbench serve-bench` session. "
                         "The scale claims by calculation need no folder: `peftbench estimate --claims`.")
    results = measured + check_by_calculation()
    if fmt == "json":
        print_json(results)
        print_gaps(merged["gaps"], err=True)
    else:
        print_tables(claims_tables(results), markdown=fmt == "markdown")
        print_gaps(merged["gaps"], markdown=fmt == "markdown")
    _exit_on_gaps(merged["gaps"])


def _folders_only(paths: tuple[Path, ...]) -> list[Path]:
    """The folders among ``paths``: a plain file (the README.md of ``results/reference/*``) is skipped with a
    note on stderr; nothing left is a usage error."""
    folders = [p for p in paths if not p.is_file()]
    for p in paths:
        if p.is_file():
            stderr_console().print(f"{p}: a file, not a results folder: skipped")
    if not folders:
        raise UsageError(f"{', '.join(map(str, paths))}: no results folder among these (each is a file).")
    return folders
