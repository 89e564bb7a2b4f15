"""One cell of a session, a function of the plan, the cell and the session's cache:

    availability? -> load base -> prepare -> train -> save artifact -> evaluate (lm-eval, unmerged)
    -> retention -> merge (if mergeable): parity, score, unmerge -> merge for bf16 two ways (on CUDA)
    -> reload the artifact onto a fresh base: parity -> latency (base / unmerged / merged / stacked)

Each phase returns its own section and the cell puts it in the record at once, so a failure late in a cell
still leaves the earlier figures in its run file. A failure is recorded in the cell, never raised.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.api.records import RunContext, RunSpec
from peftbench.results.record import ArtifactInfo, ErrorInfo, MergeCheck, ParamCount, RunRecord
from peftbench.results.store import run_json
from peftbench.session.artifacts import write_manifest
from peftbench.session.cache import CellCache
from peftbench.session.checks import check_merge, check_reload, merge_precision_study
from peftbench.session.phases import CellEnv, phase
from peftbench.session.plan import Plan
from peftbench.session.probes import PROBES, probe_logits, tolerance
from peftbench.session.scores import NOT_SCORED, evaluate, score_retention, scoring
from peftbench.session.sharded import gather_cell, main_rank, shard_cell, together
from peftbench.session.timing import latency_key, time_inference
from peftbench.session.train_tokens import cached_train_split
from peftbench.tasks.task import example_prompt


def blank_record(plan: Plan, spec: RunSpec, status: str) -> RunRecord:
    """The record of a cell before any phase ran (also what a cancelled or skipped cell keeps)."""
    method, options = plan.method(spec.method), plan.options_of(spec)
    return RunRecord(key=spec.key, status=status, method=spec.method, task=spec.task, seed=spec.seed,
                     model=plan.model.info.source, tuning=spec.tuning,
                     config={"method": to_jsonable(plan.method_config_of(spec)), "train": options.flat()},
                     capabilities=to_jsonable(method.capabilities) if method else None,
                     data=plan.prepared[spec.task].source, limit=options.eval.limit,
                     env={"device": plan.device, "session_id": plan.session_id})


def run_cell(plan: Plan, spec: RunSpec, cache: CellCache, env: CellEnv, world: Any = None,
             record: RunRecord | None = None) -> RunRecord:
    """Run one cell and return its record; the run_start and run_finish hooks frame it. ``world``: the
    processes training it together (``peftbench.session.sharded``), where a failure is raised, for the
    caller's ``run_together`` to gather from every rank, and ``record`` (the caller's) keeps what came before."""
    record = record or blank_record(plan, spec, "ok")
    run = _run_context(plan, spec, env, world)
    record.extras = run.extras  # the live dict: record() calls from run_finish land too
    env.progress.cell_start(spec)
    if run.method is not None:
        available = run.method.availability(plan.device)
        if not available:
            record.status, record.reason = "skipped", available.reason
            return record
    env.hook.run_start(run=run)
    try:
        if run.method is None:
            _base_cell(plan, run, record, cache, env)
        else:
            _method_cell(plan, run, record, cache, env)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one failing cell never ends the session
        if together(world):
            raise
        record.failed("oom" if _is_oom(e) else "error", ErrorInfo(type(e).__name__, str(e), traceback.format_exc()))
    if main_rank(world):
        env.hook.run_finish(run=run, result=run_json(record))
    return record


def _run_context(plan: Plan, spec: RunSpec, env: CellEnv, world: Any = None) -> RunContext:
    options = plan.options_of(spec)
    return RunContext(spec=spec, method=plan.method(spec.method), method_config=plan.method_config_of(spec),
                      task=plan.scored_task(spec), train_config=options.train, eval_config=options.eval,
                      latency_config=options.latency, device=plan.device, include_path=env.include_path,
                      hook=env.hook, progress=env.progress, world=world if together(world) else None)


def _base_cell(plan: Plan, run: RunContext, record: RunRecord, cache: CellCache, env: CellEnv) -> None:
    """The untouched base model, zero-shot: what every method's gain is measured against."""
    if not scoring(plan.model.info.kind, run):
        record.status, record.reason = "skipped", NOT_SCORED
        return
    if not main_rank(run.world):  # nothing to train: rank 0 scores it alone
        return
    with phase(record, "load", env.progress):
        base, _ = plan.model.load(run.device)
    record.params = ParamCount(trainable=0, total=_count(base.parameters()), trainable_pct=0.0)
    with phase(record, "evaluate", env.progress):
        record.eval = evaluate(run, base, env.tokenizer)
    _retention(plan, run, record, cache, env, base)


