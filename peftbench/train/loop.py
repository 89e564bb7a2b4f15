"""The one training loop every method shares.

Same data order for a seed, same budget, AdamW with linear warm-up and cosine decay, gradient clipping
and accumulation, bf16 autocast on CUDA (fp32 on CPU), loss on the answer tokens only.

The ``fast`` loop (the default) adds, for every method alike: padding-free micro-batches (the same examples
packed into fewer rows, attention kept within each example), the LM head and loss a chunk of tokens at a
time (no full logits tensor; see ``peftbench.train.loss``), fused AdamW on CUDA and, on CUDA, ``torch.compile`` of
each transformer block; on request, activation checkpointing and bitsandbytes 8-bit or paged optimizers.
The ``naive`` loop (``loop=naive``, ``peftbench run --naive``) is the plain one: padded batches, the model's
own forward with full logits, no compilation. Each run records which optimisations were active
(``train.loop`` in the run file).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from peftbench.api.options import TrainConfig
from peftbench.api.records import TrainResult
from peftbench.errors import ConfigError
from peftbench.system.memory import PeakMemory
from peftbench.train.loss import fused_chunks, linear_cross_entropy


@dataclass
class TrainData:
    """Tokenized training examples: token ids and where the answer starts in each."""

    input_ids: list[list[int]]
    answer_start: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_pairs(pairs: list[tuple[str, str]], tokenizer: Any, max_length: int) -> TrainData:
    """Tokenize (prompt, answer) pairs as lm-eval does for scoring: the whole string, with the prompt's
    tokens as its prefix; no special tokens. Over-long examples lose tokens from the left."""
    prompts, wholes = [], []
    for prompt, answer in pairs:
        n_ws = len(prompt) - len(prompt.rstrip())  # lm-eval moves trailing spaces into the continuation
        if n_ws:
            prompt, answer = prompt[:-n_ws], prompt[-n_ws:] + answer
        prompts.append(prompt)
        wholes.append(prompt + answer)
    ids, starts = [], []
    chunk = 4096  # batched calls: a fast tokenizer encodes a list far quicker than one string at a time
    for lo in range(0, len(pairs), chunk):
        whole_ids = tokenizer(wholes[lo:lo + chunk], add_special_tokens=False)["input_ids"]
        ctx_ids = tokenizer(prompts[lo:lo + chunk], add_special_tokens=False)["input_ids"]
        for k, (whole, ctx) in enumerate(zip(whole_ids, ctx_ids, strict=True)):
            start = len(ctx)
            if start >= len(whole):
                raise ConfigError(f"a training example has an empty answer after tokenization: "
                                  f"{pairs[lo + k][0]!r} -> {pairs[lo + k][1]!r}")
            if len(whole) > max_length:
                cut = len(whole) - max_length
                whole, start = whole[cut:], max(1, start - cut)
            ids.append(list(whole))
            starts.append(start)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TrainData(ids, starts, int(pad))


def batches(data: TrainData, batch_size: int, seed: int, padding_free: bool = False):
    """Endless micro-batches in a seed-determined order (reshuffled each epoch), the same for every method
    and for either layout (``padding_free`` packs the same examples into fewer rows)."""
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        size = min(batch_size, len(order))
        for i in range(0, len(order) - size + 1, size):  # drop the ragged tail: every batch is full
            idx = order[i:i + size]
            yield epoch, (collate_packed(data, idx) if padding_free else collate(data, idx))
        epoch += 1


def collate(data: TrainData, idx: list[int]) -> dict[str, torch.Tensor]:
    """One row per example, right-padded to the longest, with an attention mask."""
    width = max(len(data.input_ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), data.pad_id, dtype=torch.long)
    attention = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = torch.tensor(data.input_ids[i])
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
        labels[row, data.answer_start[i]: len(seq)] = seq[data.answer_start[i]:]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pack_rows(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: positions of ``lengths`` grouped into rows no longer than the longest one."""
    width = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for j in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, space in enumerate(free):
            if lengths[j] <= space:
                rows[r].append(j)
                free[r] -= lengths[j]
                break
        else:
            rows.append([j])
            free.append(width - lengths[j])
    return rows


