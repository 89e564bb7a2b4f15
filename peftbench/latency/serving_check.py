"""Correctness before speed: each row of a mixed batch must give the logits its adapter gives alone, so a
fast number is never a wrong one. Checked on the multi-adapter model itself, before it is timed."""

from __future__ import annotations

from typing import Any

import torch

from peftbench.latency.serving_config import row_adapters

# |mixed - alone| / max |alone| of the last position's logits: float32 differs only by the order of sums
# (the sub-batch's matmul against the whole batch's); bf16 rounds each layer's LoRA output to 8 bits, and a
# random 1B model on the CPU ended 2 bf16 steps apart (0.0625 of logits up to 4.4: 1.4e-2) while its adapters
# were 3.0 apart -- the separation below is what tells a right row from a wrong one at that precision
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-1, torch.float16: 5e-2}
SEPARATION = 4.0  # the adapters must differ from each other by this many times the mixed batch's error


def check_mixed_batch(model: Any, names: list[str], k: int, ids: torch.Tensor, active: str) -> dict[str, Any]:
    """``check_mixed_batches`` for one K."""
    return check_mixed_batches(model, names, [k], ids, active)[0]


def check_mixed_batches(model: Any, names: list[str], ks: list[int], ids: torch.Tensor,
                        active: str) -> list[dict[str, Any]]:
    """For each K of ``ks``: run ``ids`` (B >= K rows) as a mixed batch whose rows ask for the first K adapters
    in turn, and compare the last position's logits row by row with each adapter run alone (the whole batch,
    so the base layers see the same batch; run once per adapter for every K). ``min_adapter_effect``: how far
    each row's adapter is from the next adapter's (from the base model's when K = 1), the smallest over rows
    -- the check can fail only if the adapters differ. ``ok``: the relative error is within the dtype's
    tolerance and the adapters differ by more than ``SEPARATION`` times the error (adapters that do nothing
    fail). The model is left with ``active`` the adapter in use."""
    rows = ids.shape[0]
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    try:
        with torch.inference_mode():
            alone = {}
            for name in names[:max(ks)]:
                model.set_adapter(name)
                alone[name] = _last_logits(model, ids)
            with model.disable_adapter():
                base = _last_logits(model, ids)
            mixed = {k: _last_logits(model, ids, adapter_names=row_adapters(names, k, rows)) for k in ks}
    finally:
        model.set_adapter(active)
    return [_compare(mixed[k], alone, base, names, k, rows, TOLERANCE.get(dtype, 1e-1)) for k in ks]


def _compare(mixed: torch.Tensor, alone: dict[str, torch.Tensor], base: torch.Tensor, names: list[str], k: int,
             rows: int, tolerance: float) -> dict[str, Any]:
    wanted = row_adapters(names, k, rows)
    own = torch.stack([alone[a][r] for r, a in enumerate(wanted)])
    other = torch.stack([alone[names[(names.index(a) + 1) % k]][r] if k > 1 else base[r]
                         for r, a in enumerate(wanted)])
    scale = float(own.abs().max())
    error = float((mixed - own).abs().max())
    effect = float((own - other).abs().amax(dim=-1).min())
    relative = error / scale if scale else float("inf")
    return {"adapters": k, "rows": rows, "max_abs_error": round(error, 8), "relative_error": round(relative, 8),
            "min_adapter_effect": round(effect, 6), "tolerance": tolerance,
            "ok": relative <= tolerance and effect > SEPARATION * error}


def _last_logits(model: Any, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out.logits[:, -1].float()
