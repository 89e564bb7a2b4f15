"""The fidelity checks of a trained cell: merging reproduces the unmerged model and unmerging restores it,
merging for bf16 serving two ways, and the saved artifact reloads onto a fresh base as the same function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.results.record import (
    LogitCheck,
    MergeCheck,
    MergePrecision,
    MergeVariant,
    ReloadCheck,
    SameBase,
)
from peftbench.session.probes import compare, probe_logits
from peftbench.session.scores import score_pair


def check_merge(check: MergeCheck, run: Any, model: Any, probes: list[list[int]], reference: list[Any],
                tokenizer: Any, unmerged_eval: dict[str, Any] | None) -> Any:
    """Merge ``model``, compare it with the unmerged ``reference`` logits (and score it, with
    ``unmerged_eval`` to compare against), unmerge it again; returns the unmerged model. ``check`` is filled
    in as each figure comes, so a failure part-way keeps the figures before it."""
    hook, device, tol = run.hook, run.device, check.tolerance_rel
    merged = hook.merge_adapter(run=run, prepared=model)
    merged_infer = run.method.inference_model(merged)
    merged_logits = probe_logits(merged_infer, probes, device)
    for name, value in compare(reference, merged_logits).items():
        setattr(check, name, value)
    check.ok = check.max_rel_logit_diff <= tol
    if unmerged_eval is not None:
        check.eval = score_pair(run, merged_infer, tokenizer, unmerged_eval)
    model = hook.unmerge_adapter(run=run, merged=merged)
    restored_logits = probe_logits(run.method.inference_model(model), probes, device)
    restored = LogitCheck(**compare(reference, restored_logits))
    check.unmerge_max_rel_logit_diff = restored.max_rel_logit_diff
    check.unmerge_ok = restored.max_rel_logit_diff <= tol
    # the merged model against the unmerged one on the same base weights: for a lossy merge (QLoRA: unmerging
    # leaves the base dequantized) this is the merge's own error, apart from the base's
    own = LogitCheck(**compare(restored_logits, merged_logits))
    check.same_base = SameBase(own.max_abs_logit_diff, own.max_rel_logit_diff, own.greedy_agreement,
                               own.max_rel_logit_diff <= tol)
    return model


def merge_precision_study(run: Any, load_base: Any, art: Path, probes: list[list[int]], tokenizer: Any,
                          scored: bool) -> MergePrecision:
    """Merging for bf16 serving, two ways, against the unmerged model in bf16: merge in fp32 then cast to
    bf16 (one rounding), or cast to bf16 then merge there (the delta is added in bf16). Logit fidelity on the
    probe prompts and the lm-eval score of each."""
    import torch

    from peftbench.latency.casting import cast_floating

    hook, method, device, bf16 = run.hook, run.method, run.device, torch.bfloat16

    def fresh_trained() -> Any:
        return hook.load_artifact(run=run, directory=art, base_model=load_base())

    unmerged = method.inference_model(cast_floating(fresh_trained(), bf16))
    ref = probe_logits(unmerged, probes, device)
    unmerged_score = score_pair(run, unmerged, tokenizer, None) if scored else None
    unmerged = None
    ref_eval = {"metrics": {unmerged_score.metric: unmerged_score.score}} if unmerged_score else None
    builds = {"merge_fp32_then_cast": lambda: cast_floating(hook.merge_adapter(run=run, prepared=fresh_trained()), bf16),
              "merge_in_bf16": lambda: hook.merge_adapter(run=run, prepared=cast_floating(fresh_trained(), bf16))}
    variants = {}
    for name, build in builds.items():
        merged = method.inference_model(build())
        variants[name] = MergeVariant(**compare(ref, probe_logits(merged, probes, device)),
                                      eval=score_pair(run, merged, tokenizer, ref_eval) if scored else None)
        merged = None
    return MergePrecision(dtype="bf16", unmerged=unmerged_score, **variants)


def check_reload(run: Any, load_base: Any, art: Path, probes: list[list[int]], reference: list[Any],
                 tol: float) -> tuple[ReloadCheck, Any]:
    """Load the artifact onto a fresh base; returns the check and the reloaded model."""
    reloaded = run.hook.load_artifact(run=run, directory=art, base_model=load_base())
    check = compare(reference, probe_logits(run.method.inference_model(reloaded), probes, run.device))
    return ReloadCheck(**check, ok=check["max_rel_logit_diff"] <= tol, tolerance_rel=tol), reloaded
