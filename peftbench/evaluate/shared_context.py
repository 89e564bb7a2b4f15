"""Loglikelihood requests that share a context, scored in one row: the context once, then each continuation.

lm-eval scores every (context, continuation) request as a sequence of its own, so a four-way multiple-choice
question runs its question through the model four times; on a CPU, where scoring is bound by compute, that is
most of a cell's evaluation. Here the requests with the same context tokens are packed into one row: the
context, then each continuation's tokens but its last, with position ids that restart every continuation
where the context ends and a 4D attention mask that lets a continuation see the context and itself only.
Each token's logits are then the ones lm-eval's own row would give it (the same tokens before it, at the same
positions), and the log-probabilities are taken as lm-eval takes them: log-softmax in ``softmax_dtype`` at
the continuation's positions, summed, with the greedy check.

A model whose attention does not honour the mask (flash attention, prompt-learning methods that prepend
virtual tokens) would give other numbers, so every ``score`` first checks its first requests against lm-eval's
own path and falls back to it, with the reason, when they disagree or the packed forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Request = tuple[Any, list[int], list[int]]  # lm-eval's (request key, context tokens, continuation tokens)
Answer = tuple[float, bool]  # (log-probability of the continuation, whether it is the greedy one)

CHECK_GROUPS = 3  # contexts (with all their continuations) checked against lm-eval's path before scoring
TOLERANCE = 1e-4  # |log-probability difference| allowed by the check, relative to max(1, |log-probability|)


@dataclass
class Row:
    """One packed row: tokens, their position ids and segments (0: the context; k: continuation k)."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    # per request: (its index, where its predicting logits sit in the row, its continuation tokens)
    placed: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


def pack(requests: Sequence[Request], max_length: int) -> tuple[list[Row], list[int]]:
    """Rows of requests grouped by context (a context whose continuations do not fit ``max_length`` tokens
    together starts another row), and the indices of the requests left to lm-eval's own path: those it
    truncates from the left (context and continuation longer than ``max_length + 1``)."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    left = []
    for i, (_, context, continuation) in enumerate(requests):
        if not context or not continuation or len(context) + len(continuation) > max_length + 1:
            left.append(i)
        else:
            by_context.setdefault(tuple(context), []).append(i)
    rows = []
    for context, members in by_context.items():
        row = None
        for i in members:
            tail = requests[i][2][:-1]  # the last token is only predicted, never fed (as in lm-eval)
            if row is None or len(row.tokens) + len(tail) > max_length:
                row = Row(list(context), list(range(len(context))), [0] * len(context))
                rows.append(row)
            start = len(row.tokens)
            row.tokens += tail
            row.positions += range(len(context), len(context) + len(tail))
            row.segments += [len(row.placed) + 1] * len(tail)
            row.placed.append((i, [len(context) - 1, *range(start, start + len(tail))], requests[i][2]))
    return rows, left


def attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D mask (batch, 1, query, key) of packed rows: causal, a continuation sees the context
    (segment 0) and itself, padding (segment -1) is seen by nothing. Every query sees at least the row's first
    token, a context one, so no row of the mask is empty (which would give NaNs); padding's outputs are never
    read. Additive, not boolean: eager and SDPA attention both add it to their scores."""
    idx = torch.arange(segments.shape[1], device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    key_seg, query_seg = segments[:, None, :], segments[:, :, None]
    allowed = causal & ((key_seg == query_seg) | (key_seg == 0)) & (key_seg >= 0)
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def score_rows(model: torch.nn.Module, rows: list[Row], n_requests: int, batch_size: int, device: Any,
               softmax_dtype: torch.dtype | None) -> list[Answer | None]:
    """Each placed request's answer, by index (``None`` for requests in no row). Rows are batched longest
    first, ``batch_size`` at a time, right-padded."""
    answers: list[Answer | None] = [None] * n_requests
    order = sorted(rows, key=lambda r: -len(r.tokens))
    dtype = next(model.parameters()).dtype
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(batch[0].tokens)
        ids = torch.tensor([r.tokens + [0] * (width - len(r.tokens)) for r in batch], device=device)
        pos = torch.tensor([r.positions + [0] * (width - len(r.tokens)) for r in batch], device=device)
        seg = torch.tensor([r.segments + [-1] * (width - len(r.tokens)) for r in batch], device=device)
        mask_dtype = dtype if dtype.is_floating_point else torch.float32
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention_mask(seg, mask_dtype), position_ids=pos).logits
        for b, row in enumerate(batch):
            for i, at, continuation in row.placed:
                picked = torch.log_softmax(logits[b, at].to(softmax_dtype or logits.dtype), dim=-1)
                target = torch.tensor(continuation, device=picked.device)
                answers[i] = (float(picked.gather(1, target[:, None]).sum()),
                              bool((picked.argmax(-1) == target).all()))
    return answers


