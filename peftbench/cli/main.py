"""The ``peftbench`` command line: thin commands over the library. Tables and ``--json`` go to stdout,
progress and messages to stderr. Exit codes: 0 every cell ok (or skipped), 1 some cell failed, 2 usage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from peftbench.errors import PeftbenchError, UsageError

_HOST = None
_HOST_KEY: tuple | None = None


def host():
    """The plugin host for this command line (built once per distinct --plugin/--disable-plugin/--strict-plugins
    set, so in-process calls with other plugin options get their own)."""
    global _HOST, _HOST_KEY
    key = (tuple(_argv_values("--plugin")), tuple(_argv_values("--disable-plugin")), "--strict-plugins" in sys.argv)
    if _HOST is None or key != _HOST_KEY:
        from peftbench.api.plugins import make_plugin_manager

        _HOST = make_plugin_manager(extra_plugins=list(key[0]), disable=list(key[1]), strict=True if key[2] else None)
        _HOST_KEY = key
    return _HOST


def _argv_values(flag: str) -> list[str]:
    out, args = [], sys.argv[1:]
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _csv(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UsageError(f"{what} is empty; give a comma-separated list.")
    return items


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in _csv(value, "--seeds")]
    except ValueError:
        raise UsageError(f"--seeds {value!r}: seeds must be integers, comma-separated (e.g. --seeds 0,1,2).") from None
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {value!r} repeats a seed.")
    return seeds


def _duration(value: str, flag: str) -> float:
    """Seconds from '540', '540s', '9m', '1h30m' or '1.5h'."""
    import re

    text = value.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or parts is None or not any(parts.groups()):
        raise UsageError(f"{flag} {value!r}: not a duration; give seconds (540) or hours, minutes and seconds "
                         "(9m, 1h30m, 1.5h).")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError(f"{flag} {value!r}: must be longer than 0 s.")
    return seconds


def _shard(value: str) -> tuple[int, int]:
    """'K/N' (1-based, as people count: 1/2 and 2/2) -> (K - 1, N)."""
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: give K/N, this process's share of N (e.g. --shard 1/2 in one process "
                         "and --shard 2/2 in another).") from None
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {value!r}: K must be 1 to N (N >= 1).")
    return k - 1, n


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, help="also load this plugin module (repeatable)")
@click.option("--disable-plugin", "disabled", multiple=True, help="do not load this plugin (repeatable)")
@click.option("--strict-plugins", is_flag=True, help="re-raise plugin load errors (for plugin development)")
@click.version_option(package_name="peftbench")
def cli(plugins, disabled, strict_plugins):
    """Measure what LoRA, QLoRA, bottleneck adapters and full fine-tuning buy and cost."""


@cli.command()
@click.option("--methods", default="lora,adapter,full", show_default=True,
              help="comma-separated method names; NAME@LABEL runs a variant of NAME with its own options "
                   "(--set NAME@LABEL.KEY=VALUE), e.g. adapter@pfeiffer")
@click.option("--tasks", default="quickstart", show_default=True, help="comma-separated task names")
@click.option("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", show_default=True,
              help="hub id, local folder, .gguf file, or tiny:llama")
@click.option("--seeds", default="0", show_default=True, help="comma-separated integer seeds")
@click.option("--output", type=click.Path(path_type=Path), help="results folder [default: peftbench-results/<id>]")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="training option (steps=200, lr=1e-4, ...) or METHOD.KEY=VALUE (lora.r=8); repeatable")
@click.option("--resume", is_flag=True, help="continue the session in --output, skipping cells already ok")
@click.option("--tasks-dir", "tasks_dirs", multiple=True, type=click.Path(path_type=Path),
              help="extra folder of task definitions (repeatable)")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="local data folder, laid out like the shared one (sst2/, boolq/, ...) [env: PEFTBENCH_DATA_DIR]; "
                   "else tasks read their hub dataset")
@click.option("--retention", metavar="TASKS",
              help="after training, also score these tasks (comma-separated; 'none' for none) and report the change "
                   "vs the base model [default: each task's own list]")
@click.option("--limit", type=int, help="score at most N examples per task (quick runs; shown on the leaderboard)")
@click.option("--num-fewshot", type=int, help="few-shot examples in the scoring prompt (default 0)")
@click.option("--keep-artifacts", is_flag=True, help="keep each method's saved artifact under OUTPUT/artifacts")
@click.option("--no-base", is_flag=True, help="skip scoring the untouched base model")
@click.option("--json", "as_json", is_flag=True, help="print the session and runs as JSON instead of tables")
@click.option("--naive", is_flag=True, help="train with the plain loop (padded batches, full-logit loss, no "
              "compile) instead of the fast one; the same as --set loop=naive")
@click.option("--time-budget", metavar="DURATION",
              help="end within this time (540, 9m, 1h30m): a cell that would not finish in what is left, by how "
                   "long the same method's cells took, is not started (a shorter one may be) and stays for "
                   "--resume; for machines and jobs with a time limit")
@click.option("--shard", metavar="K/N",
              help="run only every N-th cell of the plan, starting at the K-th, in --output, which N processes "
                   "(K = 1..N, e.g. one per GPU) fill together; cells already ok are kept, as with --resume")
def run(methods, tasks, model, seeds, output, device, sets, resume, tasks_dirs, data_dir, retention, limit,
        num_fewshot, keep_artifacts, no_base, as_json, naive, time_budget, shard):
    """Train, score and time every method on every task and seed."""
    from peftbench.session.runner import BUDGET_REASON, Session, SessionConfig
    from peftbench.system.progress import RichProgress

    sets = list(sets) + (["loop=naive"] if naive else [])
    for flag, key, value in (("--limit", "limit", limit), ("--num-fewshot", "num_fewshot", num_fewshot)):
        if value is not None:
            if value < 0:
                raise UsageError(f"{flag} {value}: must be 0 or a positive number of examples.")
            sets.append(f"{key}={value}")
    keep = None
    if retention is not None:
        keep = [] if retention.strip().lower() in ("none", "") else _csv(retention, "--retention")
    config = SessionConfig(methods=_csv(methods, "--methods"), tasks=_csv(tasks, "--tasks"), seeds=_seeds(seeds),
                           model=model, device=device, output=output, sets=sets, resume=resume,
                           tasks_dirs=list(tasks_dirs), keep_artifacts=keep_artifacts, base_row=not no_base,
                           data_dir=data_dir, retention=keep,
                           time_budget_s=None if time_budget is None else _duration(time_budget, "--time-budget"),
                           shard=None if shard is None else _shard(shard))
    console = stderr_console()
    session = Session(config, host=host(), progress=RichProgress(console))
    session.plan()
    console.print(f"peftbench session {session.id}: {len(session.cells)} cells on {session.device}; "
                  f"results in {session.output}")
    results = session.run()
    try:
        _show(session.output, as_json)
    except UsageError as e:
        if config.shard is None:
            raise
        # another shard may have written a cell since this one recorded the folder: its results are safe, and
        # the last shard to end records every file
        console.print(f"[yellow]The folder is still being written by another shard ({e}); run peftbench report "
                      f"{session.output} when every shard has ended.[/]")
    later = [r for r in results if r["status"] == "cancelled" and str(r.get("reason") or "").startswith(BUDGET_REASON)]
    failed = [r for r in results if r["status"] in ("error", "oom", "cancelled") and r not in later]
    if later:
        console.print(f"[yellow]{len(later)} cell(s) left for later by --time-budget[/] (run the same command with "
                      "--resume to continue): " + ", ".join(r["key"] for r in later))
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed:[/] " + ", ".join(r["key"] for r in failed))
    if failed or later:
        sys.exit(1)


def _show(output: Path, as_json: bool, markdown: bool = False) -> None:
    from rich.console import Console

    from peftbench.report.folders import folder_data, folder_tables
    from peftbench.report.markdown import render_markdown

    if as_json:
        click.echo(json.dumps(folder_data(Path(output)), indent=2, default=str))
        return
    tables, failed = folder_tables(Path(output))
    if markdown:
        click.echo(render_markdown(tables))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=220)  # files and pipes get the whole table
        for table in tables:
            console.print(table)
    for m, r in failed.items():
        click.echo(f"{m}: {r.get('status')}: {(r.get('error') or {}).get('message', '')[:300]}")


@cli.command()
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "latex", "csv", "json"]), default="table",
              show_default=True, help="table (terminal), markdown, latex (booktabs), csv or json")
@click.option("--markdown", is_flag=True, help="same as --format markdown")
@click.option("--json", "as_json", is_flag=True, help="same as --format json (with one folder: its raw files)")
@click.option("--tasks", "only_tasks", help="only these tasks (comma-separated)")
@click.option("--methods", "only_methods", help="only these methods (comma-separated; base is kept)")
@click.option("--allow-mixed", is_flag=True, help="merge folders of different base models or task versions")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path),
              help="also write Pareto plots (score vs parameters, memory, time, latency; PNG and SVG) here")
@click.option("--metric", help="rank and compare by this metric (e.g. acc_norm) instead of each task's own")
@click.option("--columns", help="csv/json: only these columns (comma-separated; see docs/results-schema.md)")
def report(directories, fmt, markdown, as_json, only_tasks, only_methods, allow_mixed, plots_dir, metric, columns):
    """Render saved sessions: leaderboards and latency tables. Several folders (e.g. sessions made in
    separate GPU calls) are merged; folders of different base models or task versions are refused unless
    --allow-mixed."""
    fmt = "markdown" if markdown else "json" if as_json else fmt
    if len(directories) == 1 and not (only_tasks or only_methods or plots_dir or metric) and fmt in (
            "table", "markdown") or (
            len(directories) == 1 and fmt == "json" and as_json):
        _show(directories[0], fmt == "json", fmt == "markdown")
        return
    from peftbench.report.export import export_rows, to_csv, to_latex
    from peftbench.report.folders import load_folders, merged_session
    from peftbench.report.latency_table import latency_tables
    from peftbench.report.leaderboard_table import leaderboard_tables
    from peftbench.report.markdown import render_markdown

    merged = load_folders(list(directories), allow_mixed=allow_mixed)
    runs = merged["runs"]
    if only_tasks:
        keep = set(_csv(only_tasks, "--tasks"))
        runs = [r for r in runs if r["task"] in keep]
    if only_methods:
        keep = set(_csv(only_methods, "--methods")) | {"base"}
        runs = [r for r in runs if r["method"] in keep]
    session = merged_session(merged["sessions"])
    if only_tasks:
        session["tasks"] = {k: v for k, v in (session.get("tasks") or {}).items() if k in set(_csv(only_tasks, "--tasks"))}
    if metric:
        known = {m for r in runs for m in ((r.get("eval") or {}).get("metrics") or {})}
        if metric not in known:
            raise UsageError(f"--metric {metric!r}: these runs record {', '.join(sorted(known)) or 'no metrics'}.")
        session["tasks"] = {k: {**v, "metric": metric} for k, v in (session.get("tasks") or {}).items()}
    model = (session.get("model") or {}).get("source", "")
    if plots_dir:
        from peftbench.report.plots import pareto_plots

        files = pareto_plots(session, runs, merged["latency"], Path(plots_dir))
        stderr_console().print(f"{len(files)} plot files in {plots_dir}")
    if fmt in ("csv", "json", "latex"):
        records = export_rows(session, runs)
        if columns:
            keep = _csv(columns, "--columns")
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
            click.echo(json.dumps({"folders": [str(p) for p, _ in merged["sessions"]], "model": model,
                                   "rows": records}, indent=2, default=str))
        return
    tables = leaderboard_tables(session, runs) if runs else []
    if merged["latency"]:
        tables += latency_tables(merged["latency"], title=f"{model} — " if model else "")
    if fmt == "markdown":
        click.echo(render_markdown(tables))
    else:
        from rich.console import Console

        console = Console() if sys.stdout.isatty() else Console(width=220)
        for t in tables:
            console.print(t)


@cli.command()
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--allow-mixed", is_flag=True, help="merge folders of different base models or task versions")
def claims(directories, fmt, allow_mixed):
    """Check the folklore (LoRA reaches 97-99 % of full fine-tuning, merged LoRA adds no latency, ...)
    against results: each claim's measured value, its 95 % CI and a verdict, per task."""
    from peftbench.report.claims import check
    from peftbench.report.claims_table import claims_table
    from peftbench.report.folders import load_folders
    from peftbench.report.markdown import render_markdown

    merged = load_folders(list(directories), allow_mixed=allow_mixed)
    results = check(merged["runs"], merged["latency"])
    if not results:
        raise UsageError("no claim can be measured from these folders: they need runs of lora/full/base (scores, "
                         "memory, time, artifacts) and/or a `peftbench latency` session.")
    if fmt == "json":
        click.echo(json.dumps(results, indent=2, default=str))
    elif fmt == "markdown":
        click.echo(render_markdown([claims_table(results)]))
    else:
        from rich.console import Console

        (Console() if sys.stdout.isatty() else Console(width=220)).print(claims_table(results))


