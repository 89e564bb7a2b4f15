"""peftbench-ia3: the plugin module named by the entry point. It registers a method, a task and a command."""

from pathlib import Path

import click

from peftbench import hookimpl


@hookimpl
def register_methods(register):
    register("ia3", "peftbench_ia3.method:IA3Method")  # imported only when the method is used


@hookimpl
def register_tasks(register):
    register(Path(__file__).parent / "tasks")  # tasks/bigger/task.yaml


@hookimpl
def register_commands(cli):
    @cli.command("ia3-targets")
    @click.option("--model", default="tiny:llama", show_default=True, help="hub id, folder, .gguf or tiny:llama")
    def ia3_targets(model):
        """List the modules IA3 scales in MODEL, and how many parameters it trains."""
        from peftbench.models import load_model

        from .method import IA3Method

        base, _, _ = load_model(model)
        method = IA3Method()
        adapted = method.prepare(base, method.make_config({}))
        names = sorted({n.split(".ia3_l")[0].rsplit(".", 1)[-1] for n, _ in method.trainable_parameters(adapted)})
        n = sum(p.numel() for _, p in method.trainable_parameters(adapted))
        click.echo(f"ia3 on {model}: scales {', '.join(names)}; {n:,} trainable parameters")
