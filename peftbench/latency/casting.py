"""The dtype models are timed in, and casting a model to it without touching quantized weights."""

from __future__ import annotations

from typing import Any

import torch

QUANTIZED_PARAMETERS = ("Params4bit", "Int8Params")  # bitsandbytes: storage is packed integers, never cast


def cast_floating(model: Any, dtype: torch.dtype) -> Any:
    """Cast a model's floating-point parameters and buffers to ``dtype``, leaving quantized weights (e.g.
    bitsandbytes 4-bit, whose storage is packed integers) alone."""
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if p.is_floating_point() and type(p).__name__ not in QUANTIZED_PARAMETERS and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != dtype and "inv_freq" not in name:
                module._buffers[name] = b.to(dtype)  # rotary inv_freq stays fp32, as transformers keeps it
    return model


def latency_dtype(name: str, device: str) -> torch.dtype:
    """'auto': bf16 on CUDA (how models are served), fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]