@cli.command()
@click.option("--methods", default="lora,qlora,adapter,full", show_default=True,
              help="comma-separated method names; NAME@LABEL: a variant with its own options (--set NAME@LABEL.KEY=VALUE)")
@click.option("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", show_default=True,
              help="hub id, local folder, .gguf file, or tiny:llama")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="comma-separated batch sizes")
@click.option("--prompt-lengths", default="128,1024", show_default=True, help="comma-separated prompt lengths")
@click.option("--new-tokens", default=64, show_default=True, type=int, help="tokens generated per round")
@click.option("--regimes", default="eager,static", show_default=True,
              help="eager (generate, dynamic cache) and/or static (static cache; CUDA graph on GPU)")
@click.option("--stack", default="2,4", show_default=True, help="stacked-module counts to time ('none': none)")
@click.option("--rounds", default=5, show_default=True, type=int, help="timed rounds per mode and shape")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "bf16", "fp32"]),
              help="weights' dtype while timing (auto: bf16 on CUDA, fp32 on CPU)")
@click.option("--set", "sets", multiple=True, metavar="METHOD.KEY=VALUE", help="method option (lora.r=8); repeatable")
@click.option("--output", type=click.Path(path_type=Path), help="results folder [default: peftbench-results/latency-<time>]")
@click.option("--resume", is_flag=True, help="keep the methods already timed in --output; time the rest")
def latency(methods, model, device, batch_sizes, prompt_lengths, new_tokens, regimes, stack, rounds, dtype, sets,
            output, resume):
    """Time inference of every method (untrained: latency depends on shapes, not values) over a grid of
    batch sizes x prompt lengths, modes base / unmerged / merged / stacked, eager and static regimes."""
    from peftbench.session.latency_only import LatencySession, LatencySessionConfig

    grid = {"batch_sizes": _ints(batch_sizes, "--batch-sizes"), "prompt_lengths": _ints(prompt_lengths, "--prompt-lengths"),
            "new_tokens": new_tokens, "regimes": _csv(regimes, "--regimes"), "rounds": rounds, "dtype": dtype,
            "stack": [] if stack.strip().lower() in ("none", "") else _ints(stack, "--stack")}
    console = stderr_console()
    session = LatencySession(LatencySessionConfig(methods=_csv(methods, "--methods"), model=model, device=device,
                                                  output=output, grid=grid, sets=list(sets), resume=resume),
                             host=host(), say=lambda m: console.print(m))
    session.plan()
    console.print(f"peftbench latency {session.id}: {', '.join(session.methods)} on {session.device}; results in "
                  f"{session.output}")
    results = session.run()
    _show(session.output, False)
    if any(r["status"] != "ok" for r in results):
        sys.exit(1)


