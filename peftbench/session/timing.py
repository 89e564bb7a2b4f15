"""A cell's latency: the modes to time (base, unmerged, merged, stacked) built from its artifact, and the key
under which a session reuses one method's timing in its other cells (``latency_once``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.session.options import GRID_KEYS, STOP_KEYS, latency_flat
from peftbench.system import memory


def latency_key(run: Any) -> str:
    """What a method's latency depends on: the method, its configuration (shapes and placement of its
    weights) and the timing grid, not the trained values or the task."""
    return _latency_key(run.method.name, to_jsonable(run.method_config), _grid(latency_flat(run.latency_config)))


def latency_key_of_result(result: dict[str, Any]) -> str | None:
    """``latency_key`` of a finished run file (a resumed session reuses its timing), or None when the file
    does not record what the key needs."""
    config = result.get("config") or {}
    train = config.get("train") or {}
    if not result.get("method") or result["method"] == "base" or "method" not in config or \
            any(k not in train for k in GRID_KEYS):
        return None
    return _latency_key(result["method"].split("@", 1)[0], config["method"], _grid(train))


def _grid(flat: dict[str, Any]) -> dict[str, Any]:
    """What of a cell's flat options the key holds: the grid, and the stopping rule where it is not the
    default (so the keys of files written before the rule existed stay as they were)."""
    return {k: flat[k] for k in (*GRID_KEYS, *STOP_KEYS) if k in flat}


def _latency_key(method: str, method_config: Any, grid: dict[str, Any]) -> str:
    return json.dumps([method, to_jsonable(method_config), to_jsonable(grid)], sort_keys=True, default=str)


def time_inference(load_base: Any, run: Any, art: Path, trained: Any) -> dict[str, Any]:
    """The latency section of a run: ``base`` (a fresh base model), ``unmerged`` (``trained``: the artifact
    loaded onto a fresh base, as a user would load it), ``merged`` (merged in fp32, the method's wrappers
    removed (``Method.unload``), then cast, for mergeable methods) and ``stackN`` (stackable methods,
    ``latency_stack``), all in the latency dtype."""
    from peftbench.latency.casting import cast_floating, latency_dtype

    cfg, method, hook = run.latency_config, run.method, run.hook
    dtype = latency_dtype(cfg.dtype, run.device)
    base = cast_floating(load_base(), dtype)
    unmerged = method.inference_model(cast_floating(trained, dtype))
    modes: dict[str, Any] = {"base": lambda: contextlib.nullcontext(base),
                             "unmerged": lambda: contextlib.nullcontext(unmerged)}
    if method.capabilities.mergeable:
        merged = hook.merge_adapter(run=run, prepared=hook.load_artifact(run=run, directory=art, base_model=load_base()))
        merged_infer = method.inference_model(cast_floating(method.unload(merged), dtype))  # served as unloaded
        modes["merged"] = lambda: contextlib.nullcontext(merged_infer)
    if method.capabilities.can_stack:
        for k in cfg.stack:
            modes[f"stack{k}"] = lambda k=k: _stacked(method, trained, unmerged, k)
    others: dict[str, Any] = {}
    with memory.watch_neighbours(others):
        latency = hook.measure_latency(run=run, model=unmerged, modes=modes)
    latency["dtype"] = str(dtype).replace("torch.", "")
    memory.keep_most(latency, others)  # the report flags timings on a shared GPU or host
    return latency


@contextlib.contextmanager
def _stacked(method: Any, trained: Any, infer: Any, k: int):
    with method.stacked(trained, k):
        yield infer
