"""``peftbench serve-bench``: one base model serving K adapters at once, per-row adapters in one batch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from peftbench.cli import flags
from peftbench.cli.output import print_json, print_tables, stderr_console


@click.command("serve-bench")
@click.option("--methods", default="lora,qlora,adapter,full", show_default=True,
              help="comma-separated method names; those that cannot serve per-row adapters are listed with the reason")
@click.option("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", show_default=True,
              help="hub id, local folder, .gguf file, shape:NAME or tiny:llama")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--adapters", default="1,2,4,8,16,32", show_default=True,
              help="K: how many different adapters one batch asks for (rising, from 1); the model holds the largest")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="comma-separated batch sizes")
@click.option("--prompt-lengths", default="128", show_default=True, help="comma-separated prompt lengths")
@click.option("--new-tokens", default=16, show_default=True, type=int, help="tokens generated per round")
@click.option("--rounds", default=5, show_default=True, type=int, help="timed rounds per mode and point")
@click.option("--regimes", default="eager", show_default=True,
              help="eager (generate) and/or static (static cache; a CUDA graph on GPU, which PEFT's per-row path "
                   "cannot be captured in)")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "bf16", "fp32"]),
              help="weights' dtype while timing (auto: bf16 on CUDA, fp32 on CPU)")
@click.option("--set", "sets", multiple=True, metavar="METHOD.KEY=VALUE", help="method option (lora.r=8); repeatable")
@click.option("--output", type=click.Path(path_type=Path), help="results folder [default: peftbench-results/serve-<time>]")
@click.option("--resume", is_flag=True, help="keep the methods and points already timed in --output; time the rest")
@click.option("--show", "show", type=click.Path(path_type=Path), help="time nothing: print the tables of this "
                                                                   "serve-bench folder")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(path_type=Path), help="also draw overhead against K into this .png/.svg")
@click.pass_obj
def serve_bench(host, show, fmt, plot, **flag_values):
    """Time one base model serving K adapters at once: batches whose rows ask for different adapters (PEFT's
    per-row adapter_names) for each K and batch size, against the base model and one merged adapter; the
    time to load, swap and merge an adapter; the memory each extra adapter takes. Each mixed batch is first
    checked against each adapter alone. Adapters are random-initialised (a timing depends on their shapes)."""
    if plot and plot.suffix not in (".png", ".svg"):  # before any timing: a sweep takes minutes
        from peftbench.errors import UsageError

        raise UsageError(f"--plot {plot}: give a file name ending in .png or .svg.")
    if show:
        _show(show, fmt, plot)
        return
    from peftbench.session.serve_bench import ServeSession

    console = stderr_console()
    session = ServeSession(serve_session_config(**flag_values), host=host, say=lambda m: console.print(m))
    session.plan()
    console.print(f"peftbench serve-bench {session.id}: {', '.join(session.methods)} on {session.device}; results in "
                  f"{session.output}")
    results = session.run()
    _show(session.output, fmt, plot)
    if any(r["status"] != "ok" for r in results):
        sys.exit(1)


def _show(folder: Path, fmt: str, plot: Path | None) -> None:
    from peftbench.report.serving_table import serving_tables
    from peftbench.session.serve_bench import load_serving

    session, results = load_serving(folder)
    if fmt == "json":
        print_json({"session": session, "results": results})
    else:
        model = (session.get("model") or {}).get("source", "?")
        device = (session.get("env") or {}).get("gpu") or (session.get("env") or {}).get("device", "?")
        print_tables(serving_tables(session, results, title=f"{model} ({device}) — "), markdown=fmt == "markdown")
    if plot:
        from peftbench.report.serving_plot import serving_plot

        sections = {m: r["latency"] for m, r in results.items() if r.get("latency")}
        serving_plot(sections, plot, title=(session.get("model") or {}).get("source", ""))
        stderr_console().print(f"plot: {plot}")


def serve_session_config(methods, model, device, adapters, batch_sizes, prompt_lengths, new_tokens, rounds, regimes,
                         dtype, sets, output, resume):
    """The serve-bench session the flags ask for."""
    from peftbench.session.serve_bench import ServeSessionConfig

    plan = {"adapters": flags.whole_numbers(adapters, "--adapters"),
            "batch_sizes": flags.whole_numbers(batch_sizes, "--batch-sizes"),
            "prompt_lengths": flags.whole_numbers(prompt_lengths, "--prompt-lengths"),
            "new_tokens": new_tokens, "rounds": rounds, "regimes": flags.comma_list(regimes, "--regimes"),
            "dtype": dtype}
    return ServeSessionConfig(methods=flags.comma_list(methods, "--methods"), model=model, device=device,
                              output=output, plan=plan, sets=list(sets), resume=resume)
