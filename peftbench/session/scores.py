"""Scoring inside a cell: the task's own lm-eval score, the retention tasks (forgetting, against the base
model's score), and one score beside a reference score for paired tests."""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.results.record import ErrorInfo, RetentionScore, ScorePair

NOT_SCORED = "evaluation off (evaluate=off, or a shape: model's random weights, which carry no accuracy)"


def scoring(model_kind: str, run: Any) -> bool:
    """Whether this run scores with lm-eval (``evaluate``: auto skips shape: models, whose weights are random)."""
    mode = run.eval_config.evaluate
    return mode == "on" or (mode == "auto" and model_kind != "shape")


def evaluate(run: Any, model: Any, tokenizer: Any) -> dict[str, Any]:
    """The run's task scored through the evaluate_model hook, as JSON values."""
    return to_jsonable(run.hook.evaluate_model(run=run, model=model, tokenizer=tokenizer))


def headline(ev: dict[str, Any], metric: str) -> tuple[str, float | None, float | None]:
    """(metric, score, stderr) of an evaluation: ``metric``, or its first metric if it lacks that one."""
    metrics, stderr = ev.get("metrics") or {}, ev.get("stderr") or {}
    if metric not in metrics and metrics:
        metric = next(iter(metrics))
    return metric, metrics.get(metric), stderr.get(metric)


def score_retention(run: Any, tasks: list[Any], model: Any, tokenizer: Any,
                    base_scores: dict[str, RetentionScore]) -> dict[str, RetentionScore]:
    """Score ``model`` on the tasks it was not trained on (forgetting), with the base model's score on each
    beside it. The base row fills ``base_scores`` (once per session); later base rows reuse them."""
    out: dict[str, RetentionScore] = {}
    for task in tasks:
        if run.method is None and task.name in base_scores:  # scored by an earlier base row
            out[task.name] = base_scores[task.name]
            continue
        entry = _retention_score(dataclasses.replace(run, task=task), model, tokenizer)
        if run.method is None and entry.error is None:
            base_scores[task.name] = entry
        base = base_scores.get(task.name)
        if base is not None and entry.score is not None and base.score is not None:
            entry.base, entry.base_stderr, entry.delta = base.score, base.stderr, entry.score - base.score
        out[task.name] = entry
    return out


def _retention_score(run: Any, model: Any, tokenizer: Any) -> RetentionScore:
    """One retention task; its failure loses neither the cell nor the other tasks (out of memory does)."""
    try:
        ev = evaluate(run, model, tokenizer)
    except Exception as e:
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        return RetentionScore(metric=run.task.metric, score=None, error=ErrorInfo(
            type(e).__name__, str(e)[:1000] or "(no message)", traceback.format_exc()[-3000:]))
    metric, score, stderr = headline(ev, run.task.metric)
    return RetentionScore(metric=metric, score=score, stderr=stderr, n_samples=ev.get("n_samples"), eval=ev)


def as_retention_score(entry: dict[str, Any]) -> RetentionScore:
    """A retention entry read back from a run file."""
    names = {f.name for f in dataclasses.fields(RetentionScore)}
    return RetentionScore(**{k: v for k, v in entry.items() if k in names})


def score_pair(run: Any, model: Any, tokenizer: Any, reference: dict[str, Any] | None) -> ScorePair:
    """lm-eval score of ``model`` beside a reference evaluation of the same task (e.g. merged vs unmerged),
    with its per-example values of that metric (``samples``: doc_id and metric), so that a score change can
    be tested paired over the same examples (``peftbench claims``)."""
    return pair_of(run, evaluate(run, model, tokenizer), reference)


def pair_of(run: Any, ev: dict[str, Any], reference: dict[str, Any] | None) -> ScorePair:
    """``score_pair`` of an evaluation already made (``ev``)."""
    metric, score, stderr = headline(ev, run.task.metric)
    _, ref, _ = headline(reference or {}, metric)
    samples = ev.get("samples") or {}
    return ScorePair(metric=metric, score=score, stderr=stderr, reference=ref,
                     delta=None if score is None or ref is None else score - ref, n_samples=ev.get("n_samples"),
                     samples={"doc_id": samples["doc_id"], metric: samples[metric]}
                     if metric in samples and "doc_id" in samples else None)
