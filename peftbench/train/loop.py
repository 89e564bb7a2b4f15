"""The one training loop every method shares.

Same data order for a seed, same budget, AdamW with linear warm-up and cosine decay, gradient clipping
and accumulation, bf16 autocast on CUDA (fp32 on CPU), loss on the answer tokens only.

The ``fast`` loop (the default) adds, for every method alike: padding-free micro-batches (the same examples
packed into fewer rows, attention kept within each example; ``peftbench.train.batching``) and, with compiled
blocks on CUDA, bucketed in a few fixed shapes (``peftbench.train.buckets``), the LM head and
loss a chunk of tokens at a time (no full logits tensor; ``peftbench.train.loss``), fused AdamW on CUDA and,
on CUDA, ``torch.compile`` of each transformer block (``peftbench.train.compiling``); on request, activation
checkpointing and bitsandbytes 8-bit or paged optimizers. The ``naive`` loop (``loop=naive``,
``peftbench run --naive``) is the plain one: padded batches, the model's own forward with full logits, no
compilation. Each run records which optimisations were active (``train.loop`` in the run file; decided by
``peftbench.train.plan``).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice
from typing import Any

import torch

from peftbench.api.records import TrainResult
from peftbench.errors import ConfigError
from peftbench.system.memory import PeakMemory
from peftbench.train.batching import TrainData, batches, label_positions, real_tokens
from peftbench.train.buckets import Buckets, plan_buckets
from peftbench.train.compiling import CompiledBlocks
from peftbench.train.config import TrainConfig
from peftbench.train.distributed import World, head_is_tied, rank_batches, reduce_mean_loss
from peftbench.train.loss import answer_loss
from peftbench.train.optim import check_budget, lr_at, make_optimizer, planned_steps, schedule_steps, set_lr
from peftbench.train.plan import plan_loop


def train(model: torch.nn.Module, params: list[torch.nn.Parameter], data: TrainData, cfg: TrainConfig,
          seed: int, device: str, on_step: Callable[[int, dict[str, Any]], None] | None = None,
          world: World | None = None) -> TrainResult:
    """Train ``params`` of ``model`` on ``data`` for the budget in ``cfg``; return the figures. ``world``: the
    processes training ``model`` together, sharded (``peftbench.train.distributed.shard_model``): each takes its
    share of every micro-batch and the step's loss is reduced over them."""
    check_budget(cfg, params)
    world = world if world is not None and world.grouped else None
    whole_forward = world is not None and head_is_tied(model)  # sharded with the embeddings: the model's own forward
    total = planned_steps(cfg, len(data))
    lr_total = schedule_steps(cfg, total)

    # what this run uses: recorded in its run file (train.loop)
    loop = plan_loop(model, cfg, device, steps=total, sharded=world is not None)
    blocks = loop.pop("_blocks")
    optimizer, loop["optimizer"] = make_optimizer(cfg.optimizer, params, cfg, device)
    autocast, loop["autocast"] = _autocast(cfg.dtype, device)
    forward_backward = partial(_forward_backward, model, device=device, autocast=autocast, grad_accum=cfg.grad_accum,
                               naive=cfg.loop == "naive" or whole_forward, chunked=loop["chunked_loss"])

    buckets = plan_buckets(data, cfg.batch_size, seed, total * cfg.grad_accum) if loop["bucketing"] else None
    stream = _micro_batches(data, cfg, seed, padding_free=loop["padding_free"], layout=buckets, world=world)
    examples_per_step = min(cfg.batch_size, len(data)) * cfg.grad_accum
    losses: list[tuple[int, float]] = []
    tokens = positions = own_tokens = examples = step = 0  # (own: this rank's share, under a world)
    diverged, first_step_s = False, None
    with training_mode(model, cfg.gradient_checkpointing), \
            CompiledBlocks(blocks, data, cfg.compile_mode, device, record=loop,
                           shapes=buckets.shapes if buckets else None) as compiled, \
            CollectorFreeze(enabled=cfg.loop != "naive", record=loop) as collector, PeakMemory(device) as mem:
        t0 = time.perf_counter()
        while step < total and not (cfg.max_tokens and tokens >= cfg.max_tokens):
            lr = lr_at(step, lr_total, cfg.lr, cfg.warmup_ratio, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            compiled.begin_step()
            micro = next(stream)
            step_loss, n_tok, n_pos, n_own = compiled.run_step(step, partial(forward_backward, micro),
                                                        before_retry=partial(optimizer.zero_grad, set_to_none=True))
            if world is not None:  # each rank's weighted share of the loss: the step's, the same on every rank
                step_loss = reduce_mean_loss(step_loss, world)
            tokens, positions, examples = tokens + n_tok, positions + n_pos, examples + examples_per_step
            own_tokens += n_own
            diverged = not math.isfinite(step_loss)
            if diverged:  # recorded with the step it happened in, and the run stops
                losses.append((step, step_loss))
                break
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # bookkeeping: the collector, the first step's time, the loss curve, the caller's hook
            collector.after_step(step)
            if step == 1:
                first_step_s = round(_seconds_since(t0, device), 3)
            if step % cfg.log_every == 0 or step == total:
                losses.append((step, round(step_loss, 6)))
            if on_step is not None:
                on_step(step, {"loss": step_loss, "lr": lr, "tokens": tokens, "elapsed_s": time.perf_counter() - t0})
        wall = _seconds_since(t0, device)

    optimizer.zero_grad(set_to_none=True)
    loop["padding_fraction"] = round(1 - own_tokens / positions, 4) if positions else None  # (rank 0's, sharded)
    if buckets is not None:
        loop["bucketing"] = buckets.record()
    if loop["chunked_loss"]:
        loop["chunked_loss_kernel"] = compiled.loss_kernel
    return TrainResult(steps=step, tokens=tokens, examples=examples, epochs=round(examples / max(1, len(data)), 4),
                       wall_time_s=round(wall, 3), tokens_per_s=round(tokens / wall, 1) if wall > 0 else 0.0,
                       peak_memory_bytes=mem.peak, peak_memory_kind=mem.kind, lr=cfg.lr, losses=losses,
                       final_loss=losses[-1][1] if losses else float("nan"), diverged=diverged,
                       first_step_s=first_step_s, loop=loop)


def _micro_batches(data: TrainData, cfg: TrainConfig, seed: int, padding_free: bool, layout: Buckets | None = None,
                   world: World | None = None) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Each optimizer step's ``grad_accum`` micro-batches, drawn in order from ``batches``; with a ``world``,
    this rank's share of each (``rank_batches``: the same examples in the same order, split over the ranks)."""
    if world is not None:
        shares = rank_batches(data, cfg.batch_size, seed, world, padding_free)
        while True:
            yield list(islice(shares, cfg.grad_accum))
    stream = batches(data, cfg.batch_size, seed, padding_free=padding_free, layout=layout)
    while True:
        yield [batch for _, batch in islice(stream, cfg.grad_accum)]


def _forward_backward(model: torch.nn.Module, micro: list[dict[str, torch.Tensor]], device: str, autocast: Any,
                      grad_accum: int, naive: bool, chunked: bool) -> tuple[float, int, int, int]:
    """Forward and backward over one optimizer step's micro-batches: (loss, real tokens, computed positions,
    real tokens among them: the same as the second but for a rank's share).
    The loss is read back from the device once per step, not once per micro-batch (each read waits for the GPU).
    A rank's share of a micro-batch (``rank_share``) carries its ``loss_weight`` and the whole micro-batch's
    ``global_tokens``."""
    step_loss: Any = 0.0
    tokens, positions, own = 0, 0, 0
    for batch in micro:
        weight = batch.get("loss_weight")
        n_real = int(batch["global_tokens"]) if "global_tokens" in batch else real_tokens(batch)
        if not naive:
            batch = {**batch, **label_positions(batch["labels"])}
        moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()
                 if k not in ("num_tokens", "loss_weight", "global_tokens")}
        with autocast:
            loss = answer_loss(model, moved, chunked=chunked, naive=naive)
            if weight is not None:
                loss = loss * weight.to(device)
            loss = loss / grad_accum
        loss.backward()
        step_loss = step_loss + loss.detach()
        tokens += n_real
        own += real_tokens(batch)
        positions += moved["input_ids"].numel()
    return float(step_loss), tokens, positions, own