def _ints(value: str, what: str) -> list[int]:
    out = []
    for item in _csv(value, what):
        try:
            out.append(int(item))
        except ValueError:
            raise UsageError(f"{what} {value!r}: {item!r} is not a whole number.") from None
    return out


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]),
              help="check availability for this device")
def methods(as_json, device):
    """List methods: plugin, capabilities, availability, options."""
    from peftbench.cli.catalog import describe_methods

    rows = describe_methods(host(), device)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="methods", title_justify="left")
    for col in ("name", "plugin", "capabilities", "available", "options"):
        t.add_column(col)
    for r in rows:
        caps = ", ".join(k for k, v in (r["capabilities"] or {}).items() if v is True)
        opts = "\n".join(f"{o['name']}={o['default']}  {o['help']}" for o in r["options"])
        avail = "yes" if r["available"] else f"no: {r['reason']}"
        t.add_row(r["name"] + (f"\n({', '.join(r['aliases'])})" if r["aliases"] else ""), r["plugin"], caps, avail, opts)
    Console().print(t)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--markdown", is_flag=True, help="print a Markdown table (docs/training-options.md)")
def options(as_json, markdown):
    """List the shared training options (--set KEY=VALUE): type, default and help."""
    from peftbench.session.options import describe_options, options_markdown

    rows = [{k: v for k, v in r.items() if k != "group"} for r in describe_options()]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if markdown:
        click.echo(options_markdown(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="training options (--set KEY=VALUE; METHOD.KEY=VALUE for a method's own: peftbench methods)",
              title_justify="left")
    for col in ("option", "type", "default", "help"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["type"], str(r["default"]), r["help"])
    Console().print(t)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--tasks-dir", "tasks_dirs", multiple=True, type=click.Path(path_type=Path),
              help="extra folder of task definitions (repeatable)")
