"""``peftbench run``: train, score and time every method on every task and seed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from peftbench.cli import flags
from peftbench.cli.output import show_folder, stderr_console
from peftbench.errors import UsageError


@click.command()
@click.option("--methods", default="lora,adapter,full", show_default=True,
              help="comma-separated method names; NAME@LABEL runs a variant of NAME with its own options "
                   "(--set NAME@LABEL.KEY=VALUE), e.g. adapter@pfeiffer")
@click.option("--tasks", default="quickstart", show_default=True, help="comma-separated task names")
@click.option("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", show_default=True,
              help="hub id, local folder, .gguf file, or tiny:llama")
@click.option("--seeds", default="0", show_default=True, help="comma-separated integer seeds")
@click.option("--output", type=click.Path(), help="results folder [default: peftbench-results/<id>]")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="training option (steps=200, lr=1e-4, ...) or METHOD.KEY=VALUE (lora.r=8); repeatable")
@click.option("--tune", metavar="KEYS",
              help="tune these options on each task's validation split first (comma-separated: lr, lora.r): each "
                   "grid point is a cell (first seed, scored on validation); the best per method and task trains "
                   "the --seeds, scored on test")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="values --tune tries for KEY (repeatable) [default: the method's grid; lr: x0.1, 0.3, 1, 3, 10 "
                   "the cell's learning rate]")
@click.option("--resume", is_flag=True, help="continue the session in --output with the same plan (cells may be "
              "added), keeping the cells already ok whose run files verify against session.json")
@click.option("--restart", is_flag=True, help="start over in an --output that holds a session: its files are moved "
              "to OUTPUT/.restarted/ and no earlier cell is kept (for a changed plan)")
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
@click.option("--jobs", default="auto", show_default=True, metavar="N|auto",
              help="cells at once, in worker processes spread over the visible GPUs (each pinned to its GPU and that "
                   "GPU's NUMA-node CPUs); their latency and training throughput are then measured alone. auto: 1 "
                   "on the CPU; on CUDA, per GPU, up to 4 cells of a small model as fit in half its free memory, "
                   "else 1 (docs/usage.md)")
@click.option("--nproc", type=int, metavar="N",
              help="train each cell sharded (FSDP2) over N processes of this host: runs this command again under "
                   "torchrun (one GPU each on CUDA, gloo on the CPU); rank 0 scores, times and writes "
                   "(docs/distributed.md)")
@click.option("--dist-timeout", type=float, default=600.0, show_default=True, metavar="SECONDS",
              help="with several processes: how long a collective waits for another process, so a failed process "
                   "stops the others within this time")
@click.pass_obj
def run(host, as_json, jobs, nproc, dist_timeout, **flag_values):
    """Train, score and time every method on every task and seed."""
    from peftbench.cli.launch import relaunch_under_torchrun

    if nproc is not None:
        relaunch_under_torchrun(nproc)  # (returns under torchrun itself, or for one process)
    from peftbench.train.distributed import join_world, leave_world

    if dist_timeout <= 0:
        raise UsageError(f"--dist-timeout {dist_timeout:g}: must be more than 0 seconds.")
    world = join_world(None if flag_values["device"] == "auto" else flag_values["device"], timeout_s=dist_timeout)
    try:
        _run(host, as_json, jobs, world, flag_values)
    finally:
        leave_world(world)


def _run(host, as_json, jobs, world, flag_values):
    from rich.markup import escape

    from peftbench.session.runner import Session
    from peftbench.system.progress import NullProgress, RichProgress

    config = session_config(**flag_values)
    console = stderr_console()
    jobs = flags.jobs(jobs)
    if world.size > 1 and jobs not in ("auto", 1) and world.main:
        console.print(f"[yellow]--jobs {jobs}: one cell at a time with {world.size} processes training each[/]")
    jobs = 1 if world.size > 1 else jobs
    progress = RichProgress(console) if world.main else NullProgress()  # the other ranks are quiet
    session = Session(config, host=host, progress=progress, jobs=jobs, world=world)
    for failure in host.failures if world.main else ():  # a broken plugin does not stop the run, but say so
        console.print(f"[yellow]warning: {escape(failure.message)}[/]", highlight=False)
    plan = session.plan()
    grid = sum(1 for c in plan.cells if c.tuning is not None and c.tuning.role == "grid")
    tuned = f" ({grid} of them tuning grid points, scored on validation)" if grid else ""
    spread = f", each trained by {world.size} processes ({world.backend})" if world.size > 1 else ""
    if world.main:
        console.print(f"peftbench session {plan.session_id}: {len(plan.cells)} cells{tuned} on {plan.device}"
                      f"{spread}; results in {plan.output}")
    results = session.run()
    if not world.main:
        return
    try:
        show_folder(plan.output, as_json)
    except UsageError as e:
        if config.shard is None:
            raise
        # another shard may have written a cell since this one recorded the folder: its results are safe, and
        # the last shard to end records every file
        console.print(f"[yellow]The folder is still being written by another shard ({e}); run peftbench report "
                      f"{plan.output} when every shard has ended.[/]")
    if _report_unfinished(results, console):
        sys.exit(1)


def session_config(methods, tasks, model, seeds, output, device, sets, resume, restart, tasks_dirs, data_dir,
                   retention, limit, num_fewshot, keep_artifacts, no_base, naive, time_budget, shard, tune=None,
                   grid=()):
    """The session the flags ask for."""
    from peftbench.session.runner import SessionConfig

    if output is not None and not output.strip():
        raise UsageError("--output is empty; give a folder for the results (or leave --output out for a new "
                         "folder under peftbench-results/).")
    sets = list(sets) + (["loop=naive"] if naive else [])
    for flag, key, value in (("--limit", "limit", limit), ("--num-fewshot", "num_fewshot", num_fewshot)):
        if value is not None:
            if value < 0:
                raise UsageError(f"{flag} {value}: must be 0 or a positive number of examples.")
            sets.append(f"{key}={value}")
    keep = None
    if retention is not None:
        keep = [] if flags.says_none(retention) else flags.comma_list(retention, "--retention")
    return SessionConfig(methods=flags.comma_list(methods, "--methods"), tasks=flags.comma_list(tasks, "--tasks"),
                         seeds=flags.seeds(seeds), model=model, device=device,
                         output=None if output is None else Path(output), sets=sets, resume=resume, restart=restart,
                         tasks_dirs=list(tasks_dirs), keep_artifacts=keep_artifacts,
                         base_row=not no_base, data_dir=data_dir, retention=keep,
                         time_budget_s=None if time_budget is None else flags.duration(time_budget, "--time-budget"),
                         shard=None if shard is None else flags.shard(shard),
                         tune=[] if tune is None else flags.comma_list(tune, "--tune"), grid=list(grid))


def _report_unfinished(results: list[dict], console) -> bool:
    """Print the cells left for later by --time-budget and those that failed; whether there were any."""
    from peftbench.session.policies import BUDGET_REASON

    later = [r for r in results if r["status"] == "cancelled" and str(r.get("reason") or "").startswith(BUDGET_REASON)]
    failed = [r for r in results if r["status"] in ("error", "oom", "cancelled") and r not in later]
    if later:
        console.print(f"[yellow]{len(later)} cell(s) left for later by --time-budget[/] (run the same command with "
                      "--resume to continue): " + ", ".join(r["key"] for r in later))
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed:[/] " + ", ".join(r["key"] for r in failed))
    return bool(failed or later)