def collate_packed(data: TrainData, idx: list[int]) -> dict[str, torch.Tensor]:
    """The micro-batch's examples packed into as few rows as fit, without an attention mask: position ids
    restart at 0 for each example, and the model's mask builder reads the restarts as boundaries (a block-
    diagonal causal mask: no token attends across examples). A row's trailing padding continues the last
    example's positions; it comes after every real token of the row, so causal attention keeps it out of
    every real token's view, and it carries no label. When no row holds more than one example, the position
    ids are left out: they would be the model's default ones."""
    seqs = [data.input_ids[i] for i in idx]
    rows = pack_rows([len(q) for q in seqs])
    width = max(len(q) for q in seqs)
    input_ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        off = 0
        for j in row:
            seq, start = torch.tensor(seqs[j]), data.answer_start[idx[j]]
            n = len(seq)
            input_ids[r, off:off + n] = seq
            labels[r, off + start:off + n] = seq[start:]
            position_ids[r, off:off + n] = torch.arange(n)
            off += n
        if off < width:
            last = int(position_ids[r, off - 1])
            position_ids[r, off:] = torch.arange(last + 1, last + 1 + width - off)
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
             "num_tokens": torch.tensor(sum(len(q) for q in seqs))}
    if all(len(row) == 1 for row in rows):  # nothing packed: the positions are 0, 1, 2, ... in every row, the
        del batch["position_ids"]           # model's own; without them the mask builder does not look for
    return batch                            # packing on the GPU (a device-to-host sync every forward pass)


