"""Logit probes: whether two models compute the same function (merge, unmerge, reload), on a few training
prompts, within a tolerance that fits the run's precision."""

from __future__ import annotations

from typing import Any

PROBES = 4  # training prompts whose logits are compared across merge / unmerge / reload


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


def tolerance(run: Any) -> float:
    """Relative logit tolerance for 'the same function': fp32 rounding, or bf16/4-bit compute."""
    low = run.device == "cuda" or run.train_config.dtype == "bf16" or run.method.capabilities.quantized_base
    return 2e-2 if low else 1e-4
