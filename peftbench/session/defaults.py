"""The built-in default for every per-run phase hook (registered ``trylast``): call the Method, the
shared training loop, lm-eval or the latency timer. A plugin returning a value from the same hook
replaces the default for that run."""

from __future__ import annotations

from pathlib import Path

from peftbench.api.hookspecs import hookimpl


@hookimpl(trylast=True)
def prepare_model(run, base_model):
    return run.method.prepare(base_model, run.method_config)


@hookimpl(trylast=True)
def train_model(run, prepared, train_data):
    from peftbench.train.loop import train

    params = [p for _, p in run.method.trainable_parameters(prepared)]

    def on_step(step, metrics):
        run.hook.train_step_end(run=run, step=step, metrics=metrics)
        if run.progress is not None:
            run.progress.step(step, metrics)

    return train(prepared, params, train_data, run.train_config, run.spec.seed, run.device, on_step=on_step,
                 world=run.world)


@hookimpl(trylast=True)
def evaluate_model(run, model, tokenizer):
    from peftbench.evaluate.scoring import evaluate

    return evaluate(model, tokenizer, run.task, run.include_path, run.eval_config, run.device, run.spec.seed)


@hookimpl(trylast=True)
def merge_adapter(run, prepared):
    return run.method.merge(prepared)


@hookimpl(trylast=True)
def unmerge_adapter(run, merged):
    return run.method.unmerge(merged)


@hookimpl(trylast=True)
def save_artifact(run, prepared, directory):
    return run.method.save(prepared, Path(directory), run.method_config)


@hookimpl(trylast=True)
def load_artifact(run, directory, base_model):
    return run.method.load(Path(directory), base_model, run.method_config)


@hookimpl(trylast=True)
def measure_latency(run, model, modes):
    from peftbench.latency.timer import measure

    same = ("merged",) + (("unmerged",) if run.method is not None and run.method.capabilities.trains_all_parameters
                          else ())
    return measure(modes, run.latency_config.grid(), run.device, model.config.vocab_size,
                   same_as_base=same, progress=run.progress.phase if run.progress is not None else None,
                   done=run.latency_done, checkpoint=run.latency_checkpoint, stop=run.latency_config.stop_rule())
