"""The phases of one cell. Each phase writes its section of the result dict as soon as it has it, so a
failure late in a cell still leaves the earlier figures in its run file."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftbench.api.options import to_jsonable
from peftbench.latency.config import SET_PREFIX
from peftbench.session.options import GRID_KEYS
from peftbench.system import memory

if TYPE_CHECKING:
    from peftbench.api.records import RunContext

PROBES = 4  # training prompts whose logits are compared across merge / unmerge / reload


@contextlib.contextmanager
def phase(result: dict[str, Any], name: str, session: Any):
    session.progress.phase(name)
    with watch_neighbours(result):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            result["timings"][name] = round(time.perf_counter() - t0, 3)


@contextlib.contextmanager
def watch_neighbours(record: dict[str, Any]):
    """Keep in ``record`` the most that other processes used while the block ran, over every block watched
    with it: device memory outside this process's allocator (``gpu_others_bytes``, sampled at both ends) and
    host CPU outside this process's tree (``host_others_cores``). The report flags times measured then."""
    memory.keep_most(record, {"gpu_others_bytes": memory.gpu_others_bytes()})
    cpu0 = memory.cpu_sample()
    try:
        yield
    finally:
        memory.keep_most(record, memory.neighbours_since(cpu0))


def probe_logits(model: Any, probes: list[list[int]], device: str) -> list[Any]:
    import torch

    with torch.inference_mode():
        return [model(input_ids=torch.tensor([p], device=device)).logits[0].float().cpu() for p in probes]


def compare(a: list[Any], b: list[Any]) -> dict[str, float]:
    """Largest |difference| of two logit sets, relative to the largest |logit|, and greedy agreement."""
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    mean = sum(float((x - y).abs().sum()) for x, y in zip(a, b, strict=True)) / sum(x.numel() for x in a)
    scale = max(float(x.abs().max()) for x in a) or 1.0
    agree = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    total = sum(x.shape[0] for x in a)
    return {"max_abs_logit_diff": diff, "mean_abs_logit_diff": mean, "max_rel_logit_diff": diff / scale,
            "greedy_agreement": agree / total}


def tolerance(run: RunContext) -> float:
    """Relative logit tolerance for 'the same function': fp32 rounding, or bf16/4-bit compute."""
    cfg = run.train_config
    low = run.device == "cuda" or cfg.dtype == "bf16" or run.method.capabilities.quantized_base
    return 2e-2 if low else 1e-4


def count_params(model: Any, trainable: list[tuple[str, Any]]) -> dict[str, Any]:
    total = sum(_numel(p) for p in model.parameters())
    n = sum(p.numel() for _, p in trainable)
    return {"trainable": n, "total": total, "trainable_pct": round(100.0 * n / total, 6) if total else None}


def _numel(p: Any) -> int:
    """Logical element count (a bitsandbytes 4-bit weight packs two values per byte)."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    if shape is not None:
        n = 1
        for d in shape:
            n *= int(d)
        return n
    return p.numel()


def scoring(session: Any, run: RunContext) -> bool:
    """Whether this run scores with lm-eval (``evaluate``: auto skips shape: models, whose weights are random)."""
    mode = run.eval_config.evaluate
    return mode == "on" or (mode == "auto" and session.model.info.kind != "shape")


NOT_SCORED = "evaluation off (evaluate=off, or a shape: model's random weights, which carry no accuracy)"


def run_base_cell(session: Any, run: RunContext, result: dict[str, Any]) -> None:
    """The untouched base model, zero-shot: what every method's gain is measured against."""
    if not scoring(session, run):
        result.update(status="skipped", reason=NOT_SCORED)
        return
    with phase(result, "load", session):
        base, tok = session.model.load(run.device)
    result["params"] = {"trainable": 0, "total": sum(_numel(p) for p in base.parameters()), "trainable_pct": 0.0}
    with phase(result, "evaluate", session):
        result["eval"] = to_jsonable(run.hook.evaluate_model(run=run, model=base, tokenizer=session.tokenizer))
    score_retention(session, run, result, base)


