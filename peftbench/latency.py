"""Decode latency: warm up, synchronise, time, report the median (first version).

Per round: one prefill of ``prompt_tokens`` tokens, then ``new_tokens`` greedy decode steps with the KV
cache, each step timed on its own. Modes measured together are interleaved round-robin, so drift in
clock speed or load hits every mode alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .config import TrainConfig
from .records import LatencyResult


def _prompt(vocab: int, n: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(10, max(11, vocab - 1), (1, n), generator=gen).to(device)


class _Timer:
    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1000.0


@torch.inference_mode()
def _one_round(model: Any, ids: torch.Tensor, new_tokens: int, timer: _Timer) -> tuple[float, list[float]]:
    t0 = timer.now()
    out = model(input_ids=ids, use_cache=True)
    t1 = timer.now()
    prefill = timer.ms(t0, t1)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    steps = []
    for _ in range(new_tokens):
        a = timer.now()
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        b = timer.now()
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        steps.append(timer.ms(a, b))
    return prefill, steps


def measure(model: Any, modes: dict[str, Callable[[], contextlib.AbstractContextManager]], cfg: TrainConfig,
            device: str) -> dict[str, LatencyResult]:
    """Time each mode; ``modes`` maps a name to a context manager factory that puts ``model`` in it."""
    model.eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = _prompt(vocab, cfg.latency_prompt_tokens, device)
    timer = _Timer(device)
    samples: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in modes}
    names = list(modes)
    for warm in (True, False):
        for r in range(1 if warm else cfg.latency_rounds):
            order = names if r % 2 == 0 else names[::-1]  # ABBA: no mode always goes first
            for mode in order:
                enter = modes[mode]
                with enter():
                    prefill, steps = _one_round(model, ids, cfg.latency_new_tokens if not warm else 2, timer)
                if not warm:
                    samples[mode][0].append(prefill)
                    samples[mode][1].append(statistics.median(steps))
    out = {}
    for mode, (prefills, decodes) in samples.items():
        q = statistics.quantiles(decodes, n=10) if len(decodes) >= 2 else [decodes[0]] * 9
        dec = statistics.median(decodes)
        out[mode] = LatencyResult(mode=mode, prompt_tokens=cfg.latency_prompt_tokens,
                                  new_tokens=cfg.latency_new_tokens, batch_size=1, rounds=cfg.latency_rounds,
                                  prefill_ms=round(statistics.median(prefills), 4), decode_ms_per_token=round(dec, 4),
                                  decode_ms_per_token_p10=round(q[0], 4), decode_ms_per_token_p90=round(q[-1], 4),
                                  tokens_per_s=round(1000.0 / dec, 2) if dec > 0 else 0.0,
                                  timer="cuda_events" if timer.cuda else "perf_counter")
    return out