class SharedContextScorer:
    """``score`` stands in for HFLM's ``_loglikelihood_tokens``; ``record()`` says what it did, for the run file."""

    def __init__(self, model: torch.nn.Module, batch_size: int, device: Any, max_length: int,
                 softmax_dtype: torch.dtype | None):
        self.model, self.batch_size, self.device = model, batch_size, device
        self.max_length, self.softmax_dtype = max_length, softmax_dtype
        self.requests = self.forward_rows = self.by_lm_eval = 0
        self.checked, self.max_diff, self.fallback = 0, 0.0, None

    def score(self, requests: Sequence[Request], lm_eval_path: Callable[[list[Request]], list[Answer]]
              ) -> list[Answer]:
        """The answers of ``requests`` in their order; ``lm_eval_path`` scores a list of them lm-eval's way."""
        if self.fallback is not None:
            return self._by_lm_eval(requests, lm_eval_path)
        rows, left = pack(requests, self.max_length)
        try:
            answers = score_rows(self.model, rows, len(requests), self.batch_size, self.device, self.softmax_dtype)
        except Exception as e:  # a model that takes no position ids or 4D mask: lm-eval's path, with the reason
            self.fallback = f"the packed forward raised {type(e).__name__}: {str(e)[:200]}"
            return self._by_lm_eval(requests, lm_eval_path)
        if not self._agrees(rows, requests, answers, lm_eval_path):
            return self._by_lm_eval(requests, lm_eval_path)
        if left:
            for i, answer in zip(left, lm_eval_path([requests[i] for i in left]), strict=True):
                answers[i] = answer
        self.requests += len(requests)
        self.forward_rows += len(rows)
        self.by_lm_eval += len(left)
        return answers  # every index is filled: placed in a row or left to lm-eval

    def _agrees(self, rows: list[Row], requests: Sequence[Request], answers: list[Answer | None],
                lm_eval_path: Callable[[list[Request]], list[Answer]]) -> bool:
        """Whether the first ``CHECK_GROUPS`` rows' answers are lm-eval's own (checked once per scorer)."""
        if self.checked or not rows:
            return True
        sample = [i for row in rows[:CHECK_GROUPS] for i, _, _ in row.placed]
        theirs = lm_eval_path([requests[i] for i in sample])
        for i, (logprob, greedy) in zip(sample, theirs, strict=True):
            ours = answers[i]
            diff = abs(ours[0] - logprob)
            self.max_diff = max(self.max_diff, diff)
            if diff > TOLERANCE * max(1.0, abs(logprob)) or ours[1] != greedy:
                self.fallback = (f"packed scores differ from lm-eval's (log-probability {ours[0]:.6f} vs {logprob:.6f}, "
                                 f"greedy {ours[1]} vs {greedy}): this model's attention does not honour the mask")
                return False
        self.checked = len(sample)
        return True

    def _by_lm_eval(self, requests: Sequence[Request], lm_eval_path: Callable[[list[Request]], list[Answer]]
                    ) -> list[Answer]:
        self.requests += len(requests)
        self.by_lm_eval += len(requests)
        return lm_eval_path(list(requests))

    def record(self) -> dict[str, Any]:
        return {"kind": "shared_context" if self.fallback is None else "lm_eval", "requests": self.requests,
                "forward_rows": self.forward_rows, "by_lm_eval": self.by_lm_eval,
                "checked_requests": self.checked, "max_abs_logprob_diff": round(self.max_diff, 8),
                "fallback": self.fallback}
