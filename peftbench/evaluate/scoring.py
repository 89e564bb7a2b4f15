"""Scoring with lm-eval, in-process, on the model in memory (no save/reload round trip)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftbench.api.records import EvalResult
from peftbench.evaluate.config import EvalConfig
from peftbench.evaluate.generation import count_generation, examples
from peftbench.evaluate.shared_context import SharedContextScorer
from peftbench.tasks.task import Task, task_manager

# lm-eval's result block keys we keep (everything but per-sample logs and the environment dump)
KEEP = ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
        "lm_eval_version", "transformers_version", "date", "max_length", "tokenizer_pad_token",
        "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id")


def _quiet() -> None:
    """lm-eval logs and draws tqdm bars of its own; peftbench shows its own progress instead."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("lm_eval", "lm-eval", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _without_env_dump() -> Iterator[None]:
    """lm-eval ends every ``simple_evaluate`` with ``add_env_info``, which runs torch's ``collect_env``
    (subprocesses: pip, nvidia-smi, ...; 0.6 s on the CPU machine, more on a GPU host) for the
    ``pretty_env_info`` text, once per evaluation: a cell that scores its task, two retention tasks, the
    merged model and the merge-precision variants calls it seven times. peftbench drops that text (the run file
    records its own environment) and keeps only the two version fields, which this fills directly.

    lm-eval also runs ``git describe`` in the current directory (``get_git_commit_hash``) for a ``git_hash``
    peftbench does not keep (the cwd's checkout says nothing about the model): outside a git checkout git
    printed ``fatal: not a git repository`` on every scoring pass. It is not asked."""
    from importlib.metadata import version

    import lm_eval.evaluator as evaluator
    import transformers

    real = evaluator.add_env_info, evaluator.get_git_commit_hash

    def versions_only(storage: dict[str, Any]) -> None:
        storage.update(lm_eval_version=version("lm_eval"), transformers_version=transformers.__version__)

    evaluator.add_env_info, evaluator.get_git_commit_hash = versions_only, lambda: None
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = real


def evaluate(model: Any, tokenizer: Any, task: Task, include_path: Path, cfg: EvalConfig, device: str,
             seed: int = 0) -> EvalResult:
    """Score ``model`` on ``task`` with lm-eval's ``simple_evaluate`` (zero- or few-shot per ``cfg``)."""
    _quiet()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(count_generation(HFLM)):  # lm-eval passes disable=False to its bars explicitly; peftbench
        def loglikelihood(self, requests, disable_tqdm=False):  # shows its own
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm=False):
            return super().generate_until(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            def lm_eval_path(reqs):
                return super(QuietHFLM, self)._loglikelihood_tokens(reqs, disable_tqdm=True, override_bs=override_bs)

            if packer is None:
                return lm_eval_path(requests)
            answers = packer.score(requests, lm_eval_path)
            for (key, _, _), answer in zip(requests, answers, strict=True):
                if key is not None:  # as lm-eval's own path does (rolling requests have no key)
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return answers

    model.eval()
    batch = cfg.batch_size(device)  # set by the plan; 'auto' outside a session
    lm = QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch, device=device)
    packer = SharedContextScorer(lm.model, batch, lm.device, lm.max_length, lm.softmax_dtype) \
        if cfg.packs_contexts(device) else None
    t0 = time.perf_counter()
    with _without_env_dump():
        out = simple_evaluate(model=lm, tasks=[task.lm_eval_name], task_manager=task_manager(include_path),
                              num_fewshot=cfg.num_fewshot or None, limit=cfg.limit or None, log_samples=True,
                              bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")
    wall = time.perf_counter() - t0
    block = json.loads(json.dumps({k: out[k] for k in KEEP if k in out}, default=str))
    samples = (out.get("samples") or {}).get(task.lm_eval_name) or []
    result = parse_block(task, block, wall)
    result.samples = per_example(samples, list(result.metrics))
    result.scorer = packer.record() if packer is not None else {"kind": "lm_eval"}
    if task.generation is None:
        return result
    cost = {**lm.generation.describe(), "batch_size": batch, **task.generation.describe(),
            "examples": json.loads(json.dumps(examples(samples, task.metric), default=str))}
    result.generation = cost
    return result


def per_example(samples: list[dict[str, Any]], metrics: list[str]) -> dict[str, list[Any]] | None:
    """The per-example value of each metric, by document id (for paired bootstraps between methods): a
    compact ``{"doc_id": [...], "acc": [...], ...}`` instead of lm-eval's full sample log."""
    rows = sorted((s for s in samples if "doc_id" in s), key=lambda s: s["doc_id"])
    if not rows:
        return None
    out: dict[str, list[Any]] = {"doc_id": [int(s["doc_id"]) for s in rows]}
    for m in metrics:
        if all(isinstance(s.get(m), (int, float)) for s in rows):
            out[m] = [float(s[m]) for s in rows]
    return out


def parse_block(task: Task, block: dict[str, Any], wall: float) -> EvalResult:
    """Metrics and their stderr from lm-eval's result block (``"acc,none"`` / ``"acc_stderr,none"``)."""
    res = block["results"][task.lm_eval_name]
    metrics, stderr = {}, {}
    for key, value in res.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        name, _filter = key.split(",", 1)
        if name.endswith("_stderr"):
            stderr[name[: -len("_stderr")]] = float(value)
        else:
            metrics[name] = float(value)
    if task.metric in metrics:  # the task's leaderboard metric first
        metrics = {task.metric: metrics[task.metric], **metrics}
    n = block.get("n-samples", {}).get(task.lm_eval_name, {}).get("effective", 0)
    return EvalResult(task=task.name, metrics=metrics, stderr=stderr, n_samples=int(n),
                      wall_time_s=round(wall, 3), lm_eval=block)
