"""peftbench's hook specifications. These docstrings are the plugin-author reference.

Implement a hook with ``@peftbench.hookimpl`` on a module-level function (or a method of a plugin
object) whose argument names match the spec; you may accept a subset of the arguments. Register the
module through an entry point in group ``peftbench``::

    [project.entry-points.peftbench]
    mymethod = "peftbench_mymethod"

Three kinds of hook:

* **Registration** (every implementation is called): add methods, tasks and CLI commands. Methods and
  task folders are taken in the order the plugins loaded, built-ins first: a plugin cannot take a
  built-in method's name, and its task of a built-in task's name replaces that task.
* **Session** events: configuration and the start and end of a session.
* **Per-run phases** (``firstresult``): the first non-``None`` result wins. peftbench's built-in
  defaults are registered ``trylast`` and simply call the :class:`peftbench.Method`, so a plugin that
  returns a value replaces that phase for the runs it cares about and returns ``None`` for the others.
  Wrap a phase with ``@hookimpl(wrapper=True)``.
* **Run events** (every implementation is called; keep them cheap): run start, each training step, run end.

The ``run`` argument of the per-run hooks is a :class:`peftbench.api.records.RunContext`: ``spec`` (method
name, task name, seed), ``method`` (the Method object; None for the base row) and ``method_config``,
``task``, ``train_config``, ``eval_config``, ``latency_config``, ``device``, ``include_path``, ``hook``,
``progress``, and ``run.record(key, value)`` for plugin extras, which land under ``extras`` in the run
file. docs/plugins/README.md ("The run object") describes each field.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("peftbench")
hookimpl = pluggy.HookimplMarker("peftbench")


# ---- registration -----------------------------------------------------------------------------------

@hookspec
def register_methods(register):
    """Register fine-tuning methods.

    ``register(name, method, aliases=())``: ``method`` is a :class:`peftbench.Method` subclass or a lazy
    ``"module.path:ClassName"`` string (imported only when the method is used, so listing methods stays
    fast). A name (or alias) another plugin already took is not registered: the first registered keeps
    it, ``peftbench plugins`` shows this plugin as ``conflict`` naming both, and ``--strict-plugins`` makes
    it an error. A hook that raises is reported the same way; the other plugins keep working.

    Example::

        @hookimpl
        def register_methods(register):
            register("ia3", "peftbench_ia3.method:IA3Method", aliases=("ia3-peft",))
    """


@hookspec
def register_tasks(register):
    """Register tasks: ``register(path)`` with a folder that holds ``<name>/task.yaml`` sub-folders (or one
    task folder itself).

    Example::

        @hookimpl
        def register_tasks(register):
            register(Path(__file__).parent / "tasks")
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``peftbench`` command line. ``cli`` is the root ``click.Group``.

    Example::

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from my plugin")
    """


# ---- session ----------------------------------------------------------------------------------------

@hookspec(historic=True)
def configure(config):
    """Called once with the session's :class:`peftbench.session.plan.SessionConfig` before any run starts
    (historic: plugins registered later are called too). Return value ignored."""


@hookspec
def session_start(session):
    """A session (the methods x tasks x seeds grid of one ``peftbench run``) starts. ``session`` is its
    frozen :class:`peftbench.session.plan.Plan` (model, tasks, cells and each cell's options). Return value
    ignored."""


@hookspec
def session_finish(session, results):
    """The session (its :class:`peftbench.session.plan.Plan`) ended, also when cells failed or it was
    interrupted. ``results`` is the list of run result dicts as written to the run files. Return value
    ignored."""


# ---- per-run phases (firstresult; defaults call the Method) ------------------------------------------

@hookspec(firstresult=True)
def prepare_model(run, base_model):
    """Turn the loaded base model into the model to train; return it. Default: ``run.method.prepare(
    base_model, run.method_config)``."""


@hookspec(firstresult=True)
def train_model(run, prepared, train_data):
    """Train ``prepared`` on ``train_data`` (a :class:`peftbench.train.batching.TrainData`); return a
    :class:`peftbench.api.records.TrainResult`. Default: peftbench's shared training loop."""


@hookspec(firstresult=True)
def evaluate_model(run, model, tokenizer):
    """Score ``model`` (a ``transformers`` model ready for inference) on ``run.task`` with lm-eval; return
    a :class:`peftbench.api.records.EvalResult`. Default: lm-eval ``simple_evaluate`` in-process."""


@hookspec(firstresult=True)
def merge_adapter(run, prepared):
    """Merge the trained weights into the base; return the merged model. Default:
    ``run.method.merge(prepared)``."""


@hookspec(firstresult=True)
def unmerge_adapter(run, merged):
    """Undo ``merge_adapter``; return the unmerged model. Default: ``run.method.unmerge(merged)``."""


@hookspec(firstresult=True)
def save_artifact(run, prepared, directory):
    """Write the method's artifact into ``directory`` (a ``pathlib.Path``); return the list of files
    written. Default: ``run.method.save(prepared, directory, run.method_config)``."""


@hookspec(firstresult=True)
def load_artifact(run, directory, base_model):
    """Rebuild the trained model from ``directory`` onto a fresh ``base_model``; return it. Default:
    ``run.method.load(directory, base_model, run.method_config)``."""


@hookspec(firstresult=True)
def measure_latency(run, model, modes):
    """Time generation with ``model`` (the trained model, unmerged) in each of ``modes``: a dict from mode
    name (``base``, ``unmerged``, ``merged``, ``stack2``, ...) to a zero-argument factory of a context
    manager that yields the model to time in that mode. All modes are timed together so they can be
    interleaved round-robin over the grid of ``run.latency_config.grid()``. Return the run file's
    ``latency`` section (see ``peftbench.latency.timer.measure``). Default: peftbench's harness. When
    ``peftbench latency --resume`` continues an interrupted method, ``run.latency_done`` holds the shapes
    already timed and ``run.latency_checkpoint(section)`` saves progress; an implementation may ignore both
    (the method is then timed whole)."""


# ---- run events -------------------------------------------------------------------------------------

@hookspec
def run_start(run):
    """A run (one method x task x seed cell) starts. Return value ignored."""


@hookspec
def train_step_end(run, step, metrics):
    """An optimizer step finished; ``metrics`` has ``loss``, ``lr``, ``tokens`` and ``elapsed_s``. Called
    every step: keep it cheap. Return value ignored."""


@hookspec
def run_finish(run, result):
    """A run ended with ``result`` (the dict written to its run file; ``result['status']`` says how).
    Return value ignored."""
