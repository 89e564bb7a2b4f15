"""The phases of one cell. Each phase writes its section of the result dict as soon as it has it, so a
failure late in a cell still leaves the earlier figures in its run file."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import to_jsonable

if TYPE_CHECKING:
    from .records import RunContext
    from .runner import Session

PROBES = 4  # training prompts whose logits are compared across merge / unmerge / reload


@contextlib.contextmanager
def phase(result: dict[str, Any], name: str, session: Session):
    session.progress.phase(name)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        result["timings"][name] = round(time.perf_counter() - t0, 3)


def probe_logits(model: Any, probes: list[list[int]], device: str) -> list[Any]:
    import torch

    with torch.inference_mode():
        return [model(input_ids=torch.tensor([p], device=device)).logits[0].float().cpu() for p in probes]


def compare(a: list[Any], b: list[Any]) -> dict[str, float]:
    """Largest |difference| of two logit sets, relative to the largest |logit|, and greedy agreement."""
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    scale = max(float(x.abs().max()) for x in a) or 1.0
    agree = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    total = sum(x.shape[0] for x in a)
    return {"max_abs_logit_diff": diff, "max_rel_logit_diff": diff / scale, "greedy_agreement": agree / total}


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


def run_base_cell(session: Session, run: RunContext, result: dict[str, Any]) -> None:
    """The untouched base model, zero-shot: what every method's gain is measured against."""
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


def score_retention(session: Session, run: RunContext, result: dict[str, Any], model: Any) -> None:
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
            ev = to_jsonable(run.hook.evaluate_model(run=dataclasses.replace(run, task=task), model=model,
                                                     tokenizer=session.tokenizer))
            metric, score, stderr = _headline(ev, task.metric)
            entry = {"metric": metric, "score": score, "stderr": stderr, "n_samples": ev.get("n_samples"),
                     "eval": ev}
            if run.method is None:
                session.base_retention[task.name] = entry
            base = session.base_retention.get(task.name)
            if base is not None and score is not None and base.get("score") is not None:
                entry.update(base=base["score"], base_stderr=base.get("stderr"), delta=score - base["score"])
            out[task.name] = entry


def run_method_cell(session: Session, run: RunContext, result: dict[str, Any], data: Any) -> None:
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
    from .training import planned_steps

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
        with phase(result, "evaluate", session):
            result["eval"] = to_jsonable(hook.evaluate_model(run=run, model=infer, tokenizer=session.tokenizer))
        score_retention(session, run, result, infer)
        with phase(result, "load_fresh_base", session):
            fresh, _ = session.model.load(device)
        latency: dict[str, Any] = {"modes": {}, "overhead": {}, "note": "decode ms/token, median of rounds; "
                                   "each ratio uses the base timed in the same interleaved phase"}
        result["latency"] = latency
        merge: dict[str, Any] = {"supported": caps.mergeable, "lossy": caps.merge_lossy, "tolerance_rel": tol}
        result["merge"] = merge
        if run.train_config.latency_rounds:
            with phase(result, "latency", session):
                timed = hook.measure_latency(run=run, model=infer, modes={
                    "base": lambda: contextlib.nullcontext(fresh), "unmerged": lambda: contextlib.nullcontext(infer)})
                _add_latency(latency, timed, "unmerged")
        if caps.mergeable:
            with phase(result, "merge", session):
                merged = hook.merge_adapter(run=run, prepared=model)
                merged_infer = method.inference_model(merged)
                merge.update(compare(reference, probe_logits(merged_infer, probes, device)))
                merge["ok"] = merge["max_rel_logit_diff"] <= tol
                if run.train_config.latency_rounds:
                    timed = hook.measure_latency(run=run, model=merged_infer, modes={
                        "base": lambda: contextlib.nullcontext(fresh),
                        "merged": lambda: contextlib.nullcontext(merged_infer)})
                    _add_latency(latency, timed, "merged")
                model = hook.unmerge_adapter(run=run, merged=merged)
                restored = compare(reference, probe_logits(method.inference_model(model), probes, device))
                merge["unmerge_max_rel_logit_diff"] = restored["max_rel_logit_diff"]
                merge["unmerge_ok"] = restored["max_rel_logit_diff"] <= tol
        model = infer = base = None  # free the trained model before reloading onto the fresh base
        with phase(result, "reload", session):
            reloaded = hook.load_artifact(run=run, directory=art, base_model=fresh)
            check = compare(reference, probe_logits(method.inference_model(reloaded), probes, device))
            result["reload"] = {**check, "ok": check["max_rel_logit_diff"] <= tol, "tolerance_rel": tol}


def _add_latency(latency: dict[str, Any], timed: dict[str, Any], mode: str) -> None:
    base, other = to_jsonable(timed["base"]), to_jsonable(timed[mode])
    latency["modes"].setdefault("base", base)
    latency["modes"][mode] = other
    latency["modes"][f"base_for_{mode}"] = base
    ratio = other["decode_ms_per_token"] / base["decode_ms_per_token"] if base["decode_ms_per_token"] else None
    latency["overhead"][mode] = round(ratio - 1.0, 4) if ratio is not None else None