def _method_cell(plan: Plan, run: RunContext, record: RunRecord, cache: CellCache, env: CellEnv) -> None:
    """Train the method, then check and measure what it produced (see the module's docstring)."""
    import torch

    torch.manual_seed(run.spec.seed)
    with phase(record, "data", env.progress):
        data = _train_data(run, cache, env, plan.cache_dir)
        record.example = example_prompt(run.task, env.include_path)  # the training prompt beside the scored one
    model = _prepare(plan, run, record, env)
    shard = shard_cell(run, model)  # several processes: each holds a shard of it
    env.progress.training(_steps_to_show(run, data))
    with phase(record, "train", env.progress):
        record.train = run.hook.train_model(run=run, prepared=model, train_data=data)
    record.train.distributed = shard
    if record.train.diverged:
        record.failed("error", ErrorInfo("Diverged", "training loss became NaN/inf"))
        return
    if shard is not None:  # rank 0 goes on alone with the gathered weights, as one process would
        with phase(record, "gather", env.progress):
            model = gather_cell(run, model, lambda: run.hook.prepare_model(
                run=run, base_model=plan.model.load(run.device)[0]))
        if model is None:
            return
    probes = data.input_ids[:PROBES]
    with phase(record, "probe", env.progress):
        reference = probe_logits(run.method.inference_model(model), probes, run.device)
    with _artifact_dir(env, run.spec) as art:
        _save(run, record, env, model, art)
        scored = _score(plan, run, record, cache, env, model)
        model = _merge_checks(plan, run, record, env, model, art, probes, reference, scored)
        model = None  # free the trained model before reloading onto a fresh base
        with phase(record, "reload", env.progress):
            record.reload, reloaded = check_reload(run, lambda: plan.model.load(run.device)[0], art, probes,
                                                   reference, tolerance(run))
        if run.latency_config.rounds:
            record.latency = _latency(plan, run, record, cache, env, art, reloaded)


def _prepare(plan: Plan, run: RunContext, record: RunRecord, env: CellEnv) -> Any:
    with phase(record, "load", env.progress):
        base, _ = plan.model.load(run.device)
    with phase(record, "prepare", env.progress):
        model = run.hook.prepare_model(run=run, base_model=base)
    trainable = run.method.trainable_parameters(model)
    total, n = _count(model.parameters()), sum(p.numel() for _, p in trainable)
    record.params = ParamCount(trainable=n, total=total, trainable_pct=round(100.0 * n / total, 6) if total else None)
    return model


def _save(run: RunContext, record: RunRecord, env: CellEnv, model: Any, art: Path) -> None:
    with phase(record, "save", env.progress):
        files = [Path(f) for f in run.hook.save_artifact(run=run, prepared=model, directory=art)]
        write_manifest(art, run.spec, run.method_config, record.model)  # not one of the method's files
    record.artifact = ArtifactInfo(bytes=sum(f.stat().st_size for f in files),
                                   files={str(f.relative_to(art)): f.stat().st_size for f in files},
                                   kept_at=str(art) if env.artifacts is not None else None)


def _score(plan: Plan, run: RunContext, record: RunRecord, cache: CellCache, env: CellEnv, model: Any) -> bool:
    """Score the trained (unmerged) model on its task and the retention tasks; whether it was scored."""
    if not scoring(plan.model.info.kind, run):
        record.reason = NOT_SCORED
        return False
    infer = run.method.inference_model(model)
    with phase(record, "evaluate", env.progress):
        record.eval = evaluate(run, infer, env.tokenizer)
    _retention(plan, run, record, cache, env, infer)
    return True


def _retention(plan: Plan, run: RunContext, record: RunRecord, cache: CellCache, env: CellEnv, model: Any) -> None:
    tasks = list(plan.retention_of(run.spec))
    if tasks:
        record.retention = {}
        with phase(record, "retention", env.progress):
            record.retention.update(score_retention(run, tasks, model, env.tokenizer, cache.base_retention))


