"""The hook reference (``docs/plugins/hooks.md``), generated from the hook specifications and the examples
below, so the docs cannot drift from the code (a test compares them). Regenerate with::

    python -m peftbench.api.plugin_docs > docs/plugins/hooks.md
"""

from __future__ import annotations

import inspect
import textwrap

from peftbench.api import hookspecs

KINDS = {
    "register_methods": "registration", "register_tasks": "registration", "register_commands": "registration",
    "configure": "session", "session_start": "session", "session_finish": "session",
    "run_start": "run event", "train_step_end": "run event", "run_finish": "run event",
}

RETURNS = {
    "registration": "ignored; call ``register`` (or add to ``cli``) instead",
    "session": "ignored",
    "run event": "ignored",
}

EXAMPLES = {
    "register_methods": '''
        @hookimpl
        def register_methods(register):
            register("ia3", "peftbench_ia3.method:IA3Method")   # lazy: imported when first used
    ''',
    "register_tasks": '''
        @hookimpl
        def register_tasks(register):
            register(Path(__file__).parent / "tasks")           # holds bigger/task.yaml
    ''',
    "register_commands": '''
        @hookimpl
        def register_commands(cli):
            @cli.command("ia3-targets")
            @click.option("--model", default="tiny:llama")
            def ia3_targets(model):
                """List the modules IA3 scales in MODEL."""
                ...
    ''',
    "configure": '''
        @hookimpl
        def configure(config):
            if "mymethod" in config.methods and config.device == "cpu":
                print("mymethod is slow on CPU; consider --device cuda")
    ''',
    "session_start": '''
        @hookimpl
        def session_start(session):
            (session.output / "notes.txt").write_text(f"cells: {len(session.cells)}\\n")
    ''',
    "session_finish": '''
        @hookimpl
        def session_finish(session, results):
            failed = [r["key"] for r in results if r["status"] not in ("ok", "skipped")]
            if failed:
                notify(f"peftbench: {len(failed)} cells failed: {failed}")
    ''',
    "prepare_model": '''
        @hookimpl
        def prepare_model(run, base_model):
            if run.method.name != "lora":
                return None                                      # leave other methods to the default
            base_model.gradient_checkpointing_enable()
            return run.method.prepare(base_model, run.method_config)
    ''',
    "train_model": '''
        @hookimpl
        def train_model(run, prepared, train_data):
            if run.method.name != "mymethod":
                return None
            return my_trainer(prepared, train_data, run.train_config)   # -> TrainResult
    ''',
    "evaluate_model": '''
        @hookimpl(wrapper=True)                                  # wrap the default instead of replacing it
        def evaluate_model(run, model, tokenizer):
            t0 = time.perf_counter()
            result = yield
            run.record("eval_wall_s", time.perf_counter() - t0)
            return result
    ''',
    "merge_adapter": '''
        @hookimpl
        def merge_adapter(run, prepared):
            if run.method.name != "mymethod":
                return None
            return fold_scales_into_weights(prepared)
    ''',
    "unmerge_adapter": '''
        @hookimpl
        def unmerge_adapter(run, merged):
            if run.method.name != "mymethod":
                return None
            return unfold_scales(merged)
    ''',
    "save_artifact": '''
        @hookimpl(wrapper=True)
        def save_artifact(run, prepared, directory):
            files = yield                                        # the method's own files
            card = directory / "MODEL_CARD.md"
            card.write_text(f"{run.method.name} on {run.task.name}, seed {run.spec.seed}\\n")
            return [*files, card]
    ''',
    "load_artifact": '''
        @hookimpl
        def load_artifact(run, directory, base_model):
            if run.method.name != "mymethod":
                return None
            return my_loader(directory, base_model)
    ''',
    "measure_latency": '''
        @hookimpl(wrapper=True)
        def measure_latency(run, model, modes):
            latency = yield                                      # peftbench's harness
            latency["gpu_clock_mhz"] = read_gpu_clock()
            return latency
    ''',
    "run_start": '''
        @hookimpl
        def run_start(run):
            print("starting", run.spec.key, "on", run.device)
    ''',
    "train_step_end": '''
        @hookimpl
        def train_step_end(run, step, metrics):
            if step % 100 == 0:
                tracker.log({"loss": metrics["loss"], "lr": metrics["lr"]}, step=step)
    ''',
    "run_finish": '''
        @hookimpl
        def run_finish(run, result):
            run.record("host", socket.gethostname())            # lands under "extras" in the run file
    ''',
}


def _kind(name: str, spec_opts: dict) -> str:
    if spec_opts.get("firstresult"):
        return "per-run phase (firstresult: the first non-None result wins; peftbench's default runs last)"
    if spec_opts.get("historic"):
        return "session (historic: plugins registered later are called too)"
    return KINDS.get(name, "all implementations called")


def hooks_markdown() -> str:
    from peftbench.api.plugins import hook_names

    out = ["# Hook reference", "",
           "Generated from `peftbench/hookspecs.py` by `python -m peftbench.api.plugin_docs` (a test checks that this",
           "file is current). Implement a hook with `@peftbench.hookimpl` on a module-level function whose",
           "argument names match the specification; you may accept a subset of them. A misspelled hook or",
           "argument name is an error when the plugin loads.", ""]
    known = hook_names()
    order = [n for n in EXAMPLES if n in known] + [n for n in known if n not in EXAMPLES]
    for name in order:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, "peftbench_spec", {})
        kind = _kind(name, opts)
        doc = textwrap.dedent("    " + (fn.__doc__ or "").strip()).strip()
        doc = doc.split("Example::")[0].strip()
        args = list(inspect.signature(fn).parameters)
        returns = ("see above; `None` leaves the phase to the next implementation (in the end, peftbench's "
                   "default)" if opts.get("firstresult") else RETURNS.get(KINDS.get(name, ""), "ignored"))
        out += [f"### `{name}{inspect.signature(fn)}`", "", f"*{kind}*", "", doc, "",
                "Arguments: " + ", ".join(f"`{a}`" for a in args) + ".", "", f"Returns: {returns}.", "",
                "Example:", "", "```python", textwrap.dedent(EXAMPLES.get(name, "# (no example yet)")).strip(), "```",
                ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(hooks_markdown(), end="")
