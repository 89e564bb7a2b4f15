"""One round of the eager regime: ``model.generate`` with a dynamic KV cache, what most users run."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import torch
from transformers import LogitsProcessorList

from peftbench.latency.clock import Clock, RoundTimes, gc_paused


class _StepMarks:
    """A logits processor that only marks the clock: ``generate`` calls it once per new token, right after
    the forward pass that produced the token's logits."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.marks = clock, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.marks.append(self.clock.mark())
        return scores


def eager_round(model: Any, ids: torch.Tensor, new_tokens: int, clock: Clock) -> RoundTimes:
    """``generate`` with a logits processor that marks the clock once per new token. Decode per token is the
    median of the steps (the intervals between consecutive marks): eager decoding is bound by the host, and
    one stall (a page fault, the scheduler, another process) would otherwise pass as the method's cost. The
    mean per token, (last - first) / steps, is returned as well."""
    marks = _StepMarks(clock)
    with gc_paused():
        start = clock.mark()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                       logits_processor=LogitsProcessorList([marks]))
    if len(marks.marks) != new_tokens:
        raise RuntimeError(f"generate produced {len(marks.marks)} tokens, expected {new_tokens}")
    prefill = clock.ms(start, marks.marks[0])
    steps = [clock.ms(a, b) for a, b in itertools.pairwise(marks.marks)]
    return prefill, statistics.median(steps), statistics.fmean(steps)