def _merge_checks(plan: Plan, run: RunContext, record: RunRecord, env: CellEnv, model: Any, art: Path,
                  probes: list[list[int]], reference: list[Any], scored: bool) -> Any:
    """Merge, score merged, unmerge (mergeable methods), then merge for bf16 serving two ways; returns the
    model to go on with (None once the precision study used it up)."""
    caps, tol, checks = run.method.capabilities, tolerance(run), run.eval_config
    record.merge = MergeCheck(supported=caps.mergeable, lossy=caps.merge_lossy, tolerance_rel=tol)
    if not caps.mergeable:
        return model
    with phase(record, "merge", env.progress):
        unmerged_eval = record.eval if checks.merge_eval and scored else None
        model = check_merge(record.merge, run, model, probes, reference, env.tokenizer, unmerged_eval)
    if not checks.merge_precisions:
        record.merge.precision_skipped = precision_skipped(run)
        return model
    restored = model if record.merge.unmerge_ok and not caps.merge_lossy else None  # the trained model again
    with phase(record, "merge_precision", env.progress):
        record.merge.precision = merge_precision_study(
            run, lambda: run.hook.load_artifact(run=run, directory=art, base_model=plan.model.load(run.device)[0]),
            restored, probes, env.tokenizer, scored)
    return None


def precision_skipped(run: RunContext) -> str:
    """Why a mergeable cell did not run the merge-precision study (its run file and the leaderboard say so)."""
    if run.spec.tuning is not None and run.spec.tuning.role == "grid":
        return "a tuning grid cell: it only ranks grid points"
    if not str(run.device).startswith("cuda"):
        return f"skipped on {run.device} (bf16 serving needs a GPU; --set merge_precisions=on runs it)"
    return "merge_precisions=off"


def _latency(plan: Plan, run: RunContext, record: RunRecord, cache: CellCache, env: CellEnv, art: Path,
             reloaded: Any) -> dict[str, Any]:
    """Time inference, or reuse the timing of an earlier cell of the same method, configuration and grid."""
    key = latency_key(run)
    earlier = cache.timed_latency(key) if run.latency_config.once else None
    if earlier is not None:
        return {**earlier["latency"], "measured_in": earlier["cell"]}
    with phase(record, "latency", env.progress):
        latency = time_inference(lambda: plan.model.load(run.device)[0], run, art, reloaded)
    if not latency.get("errors"):
        cache.latency[key] = {"latency": latency, "cell": run.spec.key}
    return latency


def _train_data(run: RunContext, cache: CellCache, env: CellEnv, cache_dir: Path) -> Any:
    """The task's training split, tokenized once per session and maximum length (and kept on disk for the
    session's other processes and later sessions)."""
    key = (run.task.name, run.train_config.max_length)
    if key not in cache.train_data:
        cache.train_data[key] = train_split(run.task, env, run.train_config.max_length, cache_dir)
    return cache.train_data[key]


def train_split(task: Any, env: CellEnv, max_length: int, cache_dir: Path | None = None) -> Any:
    """A task's training examples, formatted by its lm-eval template and tokenized as every cell trains on;
    read from ``cache_dir`` when the same tokens were built before (``peftbench.session.train_tokens``)."""
    from peftbench.tasks.task import lm_eval_task, training_pairs
    from peftbench.train.batching import tokenize_pairs

    def build() -> Any:
        return tokenize_pairs(training_pairs(lm_eval_task(task, env.include_path)), env.tokenizer, max_length)

    if cache_dir is None:
        return build()
    return cached_train_split(build, task.lm_eval_name, env.include_path, env.tokenizer, max_length, cache_dir)


def _steps_to_show(run: RunContext, data: Any) -> int:
    from peftbench.train.optim import planned_steps

    steps = planned_steps(run.train_config, len(data))
    return steps if steps < 10**9 else 0


@contextlib.contextmanager
def _artifact_dir(env: CellEnv, spec: RunSpec):
    if env.artifacts is not None:
        d = env.artifacts / spec.key
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        yield d
    else:
        d = Path(tempfile.mkdtemp(prefix=f"peftbench-{spec.key}-"))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)


def _count(parameters: Any) -> int:
    """Logical element count (a bitsandbytes 4-bit weight packs two values per byte)."""
    total = 0
    for p in parameters:
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        if shape is None:
            total += p.numel()
            continue
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def _is_oom(e: BaseException) -> bool:
    """Out of memory on the GPU, or on the host: Python's MemoryError, or torch's CPU allocator refusing
    ("DefaultCPUAllocator: can't allocate memory")."""
    import torch

    text = str(e).lower()
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text or \
        "can't allocate memory" in text