def lr_at(step: int, total: int, peak: float, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total`` steps."""
    warmup = int(total * warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _decoder_and_head(model: torch.nn.Module):
    """The transformer body and the LM head, so the head runs only where the loss needs it. ``None``
    when the model does not expose them (or a PEFT prompt-learning method needs its own forward)."""
    cfg = getattr(model, "active_peft_config", None)
    if cfg is not None and getattr(cfg, "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None  # the model transforms its logits after the head (Gemma 2 soft-capping, Cohere's scale)
    get_dec, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if not (callable(get_dec) and callable(get_head)):
        return None
    dec, head = get_dec(), get_head()
    return (dec, head) if dec is not None and head is not None else None


def _plain_linear(head: torch.nn.Module) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunked: bool = False,
                naive: bool = False) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (positions with a label). ``naive``: the model's own forward
    and full logits; ``chunked``: the head and the loss a chunk of tokens at a time (see ``peftbench.train.loss``)."""
    labels = batch["labels"][:, 1:]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = None if naive else _decoder_and_head(model)
    if parts is None:  # generic path: full logits
        logits = model(**inputs).logits
        keep = labels != -100
        return F.cross_entropy(logits[:, :-1][keep].float(), labels[keep])
    decoder, head = parts
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    if "label_index" in batch:  # the labelled positions, found on the host: no device-to-host sync here
        hidden, targets = hidden.flatten(0, 1).index_select(0, batch["label_index"]), batch["label_targets"]
    else:
        keep = labels != -100
        hidden, targets = hidden[:, :-1][keep], labels[keep]
    if chunked and _plain_linear(head):
        return linear_cross_entropy(hidden, head.weight, targets)
    return F.cross_entropy(head(hidden).float(), targets)


def label_positions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where a (batch x length) micro-batch has labels, computed on the host before it moves to the GPU:
    ``label_index``, the flat positions (row * length + t) of the hidden states that predict a label (t
    predicts t + 1), and ``label_targets``, those labels. Selecting with them needs no device-to-host sync,
    as a boolean mask would (its size is known only on the device)."""
    keep = labels[:, 1:] != -100
    rows, cols = keep.nonzero(as_tuple=True)
    return {"label_index": rows * labels.shape[1] + cols, "label_targets": labels[:, 1:][keep]}


def _blocks(decoder: torch.nn.Module | None) -> torch.nn.ModuleList | None:
    """The repeated transformer blocks (``decoder.layers``), or ``None``."""
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


COMPILE_BACKEND = "inductor"


def compile_blocks(blocks: torch.nn.ModuleList, dynamic: bool = False, mode: str = "default") -> None:
    """Regional compilation: each block compiled in place (one graph serves them all, since torch inlines
    built-in modules instead of guarding on each one). Cheaper to compile than the whole model, and the
    method's own layers (LoRA branches, adapters) inside a block are compiled with it. ``dynamic``: compile
    for symbolic batch and sequence sizes from the first call (examples of varying length), instead of one
    graph for the first shape and a recompilation when the next differs. ``mode``: torch.compile's mode
    ('reduce-overhead': CUDA graphs)."""
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND, dynamic=True if dynamic else None,
                      **({"mode": mode} if mode != "default" else {}))


def eager_rounding() -> Any:
    """Compiled kernels that round to bf16 where eager PyTorch does. Inductor otherwise keeps a fused chain's
    intermediates in fp32: more precise, but a different trajectory — LoRA on SmolLM2-135M in bf16 then
    learned visibly faster in its first steps than the same loop uncompiled, so the fast loop's loss curve
    no longer followed the naive one's. (Compilation happens at the first call, inside this context.)"""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(emulate_precision_casts=True)


def uncompile_blocks(blocks: torch.nn.ModuleList) -> None:
    for block in blocks:
        block._compiled_call_impl = None


def make_optimizer(name: str, params: list[torch.nn.Parameter], cfg: TrainConfig, device: str) -> tuple[Any, str]:
    """The optimizer and how it is recorded: AdamW, decoupled weight decay on matrices only."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        fused = device == "cuda"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused), \
            "torch AdamW" + (" (fused)" if fused else "")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError(f"train option optimizer={name!r} needs bitsandbytes (pip install bitsandbytes): {e}") from e
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw": bnb.optim.PagedAdamW}[name]
    return cls(groups, lr=cfg.lr, betas=(0.9, 0.999)), f"bitsandbytes {cls.__name__}"


COMPILE_MIN_STEPS = 500  # compile=auto compiles on CUDA only for runs of at least this many optimizer steps:
# on an H200, compiling SmolLM2-135M's blocks took 5-77 s (LoRA with dynamic shapes the most) and paid back
# after ~70 steps (bs16 x 512) to ~400-800 steps (SST-2's short examples), see docs/performance.md


# The fast loop moves every object alive after these optimizer steps (the model, compiled graphs, CUDA graph
# trees: all made in the first steps) to the collector's permanent generation, so a full collection later walks
# only what training makes since: on an H200 full collections took 0.7-0.9 s inside CUDA-graph steps of
# 40-70 ms (docs/performance.md). Unfrozen when training ends, with whatever was frozen before training: the
# GPU machine's Python starts with 375 objects frozen, and skipping the freeze whenever anything was frozen
# (as this loop did until 2026-11-30) skipped it on every GPU run; leaving objects frozen after training would
# keep the trained model's reference cycles from ever being collected, cell after cell. No collection is forced
# (that would cost the same 0.7 s); the naive loop is left as a first benchmark would write it.
GC_FREEZE_AFTER = (1, 3)


def plan_loop(model: torch.nn.Module, cfg: TrainConfig, device: str, steps: int | None = None) -> dict[str, Any]:
    """Which optimisations this run uses, and why any asked for is off (recorded in the run file).
    ``steps``: the run's planned optimizer steps (``compile=auto`` compiles only long runs)."""
    naive = cfg.loop == "naive"
    parts = _decoder_and_head(model)
    notes = []
    padding_free = not naive and cfg.padding_free and parts is not None
    chunked = not naive and cfg.chunked_loss and parts is not None and _plain_linear(parts[1])
    if not naive and parts is None and (cfg.padding_free or cfg.chunked_loss):
        notes.append("padding-free batches and the chunked loss need the model's decoder and head apart "
                     "(prompt-learning methods, and models that transform logits after the head, run their own "
                     "forward): off")
    elif not naive and cfg.chunked_loss and not chunked:
        notes.append("chunked loss: the LM head is not a plain bias-free Linear (e.g. adapted by the method): "
                     "plain loss")
    if padding_free:
        leak = packing_leak(model, parts[0])
        if leak is not None:
            padding_free = False
            notes.append(f"padding-free batches: off, this model's attention does not honour packed position ids "
                         f"({leak})")
    want_compile = not naive and (cfg.compile == "on" or (cfg.compile == "auto" and device == "cuda"))
    if want_compile and cfg.compile == "auto" and steps is not None and steps < COMPILE_MIN_STEPS:
        want_compile = False
        notes.append(f"compile: off (auto compiles runs of {COMPILE_MIN_STEPS}+ steps; this one plans {steps}, "
                     "too few to pay back the compilation; compile=on forces it)")
    blocks = _blocks(parts[0] if parts else None) if want_compile else None
    if want_compile and blocks is None:
        notes.append("compile: no repeated transformer blocks found: off")
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return {"loop": cfg.loop, "padding_free": padding_free, "chunked_loss": chunked,
            "compile": f"blocks x{len(blocks)}" if blocks is not None else "off",
            "gradient_checkpointing": cfg.gradient_checkpointing, "optimizer": cfg.optimizer, "attention": attn,
            "notes": notes, "_blocks": blocks}


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


def _checkpointing(model: torch.nn.Module, on: bool) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(f"train option gradient_checkpointing=true: {type(base).__name__} does not support "
                              "activation checkpointing; set gradient_checkpointing=false.")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif _is_checkpointing(base):
        base.gradient_checkpointing_disable()


def _is_checkpointing(model: torch.nn.Module) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # the newer name (transformers >= 5.2x)
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


def planned_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps of the budget (a token budget has no fixed count: it stops when the tokens are seen)."""
    if cfg.steps > 0:
        return cfg.steps
    if cfg.epochs > 0:
        per_step = min(cfg.batch_size, n_examples) * cfg.grad_accum
        return max(1, math.ceil(cfg.epochs * n_examples / per_step))
    return 10**9


def _step(model: torch.nn.Module, micro: list[dict[str, torch.Tensor]], cfg: TrainConfig, device: str,
          autocast: Any, loop: dict[str, Any]) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches: (loss, real tokens, computed positions).
    The loss is read back from the device once per step, not once per micro-batch (each read waits for the GPU)."""
    step_loss: Any = 0.0
    tokens, positions = 0, 0
    for batch in micro:
        n_real = int(batch["num_tokens"]) if "num_tokens" in batch else int(batch["attention_mask"].sum())
        if loop["loop"] != "naive":
            batch = {**batch, **label_positions(batch["labels"])}
        moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "num_tokens"}
        with autocast:
            loss = answer_loss(model, moved, chunked=loop["chunked_loss"], naive=loop["loop"] == "naive")
            loss = loss / cfg.grad_accum
        loss.backward()
        step_loss = step_loss + loss.detach()
        tokens += n_real
        positions += moved["input_ids"].numel()
    return float(step_loss), tokens, positions


