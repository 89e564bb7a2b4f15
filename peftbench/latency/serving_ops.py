"""What changing adapters costs on a server that holds several: loading one from disk (``load_adapter``),
switching the active one (``set_adapter``) and folding one into the base weights and out again
(``merge_adapter`` / ``unmerge_adapter``). Each is repeated and timed with the latency clock (CUDA events
after a synchronize on the GPU, ``perf_counter`` on the CPU) with the collector off; reported as the
median with p10/p90."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftbench.latency.clock import Clock, gc_paused
from peftbench.latency.stats import summarize

PROBE = "peftbench_probe"  # the name an adapter is loaded under while its load is timed


def operation_times(model: Any, folder: Path, names: list[str], device: str, repeats: int,
                    merge_skipped: str | None) -> dict[str, Any]:
    """Time each operation ``repeats`` times on ``model`` (which holds ``names``, the first active):
    ``load_ms`` (the adapter saved in ``folder``, loaded under a new name, deleted again untimed),
    ``swap_ms`` (the active adapter switched between the first two, or to itself with one),
    ``merge_ms`` and ``unmerge_ms`` (the first adapter, skipped with ``merge_skipped`` as the reason)."""
    with gc_paused():  # one collection for all of them, not one per operation
        return _operation_times(model, folder, names, Clock(device), repeats, merge_skipped)


def _operation_times(model: Any, folder: Path, names: list[str], clock: Clock, repeats: int,
                     merge_skipped: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"repeats": repeats, "timer": clock.kind}
    loads = []
    for _ in range(repeats):
        loads.append(_timed(clock, lambda: model.load_adapter(str(folder), adapter_name=PROBE)))
        model.delete_adapter(PROBE)
    out["load_ms"] = summarize(loads)
    pair = names[:2] if len(names) > 1 else names * 2
    out["swap_ms"] = summarize([_timed(clock, lambda i=i: model.set_adapter(pair[(i + 1) % 2]))
                                for i in range(2 * repeats)])
    model.set_adapter(names[0])
    if merge_skipped:
        out["merge"] = {"skipped": merge_skipped}
    else:
        merges, unmerges = [], []
        for _ in range(repeats):
            merges.append(_timed(clock, lambda: model.merge_adapter([names[0]])))
            unmerges.append(_timed(clock, model.unmerge_adapter))
        out["merge_ms"], out["unmerge_ms"] = summarize(merges), summarize(unmerges)
    for p in model.parameters():  # set_adapter and load_adapter may mark adapters trainable
        p.requires_grad_(False)
    return out


def _timed(clock: Clock, op: Callable[[], Any]) -> float:
    if clock.cuda:
        torch.cuda.synchronize()  # the GPU idle: an event pair then spans the operation's wall time
    with gc_paused(), torch.no_grad():
        start = clock.mark()
        op()
        end = clock.mark()
    return clock.ms(start, end)
