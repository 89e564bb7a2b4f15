"""Inference latency: a grid of shapes x modes x regimes, timed the way a benchmark should be.

For every regime (``eager``: ``model.generate`` with a dynamic KV cache, what most users run; ``static``: a
static KV cache and, on CUDA, the decode step captured once as a CUDA graph and replayed, close to production
serving where kernel-launch overhead vanishes) and every shape (batch size x prompt length, a fixed number
of new tokens):

1. every mode is warmed up (``warmup`` rounds of at most 8 new tokens, not recorded);
2. ``rounds`` timed rounds follow; within a round the modes run one after another in an order that rotates
   from round to round, so drift in clock speed or load hits every mode alike and no mode always goes first;
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
and full fine-tuning's ``unmerged``) must time like ``base``; when one does not (its overhead exceeds the
tolerance and its CI excludes 0) the result is flagged in ``sanity``, never silently reported. Overheads and
the sanity check use ``decode`` (in the eager regime, the median of a round's steps).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from peftbench.latency.summary import latency_headline as headline  # the stored summary, as reports read it
from peftbench.system.memory import host_cpu_state

REGIMES = ("eager", "static")
MIN_ROUNDS_TO_JUDGE = 3
ModeFactory = Callable[[], contextlib.AbstractContextManager]
RoundTimes = tuple[float, float, float]  # prefill ms, decode ms per token (reported), decode ms per token (mean)


@dataclass
class LatencyPlan:
    """What to time. ``run`` uses a small grid by default; ``peftbench latency`` the full one."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 1024])
    new_tokens: int = 64
    rounds: int = 5
    warmup: int = 1
    regimes: list[str] = field(default_factory=lambda: ["eager", "static"])
    tolerance: float = 0.03          # the sanity check's bound on |overhead| of modes that should equal base
    bootstrap: int = 2000
    seed: int = 1234

    def __post_init__(self) -> None:
        from peftbench.errors import ConfigError

        bad = [r for r in self.regimes if r not in REGIMES]
        if bad:
            raise ConfigError(f"latency regime(s) {bad} unknown; valid: {', '.join(REGIMES)}.")
        if self.new_tokens < 2:
            raise ConfigError(f"latency new_tokens must be >= 2 (prefill plus at least one decode step); "
                              f"got {self.new_tokens}.")
        for name in ("batch_sizes", "prompt_lengths"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise ConfigError(f"latency {name} must be positive integers; got {values}.")
        if self.rounds < 1:
            raise ConfigError(f"latency rounds must be >= 1; got {self.rounds}.")


# ---- one round ------------------------------------------------------------------------------------------
class Clock:
    """CUDA events on the GPU (recorded in stream order, read after one synchronize), else perf_counter."""

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith("cuda")
        self.kind = "cuda_events" if self.cuda else "perf_counter"

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0


class _StepMarks:
    """A logits processor that only marks the clock: ``generate`` calls it once per new token, right after
    the forward pass that produced the token's logits."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.marks = clock, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.marks.append(self.clock.mark())
        return scores


_GC_HELD = [False]  # an enclosing _gc_off (a whole shape's rounds) already collected and holds the collector off


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    """Garbage collection off while a round is timed, as timeit and pyperf do: collect first (so no pending
    collection falls into the round), disable, and restore the previous state afterwards (a collector that was
    already off stays off). Nested inside another ``_gc_off`` it does nothing: a shape's rounds share one
    collection (a full collection of a process holding a model takes 0.1-0.25 s, and one per mode and round
    added seconds to a one-shape benchmark)."""
    if _GC_HELD[0]:
        yield
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    _GC_HELD[0] = True
    try:
        yield
    finally:
        _GC_HELD[0] = False
        if was_enabled:
            gc.enable()


def _eager_round(model: Any, ids: torch.Tensor, new_tokens: int, clock: Clock) -> RoundTimes:
    """``generate`` with a logits processor that marks the clock once per new token. Decode per token is the
    median of the steps (the intervals between consecutive marks): eager decoding is bound by the host, and
    one stall (a page fault, the scheduler, another process) would otherwise pass as the method's cost. The
    mean per token, (last - first) / steps, is returned as well."""
    from transformers import LogitsProcessorList

    marks = _StepMarks(clock)
    with _gc_off():
        start = clock.mark()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                       logits_processor=LogitsProcessorList([marks]))
    if len(marks.marks) != new_tokens:
        raise RuntimeError(f"generate produced {len(marks.marks)} tokens, expected {new_tokens}")
    prefill = clock.ms(start, marks.marks[0])
    steps = [clock.ms(a, b) for a, b in itertools.pairwise(marks.marks)]
    return prefill, statistics.median(steps), statistics.fmean(steps)


def _static_round(model: Any, ids: torch.Tensor, new_tokens: int, clock: Clock,
                  collect: list[torch.Tensor] | None = None) -> RoundTimes:
    """Prefill into a static cache, then decode greedily with fixed-address inputs: the step reads the
    current token, position and mask from buffers and writes the next ones in place, so on CUDA it is
    captured once as a graph and replayed. The replays are uniform and timed as one span: decode per token
    is their mean, returned as both the reported and the mean figure."""
    from transformers import StaticCache

    batch, prompt = ids.shape
    total = prompt + new_tokens
    cache = StaticCache(config=model.config, max_cache_len=total)
    mask = torch.zeros(batch, 1, 1, total, dtype=torch.bool, device=ids.device)  # 4-D: used as is (sdpa)
    mask[..., :prompt] = True
    pos = torch.arange(prompt, device=ids.device)
    prefill_mask = torch.ones(prompt, total, dtype=torch.bool, device=ids.device).tril()
    prefill_mask[:, prompt:] = False
    with torch.inference_mode(), _gc_off():
        start = clock.mark()
        out = model(input_ids=ids, cache_position=pos, past_key_values=cache, use_cache=True,
                    attention_mask=prefill_mask[None, None].expand(batch, 1, prompt, total))
        token = out.logits[:, -1:].argmax(-1)
        first = clock.mark()
        position = torch.tensor([prompt], device=ids.device)

        def step() -> None:
            mask.index_fill_(3, position, True)
            logits = model(input_ids=token, cache_position=position, past_key_values=cache, use_cache=True,
                           attention_mask=mask).logits
            token.copy_(logits[:, -1:].argmax(-1))
            position.add_(1)

        steps = new_tokens - 1
        if clock.cuda:
            graph = _capture(step, position, mask, cache_len=prompt)
            a = clock.mark()
            for _ in range(steps):
                graph.replay()
            b = clock.mark()
            del graph
        else:
            if collect is not None:
                collect.append(token.clone())
            a = clock.mark()
            for _ in range(steps):
                step()
                if collect is not None:  # tests: the tokens the static loop decodes (CPU only)
                    collect.append(token.clone())
            b = clock.mark()
    decode = clock.ms(a, b) / steps
    return clock.ms(start, first), decode, decode


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


ROUNDS = {"eager": _eager_round, "static": _static_round}


# ---- statistics --------------------------------------------------------------------------------------------
def summarize(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) >= 2 else [values[0]] * 9
    return {"median": round(statistics.median(values), 4), "p10": round(q[0], 4), "p90": round(q[-1], 4)}


def overhead(mode: list[float], base: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    """Ratio of medians - 1, and a bootstrap 95 % CI that resamples rounds in pairs."""
    point = statistics.median(mode) / statistics.median(base) - 1.0
    rng = random.Random(seed)
    n = len(mode)
    boots = []
    for _ in range(n_boot if n > 1 else 0):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(statistics.median([mode[i] for i in idx]) / statistics.median([base[i] for i in idx]) - 1.0)
    if boots:
        boots.sort()
        lo, hi = boots[int(0.025 * (len(boots) - 1))], boots[int(0.975 * (len(boots) - 1))]
    else:
        lo = hi = point
    return {"ratio": round(point, 4), "ci95": [round(lo, 4), round(hi, 4)]}


# ---- the grid ---------------------------------------------------------------------------------------------
def _prompt(vocab: int, batch: int, length: int, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, max(11, vocab - 1), (batch, length), generator=gen).to(device)


def measure(modes: dict[str, ModeFactory], plan: LatencyPlan, device: str, vocab: int,
            same_as_base: tuple[str, ...] = ("merged",), progress: Callable[[str], None] | None = None,
            done: dict[str, Any] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
    """Time every mode over the plan's grid. ``modes`` maps a name to a zero-argument factory of a context
    manager that yields the model to time (``base`` must be one of them); ``same_as_base`` names the modes
    the sanity check holds to base's timing. Returns the ``latency`` section of a run file.

    A grid of eager decoding can outlast a command's time limit, so it can be continued: ``checkpoint`` is
    called with the section so far after every shape, and ``done`` (such a section, of the same plan and
    modes) supplies the shapes already timed, which are kept, not timed again. Every shape's modes are
    still timed together, in the same rounds (each cell records when: ``timed_at``)."""
    if "base" not in modes:
        raise ValueError("latency modes must include 'base'")
    clock = Clock(device)
    names = list(modes)
    out: dict[str, Any] = {"plan": asdict(plan), "timer": clock.kind, "modes": names, "regimes": {},
                           "sanity": [], "errors": []}
    # where the wall time went, per regime and mode (setting the mode up, warm-up and timed rounds included):
    # what a smaller grid would save
    out["wall_s"] = {regime: dict.fromkeys(names, 0.0) for regime in plan.regimes}
    kept = _timed_cells(done, out)
    if kept:
        out["resumed_cells"] = 0
        for regime, modes_wall in (done or {}).get("wall_s", {}).items():
            for mode, seconds in modes_wall.items():
                if regime in out["wall_s"] and mode in out["wall_s"][regime]:
                    out["wall_s"][regime][mode] = seconds
    for regime in plan.regimes:
        cells = out["regimes"][regime] = []
        for batch in plan.batch_sizes:
            for length in plan.prompt_lengths:
                key = (regime, batch, length)
                if key in kept:  # timed by an earlier, interrupted process: kept with its sanity entries
                    cells.append(kept[key])
                    out["sanity"] += [s for s in done.get("sanity", []) if _where(s) == key]
                    out["errors"] += [e for e in done.get("errors", []) if _where(e) == key]
                    out["resumed_cells"] += 1
                    continue
                if progress:
                    progress(f"latency {regime} bs{batch} x {length}")
                cells.append(_measure_shape(modes, names, regime, batch, length, plan, device, vocab, clock,
                                            same_as_base, out))
                if checkpoint:
                    checkpoint(out)
    out["sanity_ok"] = not any(s["ok"] is False for s in out["sanity"])
    out["summary"] = headline(out)
    return out


def _where(entry: dict[str, Any]) -> tuple[str, int, int]:
    return entry.get("regime"), entry.get("batch_size"), entry.get("prompt_tokens")


def _timed_cells(done: dict[str, Any] | None, out: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]]:
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


def _measure_shape(modes: dict[str, ModeFactory], names: list[str], regime: str, batch: int, length: int,
                   plan: LatencyPlan, device: str, vocab: int, clock: Clock, same_as_base: tuple[str, ...],
                   out: dict[str, Any]) -> dict[str, Any]:
    ids = _prompt(vocab, batch, length, device, plan.seed)
    one_round = ROUNDS[regime]
    samples: dict[str, dict[str, list[float]]] = {m: {"prefill": [], "decode": [], "decode_mean": []}
                                                  for m in names}
    host: dict[str, dict[str, list[Any]]] = {m: {"core": [], "mhz": []} for m in names}  # per timed round
    failed: dict[str, str] = {}
    with _gc_off():  # one collection for the shape; each round below then runs with the collector off
        for r in range(plan.warmup + plan.rounds):
            k = r % len(names)
            for mode in names[k:] + names[:k]:  # rotate: each mode leads in turn
                if mode in failed:
                    continue
                # eager warm-up decodes the full length: the dynamic cache grows every step, and a short warm-up left
                # the allocator cold for the later lengths (on the H200, unmerged LoRA's first timed round was 3x its
                # later ones after an 8-token warm-up). The static cache is allocated once: a few tokens warm it and
                # capture the graph.
                n = plan.new_tokens if r >= plan.warmup or regime == "eager" else min(plan.new_tokens, 8)
                t0 = time.perf_counter()
                try:
                    with modes[mode]() as model:
                        prefill, decode, decode_mean = one_round(model, ids, n, clock)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as e:  # a regime the stack does not support for this mode: record, go on
                    failed[mode] = f"{type(e).__name__}: {str(e)[:300]}"
                    out["errors"].append({"regime": regime, "batch_size": batch, "prompt_tokens": length,
                                          "mode": mode, "error": failed[mode]})
                    continue
                finally:
                    wall = out["wall_s"][regime]
                    wall[mode] = round(wall[mode] + time.perf_counter() - t0, 3)
                if r >= plan.warmup:
                    core, mhz = host_cpu_state()   # read after the round, outside its timing
                    host[mode]["core"].append(core)
                    host[mode]["mhz"].append(mhz)
                    samples[mode]["prefill"].append(prefill)
                    samples[mode]["decode"].append(decode)
                    samples[mode]["decode_mean"].append(decode_mean)
    cell: dict[str, Any] = {"batch_size": batch, "prompt_tokens": length, "new_tokens": plan.new_tokens,
                            "timed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "modes": {}, "overhead": {}, "prefill_overhead": {}}
    for mode in names:
        s = samples[mode]
        if mode in failed:
            cell["modes"][mode] = {"error": failed[mode]}
            continue
        dec = summarize(s["decode"])
        cell["modes"][mode] = {"prefill_ms": summarize(s["prefill"]), "decode_ms_per_token": dec,
                               "decode_ms_per_token_mean": summarize(s["decode_mean"]),
                               "tokens_per_s": round(batch * 1000.0 / dec["median"], 2) if dec["median"] else None,
                               "samples": {k: [round(v, 4) for v in vs] for k, vs in s.items()},
                               "host": host[mode]}
    base = samples["base"]
    if "base" in failed:
        return cell
    for mode in names:
        if mode == "base" or mode in failed:
            continue
        cell["overhead"][mode] = overhead(samples[mode]["decode"], base["decode"], plan.bootstrap, plan.seed)
        cell["prefill_overhead"][mode] = overhead(samples[mode]["prefill"], base["prefill"], plan.bootstrap,
                                                  plan.seed)
        if mode in same_as_base:
            o = cell["overhead"][mode]
            lo, hi = o["ci95"]
            suspect = abs(o["ratio"]) > plan.tolerance and not lo <= 0.0 <= hi
            entry = {"regime": regime, "batch_size": batch, "prompt_tokens": length, "mode": mode,
                     "overhead": o["ratio"], "ci95": o["ci95"], "tolerance": plan.tolerance, "ok": not suspect}
            if plan.rounds < MIN_ROUNDS_TO_JUDGE:  # a CI from 1-2 rounds says nothing: do not judge
                entry.update(ok=None, note=f"fewer than {MIN_ROUNDS_TO_JUDGE} rounds: not judged")
            out["sanity"].append(entry)
    return cell


# ---- model helpers -------------------------------------------------------------------------------------------
def cast_floating(model: Any, dtype: torch.dtype) -> Any:
    """Cast a model's floating-point parameters and buffers to ``dtype``, leaving quantized weights (e.g.
    bitsandbytes 4-bit, whose storage is packed integers) alone."""
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if p.is_floating_point() and type(p).__name__ not in ("Params4bit", "Int8Params") and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != dtype and "inv_freq" not in name:
                module._buffers[name] = b.to(dtype)  # rotary inv_freq stays fp32, as transformers keeps it
    return model


def latency_dtype(name: str, device: str) -> torch.dtype:
    """'auto': bf16 on CUDA (how models are served), fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]
