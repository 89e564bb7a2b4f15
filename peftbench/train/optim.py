"""The optimizer and its schedule: the step budget, AdamW (torch, or bitsandbytes on request), linear warm-up
then cosine decay."""

from __future__ import annotations

import math
from typing import Any

import torch

from peftbench.errors import ConfigError
from peftbench.train.config import TrainConfig

NO_STEP_LIMIT = 10**9  # the planned steps of a token budget: it stops when its tokens are seen
SCHEDULE_TOKENS_PER_EXAMPLE = 32  # what a token budget's lr schedule assumes, having no step count to decay over


def check_budget(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> None:
    """A clear error before anything runs when there is no budget or nothing to train."""
    if cfg.steps <= 0 and cfg.max_tokens <= 0 and cfg.epochs <= 0:
        raise ConfigError("no training budget: set steps (--set steps=N), epochs (--set epochs=X) or max_tokens "
                          "(--set max_tokens=N).")
    if not params:
        raise ConfigError("the method left no trainable parameters.")


def planned_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps of the budget (a token budget has no fixed count: it stops when the tokens are seen)."""
    if cfg.steps > 0:
        return cfg.steps
    if cfg.epochs > 0:
        per_step = min(cfg.batch_size, n_examples) * cfg.grad_accum
        return max(1, math.ceil(cfg.epochs * n_examples / per_step))
    return NO_STEP_LIMIT


def schedule_steps(cfg: TrainConfig, planned: int) -> int:
    """The steps the learning-rate schedule spans: the planned ones, or a token budget's estimate."""
    if planned < NO_STEP_LIMIT:
        return planned
    return max(1, cfg.max_tokens // (cfg.batch_size * cfg.grad_accum * SCHEDULE_TOKENS_PER_EXAMPLE))


def lr_at(step: int, total: int, peak: float, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total`` steps."""
    warmup = int(total * warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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