def _autocast(dtype: str, device: str) -> tuple[Any, str | None]:
    """The autocast context for ``dtype`` (bf16 on CUDA for 'auto', fp32 on CPU) and how it is recorded."""
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device == "cuda")
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16), "bf16" if use_bf16 else None


def _seconds_since(t0: float, device: str) -> float:
    """Seconds since ``t0``, once the device has finished the work queued so far."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@contextlib.contextmanager
def training_mode(model: torch.nn.Module, checkpointing: bool) -> Iterator[None]:
    """Context: ``model`` in training mode, with activation checkpointing as asked; after it, checkpointing
    off whatever it was before (evaluation and latency time the plain modules), and, once training has
    finished, evaluation mode."""
    model.train()
    _set_checkpointing(model, checkpointing)
    try:
        yield
    finally:
        _set_checkpointing(model, False)
    model.eval()


def _set_checkpointing(model: torch.nn.Module, on: bool) -> None:
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


# The fast loop moves every object alive after these optimizer steps (the model, compiled graphs, CUDA graph
# trees: all made in the first steps) to the collector's permanent generation, so a full collection later walks
# only what training makes since: on an H200 full collections took 0.7-0.9 s inside CUDA-graph steps of
# 40-70 ms (docs/performance.md). Unfrozen when training ends, with whatever was frozen before training: the
# GPU machine's Python starts with 375 objects frozen, and skipping the freeze whenever anything was frozen
# (as this loop did until 2026-11-30) skipped it on every GPU run; leaving objects frozen after training would
# keep the trained model's reference cycles from ever being collected, cell after cell. No collection is forced
# (that would cost the same 0.7 s); the naive loop is left as a first benchmark would write it.
GC_FREEZE_AFTER = (1, 3)


class CollectorFreeze:
    """Context: ``after_step(step)`` freezes the garbage collector's objects after the steps in
    ``GC_FREEZE_AFTER`` and says so in ``record`` (the run's loop record, under 'gc'); on exit everything
    frozen is unfrozen. ``enabled=False``: it does nothing."""

    def __init__(self, enabled: bool, record: dict[str, Any]) -> None:
        self.enabled, self.record = enabled, record
        self.froze, self.frozen_before = False, 0

    def __enter__(self) -> CollectorFreeze:
        self.frozen_before = gc.get_freeze_count()  # by the interpreter's start-up or the caller
        return self

    def after_step(self, step: int) -> None:
        """Freeze if ``step`` (counted from 1) is one of ``GC_FREEZE_AFTER``."""
        if not self.enabled or step not in GC_FREEZE_AFTER:
            return
        gc.freeze()
        self.froze = True
        note = f"frozen after step{'s' if step > 1 else ''} " + " and ".join(
            str(s) for s in GC_FREEZE_AFTER if s <= step)
        if self.frozen_before:
            note += f" ({self.frozen_before} objects frozen before training, unfrozen with them at the end)"
        self.record["gc"] = note

    def __exit__(self, *exc: Any) -> None:
        if self.froze:
            gc.unfreeze()
