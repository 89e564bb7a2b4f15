"""The ``peftbench`` command line: thin commands over the library. Tables and ``--json`` go to stdout,
progress and messages to stderr. Exit codes: 0 every cell ok (or skipped), 1 some cell failed, 2 usage.

The root group's own options (``--plugin``, ``--disable-plugin``, ``--strict-plugins``) decide which
plugins load; the plugin host they build is ``ctx.obj`` of every command (``click.pass_obj``)."""

from __future__ import annotations

import sys

import click

from peftbench.api.plugins import LoadFailure, PluginHost, make_plugin_manager
from peftbench.cli.estimate import estimate
from peftbench.cli.export import export
from peftbench.cli.latency import latency
from peftbench.cli.listing import methods, options, plugins, tasks
from peftbench.cli.report import claims, report
from peftbench.cli.run import run
from peftbench.cli.serve import serve_bench
from peftbench.errors import PeftbenchError, UsageError

PLUGIN_COMMANDS = "peftbench.plugin_commands"  # ctx.meta key: the commands the loaded plugins add


class PluginGroup(click.Group):
    """The root group. It loads the plugins its options name before it looks up a sub-command, because
    plugins add commands (``register_commands``); one host is built per distinct set of plugin options."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[tuple, tuple[PluginHost, dict[str, click.Command]]] = {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.resilient_parsing:  # the first pass below (or shell completion): the options are all read here
            rest = super().parse_args(ctx, args)
            self._load_plugins(ctx, ctx.params)
            return rest
        # --help is eager: it lists the commands while the options are read, perhaps before --plugin is. So
        # a first, resilient pass (which skips --help, --version and errors) reads the plugin options.
        first = self.make_context(ctx.info_name, list(args), parent=ctx.parent, resilient_parsing=True)
        self._load_plugins(ctx, first.params)
        return super().parse_args(ctx, args)

    def _load_plugins(self, ctx: click.Context, params: dict) -> None:
        key = (tuple(params.get("plugins") or ()), tuple(params.get("disabled") or ()),
               bool(params.get("strict_plugins")))
        if key not in self._loaded:
            host = make_plugin_manager(extra_plugins=list(key[0]), disable=list(key[1]), strict=key[2] or None)
            named = [f for f in host.failures if f.kind == "import" and f.name in key[0]]
            if named:  # a module the user named and that cannot be used is bad input, not a broken install
                raise UsageError(_plugin_option_error(named[0]))
            self._loaded[key] = host, self._commands_added_by(host)
        ctx.obj, ctx.meta[PLUGIN_COMMANDS] = self._loaded[key]

    def _commands_added_by(self, host: PluginHost) -> dict[str, click.Command]:
        """The commands ``host``'s plugins add to this group (``register_commands``), kept apart from it so
        that they exist only for the plugin options that loaded them."""
        own = dict(self.commands)
        try:
            host.hook.register_commands(cli=self)
            return {name: c for name, c in self.commands.items() if own.get(name) is not c}
        finally:
            self.commands = own

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *ctx.meta.get(PLUGIN_COMMANDS, {})})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return ctx.meta.get(PLUGIN_COMMANDS, {}).get(name) or self.commands.get(name)


def _plugin_option_error(failure: LoadFailure) -> str:
    """Why ``--plugin MODULE`` cannot be used: the module is not there, or importing it raised."""
    module = failure.name
    missing = failure.error.partition("No module named ")[2].strip("'\"")
    if failure.error.startswith("ModuleNotFoundError") and (module == missing or module.startswith(missing + ".")):
        return (f"--plugin {module}: no module {module!r} can be imported ({failure.error}). --plugin takes the "
                "dotted name of an importable Python module (e.g. --plugin mypkg.plugin for mypkg/plugin.py), "
                "not a file path or a distribution name: install its package, or put the folder that holds it "
                "on PYTHONPATH (the peftbench command does not search the current folder).")
    frames = [line.strip() for line in failure.traceback.splitlines() if line.strip().startswith("File ")]
    at = f" (at {frames[-1][5:]})" if frames else ""
    return (f"--plugin {module}: importing the module failed: {failure.error}{at}. Fix the module, or leave "
            "out --plugin.")


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, help="also load this plugin module (repeatable)")
@click.option("--disable-plugin", "disabled", multiple=True, help="do not load this plugin (repeatable)")
@click.option("--strict-plugins", is_flag=True, help="re-raise plugin load errors (for plugin development)")
@click.version_option(package_name="peftbench")
def cli(plugins, disabled, strict_plugins):
    """Measure what LoRA, QLoRA, bottleneck adapters and full fine-tuning buy and cost."""


for command in (run, report, claims, latency, serve_bench, methods, options, tasks, plugins, export):
    cli.add_command(command)
cli.add_command(estimate)


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
    """Run the command line and exit with its code; a PeftbenchError is printed without a traceback."""
    _quiet_libraries()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # a session records the command it ran (peftbench.system.meta)
    try:
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
