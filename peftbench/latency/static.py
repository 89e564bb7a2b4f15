"""One round of the static regime: a static KV cache and, on CUDA, the decode step captured once as a CUDA
graph and replayed, close to production serving where kernel-launch overhead vanishes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from peftbench.latency.clock import Clock, RoundTimes, gc_paused


def static_round(model: Any, ids: torch.Tensor, new_tokens: int, clock: Clock,
                 collect: list[torch.Tensor] | None = None) -> RoundTimes:
    """Prefill into a static cache, then decode greedily with fixed-address inputs: the step reads the
    current token, position and mask from buffers and writes the next ones in place, so on CUDA it is
    captured once as a graph and replayed. The replays are uniform and timed as one span: decode per token
    is their mean, returned as both the reported and the mean figure. ``collect`` (CPU only, for tests)
    receives the tokens decoded."""
    # imported here: a transformers without StaticCache fails this regime (recorded per mode), not the import
    from transformers import StaticCache

    batch, prompt = ids.shape
    total = prompt + new_tokens
    cache = StaticCache(config=model.config, max_cache_len=total)
    # 4-D masks are used as they are (sdpa)
    decode_mask = torch.zeros(batch, 1, 1, total, dtype=torch.bool, device=ids.device)
    decode_mask[..., :prompt] = True
    prompt_positions = torch.arange(prompt, device=ids.device)
    prefill_mask = torch.ones(prompt, total, dtype=torch.bool, device=ids.device).tril()
    prefill_mask[:, prompt:] = False
    steps = new_tokens - 1
    with torch.inference_mode(), gc_paused():
        start = clock.mark()
        out = model(input_ids=ids, cache_position=prompt_positions, past_key_values=cache, use_cache=True,
                    attention_mask=prefill_mask[None, None].expand(batch, 1, prompt, total))
        token = out.logits[:, -1:].argmax(-1)
        first = clock.mark()
        position = torch.tensor([prompt], device=ids.device)
        step = _decode_step(model, cache, token, position, decode_mask)
        if clock.cuda:
            decode_start, decode_end = _replay_graph(step, position, decode_mask, prompt, steps, clock)
        else:
            decode_start, decode_end = _run_steps(step, token, steps, clock, collect)
    decode = clock.ms(decode_start, decode_end) / steps
    return clock.ms(start, first), decode, decode


def _decode_step(model: Any, cache: Any, token: torch.Tensor, position: torch.Tensor,
                 mask: torch.Tensor) -> Callable[[], None]:
    """One greedy decode step that reads and writes only the same buffers, as a CUDA graph needs."""

    def step() -> None:
        mask.index_fill_(3, position, True)
        logits = model(input_ids=token, cache_position=position, past_key_values=cache, use_cache=True,
                       attention_mask=mask).logits
        token.copy_(logits[:, -1:].argmax(-1))
        position.add_(1)

    return step


def _replay_graph(step: Callable[[], None], position: torch.Tensor, mask: torch.Tensor, cache_len: int,
                  steps: int, clock: Clock) -> tuple[Any, Any]:
    """Capture the step, then replay it ``steps`` times between two marks. The graph is freed on return,
    before the marks are read."""
    graph = _capture(step, position, mask, cache_len)
    start = clock.mark()
    for _ in range(steps):
        graph.replay()
    return start, clock.mark()


def _run_steps(step: Callable[[], None], token: torch.Tensor, steps: int, clock: Clock,
               collect: list[torch.Tensor] | None) -> tuple[Any, Any]:
    """Run the step ``steps`` times between two marks (CPU: no graphs), collecting the tokens if asked."""
    if collect is not None:
        collect.append(token.clone())
    start = clock.mark()
    for _ in range(steps):
        step()
        if collect is not None:
            collect.append(token.clone())
    return start, clock.mark()


def _capture(step: Callable[[], None], position: torch.Tensor, mask: torch.Tensor, cache_len: int) -> Any:
    """Warm the step up on a side stream (as CUDA graphs require), capture it, then rewind the position and
    mask the warm-up advanced. The warm-up wrote a (discarded) entry at the first decode position of the
    cache; the timed replays overwrite it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    position.fill_(cache_len)
    mask[..., cache_len:] = False
    return graph