@click.option("--data-dir", type=click.Path(path_type=Path), help="local data folder [env: PEFTBENCH_DATA_DIR]")
def tasks(as_json, tasks_dirs, data_dir):
    """List tasks: what each trains and scores, where its data comes from, sizes, and whether it is here."""
    from peftbench.session.runner import Session, SessionConfig
    from peftbench.tasks.data import availability, count_rows, data_root

    found = Session(SessionConfig(methods=[], tasks_dirs=list(tasks_dirs)), host=host()).all_tasks()
    root = data_root(data_dir)
    rows = []
    for t in found.values():
        row = t.describe()
        if t.spec is None:
            row.update(available=True, source=f"generated ({t.data['generate']})", sizes=None)
        else:
            ok, source = availability(t.spec, root)
            row.update(available=ok, source=source, sizes=count_rows(t.spec, root))
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="tasks" + (f" (data folder: {root})" if root else " (no --data-dir: hub sources)"),
              title_justify="left")
    for col in ("name", "use", "metric", "data source", "rows", "here", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        sizes = ", ".join(f"{k} {v:,}" for k, v in (r["sizes"] or {}).items()) or "—"
        t.add_row(r["name"], "score only" if r["eval_only"] else "train + score", r["metric"], r["source"], sizes,
                  "[green]yes[/]" if r["available"] else "[red]no[/]", r["description"].split(". ")[0])
    Console().print(t)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def plugins(as_json):
    """List plugins: distribution, version, hooks, methods, load failures."""
    from peftbench.api.plugins import describe_plugins

    rows = describe_plugins(host())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="plugins", title_justify="left")
    for col in ("name", "distribution", "status", "hooks", "methods"):
        t.add_column(col)
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "—"
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        t.add_row(r["name"], dist, status, ", ".join(r["hooks"]), ", ".join(r["methods"]))
    Console().print(t)


def _quiet_libraries() -> None:
    """Library deprecation chatter is not for peftbench's users; real errors still surface."""
    import logging
    import os
    import warnings

    for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TQDM_DISABLE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    for name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops", "transformers.modeling_utils", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        h = host()
        for impl in h.hook.register_commands.get_hookimpls():
            impl.function(cli=cli)
        cli.main(args=sys.argv[1:], prog_name="peftbench", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except PeftbenchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
