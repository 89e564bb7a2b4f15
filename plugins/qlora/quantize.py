"""Swap a model's linear layers for bitsandbytes 4-bit ones, and back (dequantized)."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _parent(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def quantize_linears(model: torch.nn.Module, quant_type: str, double_quant: bool, compute_dtype: torch.dtype,
                     skip: tuple[torch.nn.Module, ...] = ()) -> int:
    """Replace every ``nn.Linear`` except those in ``skip`` (the LM head) by a frozen ``Linear4bit``; the
    weights are quantized as they move to the model's device. Returns the number replaced."""
    import bitsandbytes as bnb

    storage = sharded_storage()
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is not torch.nn.Linear or any(module is s for s in skip):
            continue
        device = module.weight.device
        q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=double_quant,
                              quant_type=quant_type, quant_storage=storage, device="meta")
        q.weight = bnb.nn.Params4bit(module.weight.data.detach().to("cpu", torch.float32).contiguous(),
                                     requires_grad=False, compress_statistics=double_quant, quant_type=quant_type,
                                     quant_storage=storage)
        if module.bias is not None:
            q.bias = torch.nn.Parameter(module.bias.data.detach().clone(), requires_grad=False)
        # bitsandbytes >= 0.50 repacks a 4-bit weight for its AVX512-BF16 kernel at the first no-grad forward
        # on such a CPU, and unpacks it, lossily, whenever state_dict() reads it: reading (or saving) the model
        # would change it. peftbench keeps the one layout (CUDA is not affected).
        if hasattr(q, "support_avx512bf16_for_cpu"):
            q.support_avx512bf16_for_cpu = False
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, q.to(device))
        count += 1
    return count


def sharded_storage() -> torch.dtype:
    """The dtype the packed 4-bit bytes are stored as: bf16 elements where several processes train the model
    sharded (a process group is up: torchrun), because FSDP's bf16 mixed precision casts every stored
    tensor to bf16 and would corrupt ``uint8`` bytes, but leaves bf16 ones alone (what FSDP-QLoRA does); the
    same bits, so the same forward (checked on the CPU: identical outputs). ``uint8`` otherwise."""
    import torch.distributed as dist

    return torch.bfloat16 if dist.is_available() and dist.is_initialized() else torch.uint8


def dequantize(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Linear:
    """An ``nn.Linear`` (frozen) holding a ``Linear4bit``'s dequantized weight: it computes what the 4-bit
    layer computes, in ``dtype``."""
    import bitsandbytes as bnb

    data, state = module.weight.data, module.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        # bitsandbytes repacks a 4-bit weight in place for its CPU kernel the first time the layer runs in
        # eval mode; dequantize_4bit needs the standard layout back
        import copy

        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

        data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))  # it mutates
    w = bnb.functional.dequantize_4bit(data, state).to(dtype)
    lin = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device=w.device, dtype=dtype)
    lin.weight = torch.nn.Parameter(w, requires_grad=False)
    if module.bias is not None:
        lin.bias = torch.nn.Parameter(module.bias.data.to(dtype), requires_grad=False)
    return lin
