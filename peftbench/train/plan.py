"""Which of the fast loop's optimisations a run uses, decided before it trains and recorded in its run file
(``train.loop``), with the reason for any asked for that is off."""

from __future__ import annotations

from typing import Any

import torch

from peftbench.train.config import TrainConfig
from peftbench.train.loss import decoder_and_head, is_plain_linear

COMPILE_MIN_STEPS = 500  # compile=auto compiles on CUDA only for runs of at least this many optimizer steps:
# on an H200, compiling SmolLM2-135M's blocks for dynamic shapes took 5-77 s (LoRA the most) and paid back
# after ~70 steps (bs16 x 512) to ~400-800 steps (SST-2's short examples), see docs/performance.md
COMPILE_MIN_STEPS_BUCKETED = 250  # the same with bucketing (a few static shapes): a static graph compiled in
# 2.4-11 s per shape on the H200 (first step of fast / fast-graphs at 16 x 512), at most
# buckets.MAX_WIDTHS + 1 shapes, served from torch's on-disk caches in later sessions and kept across a
# session's cells; CUDA graphs then cut SST-2-like steps several-fold. An estimate until measured on real
# data (docs/performance.md): lower it, or raise it, from that measurement.


def plan_loop(model: torch.nn.Module, cfg: TrainConfig, device: str, steps: int | None = None,
              sharded: bool = False) -> dict[str, Any]:
    """Which optimisations this run uses, and why any asked for is off (recorded in the run file).
    ``steps``: the run's planned optimizer steps (``compile=auto`` compiles only long runs). ``sharded``: the
    model is sharded over several processes (FSDP2), where bucketing and compilation are off, and the chunked
    loss too if the head trains. ``bucketing``: whether the loop lays its micro-batches out in buckets (the loop
    replaces it with the layout's record). ``_blocks``: the transformer blocks to compile (``None``: none), for
    the loop, not the record."""
    naive = cfg.loop == "naive"
    parts = decoder_and_head(model)
    notes = []
    padding_free = not naive and cfg.padding_free and parts is not None
    trained_head = parts is not None and any(p.requires_grad for p in parts[1].parameters())
    chunked = not naive and cfg.chunked_loss and parts is not None and is_plain_linear(parts[1]) and not (
        sharded and trained_head)
    if not naive and parts is None and (cfg.padding_free or cfg.chunked_loss):
        notes.append("padding-free batches and the chunked loss need the model's decoder and head apart "
                     "(prompt-learning methods, and models that transform logits after the head, run their own "
                     "forward): off")
    elif not naive and cfg.chunked_loss and sharded and trained_head and is_plain_linear(parts[1]):
        notes.append("chunked loss: off on a sharded model whose LM head trains (the loss computes the head's "
                     "gradient itself, which FSDP would not reduce over the ranks): the head in one piece")
    elif not naive and cfg.chunked_loss and not chunked:
        notes.append("chunked loss: the LM head is not a plain bias-free Linear (e.g. adapted by the method): "
                     "plain loss")
    if padding_free:
        leak = packing_leak(model, parts[0])
        if leak is not None:
            padding_free = False
            notes.append(f"padding-free batches: off, this model's attention does not honour packed position ids "
                         f"({leak})")
    bucketable = padding_free and cfg.bucketing != "off" and not sharded
    if not naive and cfg.bucketing == "on" and not padding_free:
        notes.append("bucketing: builds on padding-free batches, which are off here: off")
    elif not naive and cfg.bucketing == "on" and sharded:
        notes.append("bucketing: not yet with several processes (each rank draws its share of a micro-batch): off")
    want_compile = not naive and (cfg.compile == "on" or (cfg.compile == "auto" and device == "cuda"))
    if want_compile and sharded:
        want_compile = False
        if cfg.compile == "on":
            notes.append("compile: not yet tried on a sharded model (FSDP2): off")
    min_steps = COMPILE_MIN_STEPS_BUCKETED if bucketable else COMPILE_MIN_STEPS
    if want_compile and cfg.compile == "auto" and steps is not None and steps < min_steps:
        want_compile = False
        notes.append(f"compile: off (auto compiles runs of {min_steps}+ steps{' with bucketing' if bucketable else ''}; "
                     f"this one plans {steps}, too few to pay back the compilation; compile=on forces it)")
    blocks = transformer_blocks(parts[0] if parts else None) if want_compile else None
    if want_compile and blocks is None:
        notes.append("compile: no repeated transformer blocks found: off")
    # bucketing: asked for, or (auto) where it lets compiled blocks run static graphs on CUDA
    bucketing = bucketable and (cfg.bucketing == "on" or (blocks is not None and device == "cuda"))
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return {"loop": cfg.loop, "padding_free": padding_free, "bucketing": bucketing, "chunked_loss": chunked,
            "compile": f"blocks x{len(blocks)}" if blocks is not None else "off",
            "gradient_checkpointing": cfg.gradient_checkpointing, "optimizer": cfg.optimizer, "attention": attn,
            "notes": notes, "_blocks": blocks}


def transformer_blocks(decoder: torch.nn.Module | None) -> torch.nn.ModuleList | None:
    """The repeated transformer blocks (``decoder.layers``), or ``None``."""
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


def packing_leak(model: torch.nn.Module, decoder: torch.nn.Module) -> str | None:
    """Check on the model itself that packing keeps examples apart: a short sequence packed behind one
    sequence has the same hidden states as packed behind another. ``None`` when it does, else what
    differed. (An architecture whose attention builds its own mask would otherwise let packed examples see
    each other.) Both packed rows have the same shape, so kernels that round differently by the number of
    tokens (4-bit matmuls do) cannot pass for a leak, as a comparison with the sequence alone could."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab < 20:
        return None
    param = next(model.parameters())
    g = torch.Generator().manual_seed(0)
    a1, a2, b = (torch.randint(10, vocab - 1, (1, 6), generator=g).to(param.device) for _ in range(3))
    pos = torch.arange(6, device=param.device)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            after = [decoder(input_ids=torch.cat([a, b], 1), position_ids=torch.cat([pos, pos], 1),
                             use_cache=False).last_hidden_state[:, 6:].float() for a in (a1, a2)]
    except Exception as e:  # a decoder that does not take position ids: no packing
        return f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        model.train(was_training)
    rel = float((after[0] - after[1]).abs().max() / after[0].abs().max().clamp_min(1e-6))
    return None if rel < 0.01 else (f"a packed example's hidden states change by {rel:.0%} of their scale when the "
                                    "example packed before it changes")