def _headline(ev: dict[str, Any], metric: str) -> tuple[str, float | None, float | None]:
    metrics, stderr = ev.get("metrics") or {}, ev.get("stderr") or {}
    if metric not in metrics and metrics:
        metric = next(iter(metrics))
    return metric, metrics.get(metric), stderr.get(metric)


def score_retention(session: Any, run: RunContext, result: dict[str, Any], model: Any) -> None:
    """Score ``model`` on the tasks it was not trained on (forgetting), with the base model's score on each
    beside it. The base scores are computed once per session (by the base row) and reused."""
    tasks = session.retention.get(run.task.name) or []
    if not tasks:
        return
    out: dict[str, Any] = {}
    result["retention"] = out
    with phase(result, "retention", session):
        for task in tasks:
            if run.method is None and task.name in session.base_retention:  # scored by an earlier base row
                out[task.name] = session.base_retention[task.name]
                continue
            try:
                ev = to_jsonable(run.hook.evaluate_model(run=dataclasses.replace(run, task=task), model=model,
                                                         tokenizer=session.tokenizer))
            except Exception as e:  # one retention task failing loses neither the cell nor the other tasks
                import torch

                if isinstance(e, torch.cuda.OutOfMemoryError):
                    raise
                out[task.name] = {"metric": task.metric, "score": None, "error": {
                    "type": type(e).__name__, "message": str(e)[:1000] or "(no message)",
                    "traceback": traceback.format_exc()[-3000:]}}
                continue
            metric, score, stderr = _headline(ev, task.metric)
            entry = {"metric": metric, "score": score, "stderr": stderr, "n_samples": ev.get("n_samples"),
                     "eval": ev}
            if run.method is None:
                session.base_retention[task.name] = entry
            base = session.base_retention.get(task.name)
            if base is not None and score is not None and base.get("score") is not None:
                entry.update(base=base["score"], base_stderr=base.get("stderr"), delta=score - base["score"])
            out[task.name] = entry


