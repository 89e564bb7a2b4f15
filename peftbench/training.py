"""The one training loop every method shares.

Same data order for a seed, same budget, AdamW with linear warm-up and cosine decay, gradient clipping
and accumulation, bf16 autocast on CUDA (fp32 on CPU), loss on the answer tokens only. The language-model
head runs only at answer positions, so no (batch x length x vocab) logits tensor is ever built.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .errors import ConfigError
from .memory import PeakMemory
from .records import TrainResult


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


def batches(data: TrainData, batch_size: int, seed: int):
    """Endless micro-batches in a seed-determined order (reshuffled each epoch), the same for every method."""
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        size = min(batch_size, len(order))
        for i in range(0, len(order) - size + 1, size):  # drop the ragged tail: every batch is full
            yield epoch, collate(data, order[i:i + size])
        epoch += 1


def collate(data: TrainData, idx: list[int]) -> dict[str, torch.Tensor]:
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
    get_dec, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if not (callable(get_dec) and callable(get_head)):
        return None
    dec, head = get_dec(), get_head()
    return (dec, head) if dec is not None and head is not None else None


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (positions with a label)."""
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    parts = _decoder_and_head(model)
    if parts is None:  # generic path: full logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1][keep].float(), labels[keep])
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep])


def planned_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps of the budget (a token budget has no fixed count: it stops when the tokens are seen)."""
    if cfg.steps > 0:
        return cfg.steps
    if cfg.epochs > 0:
        per_step = min(cfg.batch_size, n_examples) * cfg.grad_accum
        return max(1, math.ceil(cfg.epochs * n_examples / per_step))
    return 10**9


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
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.999), fused=(device == "cuda"))
    model.train()
    stream = batches(data, cfg.batch_size, seed)
    losses: list[tuple[int, float]] = []
    tokens = examples = 0
    epoch = 0
    diverged = False
    lr_total = total if total < 10**9 else max(1, cfg.max_tokens // (cfg.batch_size * cfg.grad_accum * 32))
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        step = 0
        while step < total and not (cfg.max_tokens and tokens >= cfg.max_tokens):
            lr = lr_at(step, lr_total, cfg.lr, cfg.warmup_ratio, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                epoch, batch = next(stream)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    loss = answer_loss(model, batch) / cfg.grad_accum
                loss.backward()
                step_loss += loss.item()
                tokens += int(batch["attention_mask"].sum())
                examples += batch["input_ids"].shape[0]
            if not math.isfinite(step_loss):
                diverged = True
                losses.append((step, step_loss))
                break
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.log_every == 0 or step == total:
                losses.append((step, round(step_loss, 6)))
            if on_step is not None:
                on_step(step, {"loss": step_loss, "lr": lr, "tokens": tokens,
                               "elapsed_s": time.perf_counter() - t0})
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    return TrainResult(steps=step, tokens=tokens, examples=examples, epochs=round(examples / max(1, len(data)), 4),
                       wall_time_s=round(wall, 3), tokens_per_s=round(tokens / wall, 1) if wall > 0 else 0.0,
                       peak_memory_bytes=mem.peak, peak_memory_kind=mem.kind, lr=cfg.lr, losses=losses,
                       final_loss=losses[-1][1] if losses else float("nan"), diverged=diverged)
