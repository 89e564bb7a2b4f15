"""Inference latency: a grid of shapes x modes x regimes, timed the way a benchmark should be.

For every regime (``eager``: ``model.generate`` with a dynamic KV cache, what most users run; ``static``: a
static KV cache and, on CUDA, the decode step captured once as a CUDA graph and replayed, close to production
serving where kernel-launch overhead vanishes) and every shape (batch size x prompt length, a fixed number
of new tokens):

1. every mode is warmed up (``warmup`` rounds, not recorded: eager ones decode the full length, static ones
   at most 8 tokens);
2. timed rounds follow, ``rounds`` at most; within a round the modes run one after another in an order that
   rotates from round to round, so drift in clock speed or load hits every mode alike and no mode always goes
   first. Under a ``StopRule`` a shape stops after ``min_rounds`` as soon as every mode's median decode time
   is as tight as asked (the half-width of its distribution-free 95 % interval, ``stats.median_ci``, at most
   ``target_rel_ci`` of the median): a quiet machine is done in few rounds, a noisy one gets them all. Each cell records the
   rounds it took and each mode the tightness reached (``decode_rel_ci``);
3. a round times the **prefill** (the prompt's forward pass, up to the first new token) and the **decode**
   (the remaining new tokens; reported per token) with CUDA events on the GPU and ``perf_counter`` on CPU,
   with Python's garbage collector off (collected before, restored after), as timeit and pyperf do. In the
   eager regime a round's decode per token is the **median of its step times** (the intervals between
   consecutive new tokens), so a single host stall does not pass as the method's cost; the mean per token is
   recorded too (``decode_ms_per_token_mean``, ``samples["decode_mean"]``). The static regime's CUDA-graph
   replays are uniform and timed as one span: its decode per token is the mean (recorded under both names);
4. reported per mode: the median with p10/p90 over rounds, tokens/s (batch x 1000 / decode ms per token);
   per mode other than ``base``: the overhead ratio vs base (ratio of medians - 1) and a bootstrap 95 % CI
   of it, resampling rounds in pairs (a round's base and mode timings were taken side by side).

The **sanity check**: modes that compute with the base architecture's weights and nothing more (``merged``,
and full fine-tuning's ``unmerged``) must time like ``base``; when one does not (its overhead's point estimate
exceeds the tolerance, whatever its CI) the result is flagged in ``sanity``, never silently reported. Overheads and
the sanity check use ``decode`` (in the eager regime, the median of a round's steps).

This module is the grid (regimes x shapes, each shape's modes interleaved round by round, checkpoints and
resume). One round of each regime is in ``eager`` and ``static``, timed by ``clock``; ``shape`` turns a
shape's samples into its cell, with the statistics of ``stats``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from peftbench.latency.clock import Clock, RoundTimes, gc_paused
from peftbench.latency.config import LatencyPlan, StopRule
from peftbench.latency.eager import eager_round
from peftbench.latency.shape import ShapeSamples, shape_cell
from peftbench.latency.static import static_round
from peftbench.latency.stats import rel_half_width
from peftbench.latency.summary import latency_headline
from peftbench.system.memory import host_cpu_state

ModeFactory = Callable[[], contextlib.AbstractContextManager]
GridKey = tuple[str, int, int]  # regime, batch size, prompt tokens: a cell's place in the grid
ROUNDS: dict[str, Callable[..., RoundTimes]] = {"eager": eager_round, "static": static_round}  # per regime

# eager warm-up decodes the full length: the dynamic cache grows every step, and a short warm-up left the
# allocator cold for the later lengths (on the H200, unmerged LoRA's first timed round was 3x its later ones
# after an 8-token warm-up). The static cache is allocated once: a few tokens warm it and capture the graph.
STATIC_WARMUP = 8  # tokens per warm-up round of the static regime


def measure(modes: dict[str, ModeFactory], plan: LatencyPlan, device: str, vocab: int,
            same_as_base: tuple[str, ...] = ("merged",), progress: Callable[[str], None] | None = None,
            done: dict[str, Any] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None,
            stop: StopRule | None = None) -> dict[str, Any]:
    """Time every mode over the plan's grid. ``modes`` maps a name to a zero-argument factory of a context
    manager that yields the model to time (``base`` must be one of them); ``same_as_base`` names the modes
    the sanity check holds to base's timing. Returns the ``latency`` section of a run file.

    A grid of eager decoding can outlast a command's time limit, so it can be continued: ``checkpoint`` is
    called with the section so far after every shape, and ``done`` (such a section, of the same plan and
    modes) supplies the shapes already timed, which are kept, not timed again. Every shape's modes are
    still timed together, in the same rounds (each cell records when: ``timed_at``). ``stop`` lets a shape
    end its rounds early (recorded as the section's ``stop``; None: every shape times ``rounds``)."""
    if "base" not in modes:
        raise ValueError("latency modes must include 'base'")
    clock = Clock(device)
    names = list(modes)
    out: dict[str, Any] = {"plan": asdict(plan), "timer": clock.kind, "modes": names, "regimes": {},
                           "sanity": [], "errors": []}
    if stop is not None:
        out["stop"] = asdict(stop)
    # where the wall time went, per regime and mode (setting the mode up, warm-up and timed rounds included):
    # what a smaller grid would save
    out["wall_s"] = {regime: dict.fromkeys(names, 0.0) for regime in plan.regimes}
    kept = _kept_cells(done, out)
    if kept:
        _carry_wall_time(done, out)
    for regime in plan.regimes:
        cells = out["regimes"][regime] = []
        for batch, length in itertools.product(plan.batch_sizes, plan.prompt_lengths):
            key = (regime, batch, length)
            if key in kept:  # timed by an earlier, interrupted process
                cells.append(_keep_cell(kept[key], key, done, out))
                continue
            if progress:
                progress(f"latency {regime} bs{batch} x {length}")
            cells.append(_measure_shape(modes, names, regime, batch, length, plan, device, vocab, clock,
                                        same_as_base, out, stop))
            if checkpoint:
                checkpoint(out)
    out["sanity_ok"] = not any(s["ok"] is False for s in out["sanity"])
    out["summary"] = latency_headline(out)
    return out


# ---- continuing an interrupted grid ----------------------------------------------------------------------
def _kept_cells(done: dict[str, Any] | None, out: dict[str, Any]) -> dict[GridKey, dict[str, Any]]:
    """The cells of an earlier section ``done`` that can be kept: only when it timed the same plan and modes
    (anything else would mix grids), and only complete cells (every mode timed or failed)."""
    if not done or done.get("plan") != out["plan"] or done.get("modes") != out["modes"]:
        return {}
    kept = {}
    for regime, cells in (done.get("regimes") or {}).items():
        for cell in cells:
            if set(cell.get("modes", {})) == set(out["modes"]):
                kept[(regime, cell["batch_size"], cell["prompt_tokens"])] = cell
    return kept


def _carry_wall_time(done: dict[str, Any], out: dict[str, Any]) -> None:
    """The earlier process's wall time per regime and mode carries on; the count of kept cells starts."""
    out["resumed_cells"] = 0
    for regime, modes_wall in done.get("wall_s", {}).items():
        for mode, seconds in modes_wall.items():
            if regime in out["wall_s"] and mode in out["wall_s"][regime]:
                out["wall_s"][regime][mode] = seconds


def _keep_cell(cell: dict[str, Any], key: GridKey, done: dict[str, Any],
               out: dict[str, Any]) -> dict[str, Any]:
    """A kept cell comes with its sanity entries and errors."""
    out["sanity"] += [s for s in done.get("sanity", []) if _grid_key(s) == key]
    out["errors"] += [e for e in done.get("errors", []) if _grid_key(e) == key]
    out["resumed_cells"] += 1
    return cell


def _grid_key(entry: dict[str, Any]) -> GridKey:
    return entry.get("regime"), entry.get("batch_size"), entry.get("prompt_tokens")


# ---- one shape: interleaved rounds of every mode ---------------------------------------------------------
def _measure_shape(modes: dict[str, ModeFactory], names: list[str], regime: str, batch: int, length: int,
                   plan: LatencyPlan, device: str, vocab: int, clock: Clock, same_as_base: tuple[str, ...],
                   out: dict[str, Any], stop: StopRule | None = None) -> dict[str, Any]:
    """Time every mode at one shape and return its cell; its errors and sanity entries go into ``out``."""
    where = {"regime": regime, "batch_size": batch, "prompt_tokens": length}
    ids = _prompt(vocab, batch, length, device, plan.seed)
    samples = _time_rounds(modes, names, ROUNDS[regime], ids, plan, clock, where, out, stop)
    cell, sanity = shape_cell(where, names, samples, plan, same_as_base)
    out["sanity"] += sanity
    return cell


def _time_rounds(modes: dict[str, ModeFactory], names: list[str], one_round: Callable[..., RoundTimes],
                 ids: torch.Tensor, plan: LatencyPlan, clock: Clock, where: dict[str, Any],
                 out: dict[str, Any], stop: StopRule | None = None) -> ShapeSamples:
    """Warm-up rounds, then timed rounds; in each, every mode that has not failed runs once, in an order that
    rotates from round to round. A mode that fails is recorded in ``out["errors"]`` and skipped after."""
    regime = where["regime"]
    samples = ShapeSamples.of(names)
    wall = out["wall_s"][regime]
    with gc_paused():  # one collection for the shape; each round below then runs with the collector off
        for r in range(plan.warmup + plan.rounds):
            timed = r >= plan.warmup
            tokens = plan.new_tokens if timed or regime == "eager" else min(plan.new_tokens, STATIC_WARMUP)
            k = r % len(names)
            for mode in names[k:] + names[:k]:  # rotate: each mode leads in turn
                if mode in samples.failed:
                    continue
                t0 = time.perf_counter()
                try:
                    with modes[mode]() as model:
                        prefill, decode, decode_mean = one_round(model, ids, tokens, clock)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as e:  # a regime the stack does not support for this mode: record, go on
                    samples.failed[mode] = f"{type(e).__name__}: {str(e)[:300]}"
                    out["errors"].append({**where, "mode": mode, "error": samples.failed[mode]})
                    continue
                finally:
                    wall[mode] = round(wall[mode] + time.perf_counter() - t0, 3)
                if timed:  # the host's state is read after the round, outside its timing
                    samples.add(mode, (prefill, decode, decode_mean), host_cpu_state())
            if timed and stop is not None and stop.stops(r + 1 - plan.warmup, plan.rounds, _tightness(samples)):
                break
    return samples


def _tightness(samples: ShapeSamples) -> list[float]:
    """Each mode still timed: its median decode time's interval half-width relative to the median."""
    return [rel_half_width(samples.times[m]["decode"]) for m in samples.times if m not in samples.failed]


def _prompt(vocab: int, batch: int, length: int, device: str, seed: int) -> torch.Tensor:
    """The same random prompt for every mode of a shape (ids from 10 up: clear of the special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, max(11, vocab - 1), (batch, length), generator=gen).to(device)