def train(model: torch.nn.Module, params: list[torch.nn.Parameter], data: TrainData, cfg: TrainConfig,
          seed: int, device: str, on_step=None) -> TrainResult:
    """Train ``params`` of ``model`` on ``data`` for the budget in ``cfg``; return the figures."""
    if cfg.steps <= 0 and cfg.max_tokens <= 0 and cfg.epochs <= 0:
        raise ConfigError("no training budget: set steps (--set steps=N), epochs (--set epochs=X) or max_tokens "
                          "(--set max_tokens=N).")
    if not params:
        raise ConfigError("the method left no trainable parameters.")
    total = planned_steps(cfg, len(data))
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device == "cuda")
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16)
    loop = plan_loop(model, cfg, device, steps=total)
    blocks = loop.pop("_blocks")
    optimizer, loop["optimizer"] = make_optimizer(cfg.optimizer, params, cfg, device)
    loop["autocast"] = "bf16" if use_bf16 else None
    model.train()
    stream = batches(data, cfg.batch_size, seed, padding_free=loop["padding_free"])
    per_step = min(cfg.batch_size, len(data))
    losses: list[tuple[int, float]] = []
    tokens = positions = examples = 0
    epoch = 0
    diverged = False
    first_step_s = None
    lr_total = total if total < 10**9 else max(1, cfg.max_tokens // (cfg.batch_size * cfg.grad_accum * 32))
    _checkpointing(model, cfg.gradient_checkpointing)
    rounding: Any = contextlib.nullcontext()
    fused: Any = contextlib.nullcontext()
    graphs = False
    frozen_before = gc.get_freeze_count()  # by the interpreter's start-up or the caller: unfrozen with ours
    if blocks is not None:
        dynamic = len({len(x) for x in data.input_ids}) > 1  # batches of varying shape
        mode = cfg.compile_mode
        if mode == "reduce-overhead" and (dynamic or device != "cuda"):
            why = "batches vary in shape: a CUDA graph per shape" if dynamic else "CUDA graphs need a CUDA device"
            loop["notes"].append(f"compile_mode: reduce-overhead not used ({why}); default instead")
            mode = "default"
        graphs = mode == "reduce-overhead"
        compile_blocks(blocks, dynamic=dynamic, mode=mode)
        loop["compile"] += (", dynamic shapes" if dynamic else ", static shapes") + (
            ", CUDA graphs (reduce-overhead)" if mode == "reduce-overhead" else "")
        rounding = eager_rounding()
        loop["compile_rounding"] = "eager (inductor emulate_precision_casts)"
        if loop["chunked_loss"]:  # the chunks' softmax and gradient as one compiled kernel too
            fused = fused_chunks(COMPILE_BACKEND)
    try:
        with rounding, fused, PeakMemory(device) as mem:
            t0 = time.perf_counter()
            step = 0
            while step < total and not (cfg.max_tokens and tokens >= cfg.max_tokens):
                lr = lr_at(step, lr_total, cfg.lr, cfg.warmup_ratio, cfg.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro = []
                if graphs:  # CUDA graph trees: a new iteration begins (the last one's outputs may be overwritten)
                    torch.compiler.cudagraph_mark_step_begin()
                for _ in range(cfg.grad_accum):
                    epoch, batch = next(stream)
                    micro.append(batch)
                try:
                    step_loss, n_tok, n_pos = _step(model, micro, cfg, device, autocast, loop)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as e:  # a block the compiler cannot handle (at the first shape or a later
                    if blocks is None:  # one): record it, redo the step uncompiled; a real error fails again
                        raise
                    uncompile_blocks(blocks)
                    blocks, graphs = None, False
                    loop["compile"] = f"failed at step {step + 1}, off: {type(e).__name__}: {str(e)[:300]}"
                    optimizer.zero_grad(set_to_none=True)
                    step_loss, n_tok, n_pos = _step(model, micro, cfg, device, autocast, loop)
                tokens += n_tok
                positions += n_pos
                examples += per_step * cfg.grad_accum
                if not math.isfinite(step_loss):
                    diverged = True
                    losses.append((step, step_loss))
                    break
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step in GC_FREEZE_AFTER and loop["loop"] != "naive":
                    gc.freeze()
                    loop["gc"] = f"frozen after step{'s' if step > 1 else ''} " + " and ".join(
                        str(s) for s in GC_FREEZE_AFTER if s <= step) + (
                        f" ({frozen_before} objects frozen before training, unfrozen with them at the end)"
                        if frozen_before else "")
                if step == 1:
                    if device == "cuda":
                        torch.cuda.synchronize()
                    first_step_s = round(time.perf_counter() - t0, 3)
                if step % cfg.log_every == 0 or step == total:
                    losses.append((step, round(step_loss, 6)))
                if on_step is not None:
                    on_step(step, {"loss": step_loss, "lr": lr, "tokens": tokens,
                                   "elapsed_s": time.perf_counter() - t0})
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
    finally:  # the model leaves training as it came: evaluation and latency time the plain modules
        if "gc" in loop:
            gc.unfreeze()
        if blocks is not None:
            uncompile_blocks(blocks)
            torch._dynamo.reset()
        _checkpointing(model, False)
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    loop["padding_fraction"] = round(1 - tokens / positions, 4) if positions else None
    if loop["chunked_loss"]:
        loop["chunked_loss_kernel"] = getattr(fused, "status", "eager")
    return TrainResult(steps=step, tokens=tokens, examples=examples, epochs=round(examples / max(1, len(data)), 4),
                       wall_time_s=round(wall, 3), tokens_per_s=round(tokens / wall, 1) if wall > 0 else 0.0,
                       peak_memory_bytes=mem.peak, peak_memory_kind=mem.kind, lr=cfg.lr, losses=losses,
                       final_loss=losses[-1][1] if losses else float("nan"), diverged=diverged,
                       first_step_s=first_step_s, loop=loop)
