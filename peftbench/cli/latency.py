"""``peftbench latency``: time inference of every method, untrained, over a grid of shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from peftbench.cli import flags
from peftbench.cli.output import show_folder, stderr_console


@click.command()
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
@click.pass_obj
def latency(host, **flag_values):
    """Time inference of every method (untrained: latency depends on shapes, not values) over a grid of
    batch sizes x prompt lengths, modes base / unmerged / merged / stacked, eager and static regimes."""
    from peftbench.session.latency_only import LatencySession

    console = stderr_console()
    session = LatencySession(latency_session_config(**flag_values), host=host, say=lambda m: console.print(m))
    session.plan()
    console.print(f"peftbench latency {session.id}: {', '.join(session.methods)} on {session.device}; results in "
                  f"{session.output}")
    results = session.run()
    show_folder(session.output, False)
    if any(r["status"] != "ok" for r in results):
        sys.exit(1)


def latency_session_config(methods, model, device, batch_sizes, prompt_lengths, new_tokens, regimes, stack, rounds,
                           dtype, sets, output, resume):
    """The latency session the flags ask for."""
    from peftbench.session.latency_only import LatencySessionConfig

    grid = {"batch_sizes": flags.whole_numbers(batch_sizes, "--batch-sizes"),
            "prompt_lengths": flags.whole_numbers(prompt_lengths, "--prompt-lengths"),
            "new_tokens": new_tokens, "regimes": flags.comma_list(regimes, "--regimes"), "rounds": rounds,
            "dtype": dtype, "stack": [] if flags.says_none(stack) else flags.whole_numbers(stack, "--stack")}
    return LatencySessionConfig(methods=flags.comma_list(methods, "--methods"), model=model, device=device,
                                output=output, grid=grid, sets=list(sets), resume=resume)
