"""How a round is timed: a clock that reads CUDA events on the GPU and ``perf_counter`` on the CPU, and the
garbage collector held off while the clock runs."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

import torch

# what a round returns: prefill ms, decode ms per token (the reported figure), decode ms per token (the mean)
RoundTimes = tuple[float, float, float]


class Clock:
    """CUDA events on the GPU (recorded in stream order, read after one synchronize), else perf_counter."""

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith("cuda")
        self.kind = "cuda_events" if self.cuda else "perf_counter"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0


# set while a gc_paused is open: an inner one (a round in a shape's rounds) leaves the collector alone
_held = [False]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Garbage collection off while a round is timed, as timeit and pyperf do: collect first (so no pending
    collection falls into the round), disable, and restore the previous state afterwards (a collector that was
    already off stays off). Nested inside another ``gc_paused`` it does nothing: a shape's rounds share one
    collection (a full collection of a process holding a model takes 0.1-0.25 s, and one per mode and round
    added seconds to a one-shape benchmark)."""
    if _held[0]:
        yield
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    _held[0] = True
    try:
        yield
    finally:
        _held[0] = False
        if was_enabled:
            gc.enable()