def run_method_cell(session: Any, run: RunContext, result: dict[str, Any], data: Any) -> None:
    hook, method, device = run.hook, run.method, run.device
    caps = method.capabilities
    import torch

    torch.manual_seed(run.spec.seed)
    with phase(result, "load", session):
        base, _ = session.model.load(device)
    with phase(result, "prepare", session):
        model = hook.prepare_model(run=run, base_model=base)
    trainable = method.trainable_parameters(model)
    result["params"] = count_params(model, trainable)
    from peftbench.train.loop import planned_steps

    steps = planned_steps(run.train_config, len(data))
    session.progress.training(steps if steps < 10**9 else 0)
    with phase(result, "train", session):
        train = hook.train_model(run=run, prepared=model, train_data=data)
    result["train"] = to_jsonable(train)
    if train.diverged:
        result.update(status="error", error={"type": "Diverged", "message": "training loss became NaN/inf",
                                             "traceback": ""})
        return
    probes = data.input_ids[:PROBES]
    infer = method.inference_model(model)
    reference = probe_logits(infer, probes, device)
    tol = tolerance(run)
    with session.artifact_dir(run.spec) as art:
        with phase(result, "save", session):
            files = [Path(f) for f in hook.save_artifact(run=run, prepared=model, directory=art)]
        result["artifact"] = {"bytes": sum(f.stat().st_size for f in files),
                              "files": {str(f.relative_to(art)): f.stat().st_size for f in files},
                              "kept_at": str(art) if session.config.keep_artifacts else None}
        scored = scoring(session, run)
        if scored:
            with phase(result, "evaluate", session):
                result["eval"] = to_jsonable(hook.evaluate_model(run=run, model=infer, tokenizer=session.tokenizer))
            score_retention(session, run, result, infer)
        else:
            result["reason"] = NOT_SCORED
        checks, timing = run.eval_config, run.latency_config
        merge: dict[str, Any] = {"supported": caps.mergeable, "lossy": caps.merge_lossy, "tolerance_rel": tol}
        result["merge"] = merge
        if caps.mergeable:
            with phase(result, "merge", session):
                merged = hook.merge_adapter(run=run, prepared=model)
                merged_infer = method.inference_model(merged)
                merged_logits = probe_logits(merged_infer, probes, device)
                merge.update(compare(reference, merged_logits))
                merge["ok"] = merge["max_rel_logit_diff"] <= tol
                if checks.merge_eval and scored:
                    merge["eval"] = _score_pair(session, run, merged_infer, result.get("eval"))
                model = hook.unmerge_adapter(run=run, merged=merged)
                restored_logits = probe_logits(method.inference_model(model), probes, device)
                restored = compare(reference, restored_logits)
                merge["unmerge_max_rel_logit_diff"] = restored["max_rel_logit_diff"]
                merge["unmerge_ok"] = restored["max_rel_logit_diff"] <= tol
                # the merged model against the unmerged one on the same base weights: for a lossy merge (QLoRA:
                # unmerging leaves the base dequantized) this is the merge's own error, apart from the base's
                own = compare(restored_logits, merged_logits)
                merge["same_base"] = {"max_abs_logit_diff": own["max_abs_logit_diff"],
                                      "max_rel_logit_diff": own["max_rel_logit_diff"],
                                      "greedy_agreement": own["greedy_agreement"],
                                      "ok": own["max_rel_logit_diff"] <= tol}
                merged_logits = restored_logits = None
            merged = merged_infer = None
            if checks.merge_precisions:
                model = infer = base = None
                with phase(result, "merge_precision", session):
                    merge["precision"] = merge_precision_study(session, run, art, probes, scored)
        model = infer = base = None  # free the trained model before reloading onto a fresh base
        with phase(result, "reload", session):
            fresh, _ = session.model.load(device)
            reloaded = hook.load_artifact(run=run, directory=art, base_model=fresh)
            check = compare(reference, probe_logits(method.inference_model(reloaded), probes, device))
            result["reload"] = {**check, "ok": check["max_rel_logit_diff"] <= tol, "tolerance_rel": tol}
        if timing.rounds:
            key = latency_key(run)
            if timing.once and key not in session.latency_cache:
                session.latency_of_other_shards()
            earlier = session.latency_cache.get(key) if timing.once else None
            if earlier is not None:  # the same method, configuration and grid, timed in an earlier cell
                result["latency"] = {**earlier["latency"], "measured_in": earlier["cell"]}
            else:
                with phase(result, "latency", session):
                    result["latency"] = time_inference(lambda: session.model.load(device)[0], run, art, reloaded)
                if not result["latency"].get("errors"):
                    session.latency_cache[key] = {"latency": result["latency"], "cell": run.spec.key}


def latency_key(run: RunContext) -> str:
    """What a method's latency depends on: the method, its configuration (shapes and placement of its
    weights) and the timing grid, not the trained values or the task."""
    latency = {SET_PREFIX + k: v for k, v in to_jsonable(run.latency_config).items()}
    grid = {k: latency[k] for k in GRID_KEYS}
    return _latency_key(run.method.name, to_jsonable(run.method_config), grid)


def latency_key_of_result(result: dict[str, Any]) -> str | None:
    """``latency_key`` of a finished run file (a resumed session reuses its timing), or None when the file
    does not record what the key needs."""
    config = result.get("config") or {}
    train = config.get("train") or {}
    if not result.get("method") or result["method"] == "base" or "method" not in config or \
            any(k not in train for k in GRID_KEYS):
        return None
    return _latency_key(result["method"].split("@", 1)[0], config["method"], {k: train[k] for k in GRID_KEYS})


def _latency_key(method: str, method_config: Any, grid: dict[str, Any]) -> str:
    import json

    return json.dumps([method, to_jsonable(method_config), to_jsonable(grid)], sort_keys=True, default=str)


