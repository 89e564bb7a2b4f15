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
from peftbench.session.scores import evaluate, pair_of, score_pair


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


def merge_precision_study(run: Any, load_trained: Any, restored: Any, probes: list[list[int]], tokenizer: Any,
                          scored: bool) -> MergePrecision:
    """Merging for bf16 serving, two ways, against the unmerged model in bf16: merge in fp32 then cast to
    bf16 (one rounding), or cast to bf16 then merge there (the delta is added in bf16). Logit fidelity on the
    probe prompts and the lm-eval score of each.

    ``restored`` is the trained model in hand as unmerging restored it (None when it did not, or the merge is
    lossy): the fp32 merge is made from it, which it consumes. ``load_trained()`` (the artifact on a fresh
    base) gives the one copy the unmerged bf16 model and the bf16 merge are made from (three copies before)."""
    import torch

    from peftbench.latency.casting import cast_floating

    hook, method, device, bf16 = run.hook, run.method, run.device, torch.bfloat16
    source = restored if restored is not None else load_trained()
    fp32_cast = method.inference_model(cast_floating(hook.merge_adapter(run=run, prepared=source), bf16))
    fp32_logits = probe_logits(fp32_cast, probes, device)
    fp32_eval = evaluate(run, fp32_cast, tokenizer) if scored else None
    source = fp32_cast = None
    prepared = cast_floating(load_trained(), bf16)
    unmerged = method.inference_model(prepared)
    ref = probe_logits(unmerged, probes, device)
    unmerged_score = score_pair(run, unmerged, tokenizer, None) if scored else None
    ref_eval = {"metrics": {unmerged_score.metric: unmerged_score.score}} if unmerged_score else None
    unmerged = None
    in_bf16 = method.inference_model(hook.merge_adapter(run=run, prepared=prepared))
    return MergePrecision(
        dtype="bf16", unmerged=unmerged_score,
        merge_fp32_then_cast=MergeVariant(**compare(ref, fp32_logits),
                                          eval=pair_of(run, fp32_eval, ref_eval) if fp32_eval else None),
        merge_in_bf16=MergeVariant(**compare(ref, probe_logits(in_bf16, probes, device)),
                                   eval=score_pair(run, in_bf16, tokenizer, ref_eval) if scored else None))


def check_reload(run: Any, load_base: Any, art: Path, probes: list[list[int]], reference: list[Any],
                 tol: float) -> tuple[ReloadCheck, Any]:
    """Load the artifact onto a fresh base; returns the check and the reloaded model."""
    reloaded = run.hook.load_artifact(run=run, directory=art, base_model=load_base())
    check = compare(reference, probe_logits(run.method.inference_model(reloaded), probes, run.device))
    return ReloadCheck(**check, ok=check["max_rel_logit_diff"] <= tol, tolerance_rel=tol), reloaded