def _score_pair(session: Any, run: RunContext, model: Any, reference: dict[str, Any] | None) -> dict[str, Any]:
    """lm-eval score of ``model`` beside a reference evaluation of the same task (e.g. merged vs unmerged), with
    its per-example values of that metric (``samples``: doc_id and metric), so that a score change can be tested
    paired over the same examples (``peftbench claims``)."""
    ev = to_jsonable(run.hook.evaluate_model(run=run, model=model, tokenizer=session.tokenizer))
    metric, score, stderr = _headline(ev, run.task.metric)
    _, ref, _ = _headline(reference or {}, metric)
    samples = ev.get("samples") or {}
    return {"metric": metric, "score": score, "stderr": stderr, "reference": ref,
            "delta": None if score is None or ref is None else score - ref, "n_samples": ev.get("n_samples"),
            "samples": {"doc_id": samples["doc_id"], metric: samples[metric]}
            if metric in samples and "doc_id" in samples else None}


def merge_precision_study(session: Any, run: RunContext, art: Path, probes: list[list[int]],
                          scored: bool = True) -> dict[str, Any]:
    """Merging for bf16 serving, two ways, against the unmerged model in bf16: merge in fp32 then cast to
    bf16 (one rounding), or cast to bf16 then merge there (the delta is added in bf16). Logit fidelity on the
    probe prompts and the lm-eval score of each."""
    import torch

    from peftbench.latency.casting import cast_floating

    hook, method, device = run.hook, run.method, run.device
    bf16 = torch.bfloat16

    def fresh_trained() -> Any:
        return hook.load_artifact(run=run, directory=art, base_model=session.model.load(device)[0])

    unmerged = cast_floating(fresh_trained(), bf16)
    u_inf = method.inference_model(unmerged)
    ref = probe_logits(u_inf, probes, device)
    out: dict[str, Any] = {"dtype": "bf16", "unmerged": _score_pair(session, run, u_inf, None) if scored else None}
    unmerged = u_inf = None
    ref_eval = {"metrics": {out["unmerged"]["metric"]: out["unmerged"]["score"]}} if scored else None
    variants = {"merge_fp32_then_cast": lambda: cast_floating(hook.merge_adapter(run=run, prepared=fresh_trained()), bf16),
                "merge_in_bf16": lambda: hook.merge_adapter(run=run, prepared=cast_floating(fresh_trained(), bf16))}
    for name, build in variants.items():
        merged = method.inference_model(build())
        out[name] = {**compare(ref, probe_logits(merged, probes, device)),
                     "eval": _score_pair(session, run, merged, ref_eval) if scored else None}
        merged = None
    return out


def time_inference(load_base: Any, run: RunContext, art: Path, trained: Any) -> dict[str, Any]:
    """The latency section of a run: ``base`` (a fresh base model), ``unmerged`` (``trained``: the artifact
    loaded onto a fresh base, as a user would load it), ``merged`` (merged in fp32, the method's wrappers
    removed (``Method.unload``), then cast, for mergeable methods) and ``stackN`` (stackable methods, ``latency_stack``), all in the latency dtype."""
    from peftbench.latency.casting import cast_floating, latency_dtype

    cfg, method, hook = run.latency_config, run.method, run.hook
    dtype = latency_dtype(cfg.dtype, run.device)
    base = cast_floating(load_base(), dtype)
    unmerged = method.inference_model(cast_floating(trained, dtype))
    modes: dict[str, Any] = {"base": lambda: contextlib.nullcontext(base),
                             "unmerged": lambda: contextlib.nullcontext(unmerged)}
    if method.capabilities.mergeable:
        merged = hook.merge_adapter(run=run, prepared=hook.load_artifact(run=run, directory=art, base_model=load_base()))
        merged_infer = method.inference_model(cast_floating(method.unload(merged), dtype))  # served as unloaded
        modes["merged"] = lambda: contextlib.nullcontext(merged_infer)
    if method.capabilities.can_stack:
        for k in cfg.stack:
            modes[f"stack{k}"] = lambda k=k: _stacked(method, trained, unmerged, k)
    others: dict[str, Any] = {}
    with watch_neighbours(others):
        latency = hook.measure_latency(run=run, model=unmerged, modes=modes)
    latency["dtype"] = str(dtype).replace("torch.", "")
    memory.keep_most(latency, others)  # the report flags timings on a shared GPU or host
    return latency


@contextlib.contextmanager
def _stacked(method: Any, trained: Any, infer: Any, k: int):
    with method.stacked(trained, k):
        yield infer


