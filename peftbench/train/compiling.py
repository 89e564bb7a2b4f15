"""Regional compilation for the fast loop: each transformer block compiled in place while a run trains.

``CompiledBlocks`` is the context the loop trains in. It compiles the blocks the plan chose (one static graph
per shape when the shapes are fixed: bucketed micro-batches, or examples of one length; else for symbolic
shapes; with CUDA graphs only where they can work), makes the compiled kernels round like eager ones, fuses
the chunked loss's kernel, falls back to the eager blocks when the compiler fails mid-run, and leaves the
blocks plain on exit: evaluation and latency time the plain modules. The compiled code is kept for the
process's next run with the same blocks (a session's next cell) unless CUDA graphs ran, and torch's on-disk
compile caches live in peftbench's cache, so later sessions reuse them. What it did goes into the run's loop
record (``train.loop``: ``compile``, ``compile_stats``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from peftbench.train.batching import TrainData
from peftbench.train.loss import fused_chunks

COMPILE_BACKEND = "inductor"

T = TypeVar("T")


def compile_blocks(blocks: torch.nn.ModuleList, dynamic: bool = False, mode: str = "default") -> None:
    """Regional compilation: each block compiled in place (one graph serves them all, since torch inlines
    built-in modules instead of guarding on each one). Cheaper to compile than the whole model, and the
    method's own layers (LoRA branches, adapters) inside a block are compiled with it. ``dynamic``: compile
    for symbolic batch and sequence sizes from the first call (examples of varying length), instead of one
    graph for the first shape and a recompilation when the next differs; else one static graph per shape
    (bucketed batches: a few fixed shapes; torch would otherwise turn to symbolic sizes at the second).
    ``mode``: torch.compile's mode ('reduce-overhead': CUDA graphs)."""
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND, dynamic=dynamic,
                      **({"mode": mode} if mode != "default" else {}))


def uncompile_blocks(blocks: torch.nn.ModuleList) -> None:
    for block in blocks:
        block._compiled_call_impl = None


def eager_rounding() -> Any:
    """Compiled kernels that round to bf16 where eager PyTorch does. Inductor otherwise keeps a fused chain's
    intermediates in fp32: more precise, but a different trajectory — LoRA on SmolLM2-135M in bf16 then
    learned visibly faster in its first steps than the same loop uncompiled, so the fast loop's loss curve
    no longer followed the naive one's. (Compilation happens at the first call, inside this context.)"""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(emulate_precision_casts=True)


class CompiledBlocks:
    """Context: ``blocks`` (``None``: nothing to compile, and this does nothing) compiled for training on
    ``data``, in torch.compile's ``mode`` where it can work; ``record``: the run's loop record. ``shapes``: the
    number of distinct micro-batch shapes with bucketing (static graphs, one per shape), ``None`` without."""

    def __init__(self, blocks: torch.nn.ModuleList | None, data: TrainData, mode: str, device: str,
                 record: dict[str, Any], shapes: int | None = None) -> None:
        self.blocks, self.data, self.mode, self.device, self.record = blocks, data, mode, device, record
        self.shapes = shapes
        self.cuda_graphs = False
        self._fused: fused_chunks | None = None
        self._contexts = contextlib.ExitStack()
        self._stats = CompileStats()

    def __enter__(self) -> CompiledBlocks:
        if self.blocks is None:
            return self
        static = self.shapes is not None or len({len(x) for x in self.data.input_ids}) == 1
        mode = self._usable_mode(static)
        self.cuda_graphs = mode == "reduce-overhead"
        reuse = _Kept.prepare(signature(self.blocks, mode, static, self.device))
        compile_blocks(self.blocks, dynamic=not static, mode=mode)
        self.record["compile"] += (", static shapes" if static else ", dynamic shapes") + (
            f" ({self.shapes} bucket shape{'s' if self.shapes > 1 else ''})" if self.shapes is not None else "") + (
            ", CUDA graphs (reduce-overhead)" if self.cuda_graphs else "")
        self._contexts.enter_context(eager_rounding())
        self.record["compile_rounding"] = "eager (inductor emulate_precision_casts)"
        if self.shapes is not None:  # a graph per shape, per mask kind (packed rows, or none packed) and per
            # first block or later one (LoRA: only the later blocks' input needs a gradient)
            self._contexts.enter_context(recompile_limit(4 * self.shapes + 4))
        if self.record["chunked_loss"]:  # the chunks' softmax and gradient as one compiled kernel too
            self._fused = self._contexts.enter_context(fused_chunks(COMPILE_BACKEND))
        self._stats.begin(reuse, cache_dir=use_compile_cache())
        return self

    def _usable_mode(self, static: bool) -> str:
        """The compile mode to use: 'auto' as reduce-overhead where CUDA graphs can work, else 'default';
        'reduce-overhead' asked for where they cannot: 'default' and a note why."""
        works = static and self.device == "cuda"
        if self.mode == "auto":
            return "reduce-overhead" if works else "default"
        if self.mode != "reduce-overhead" or works:
            return self.mode
        why = "CUDA graphs need a CUDA device" if static else (
            "batches vary in shape: a CUDA graph per shape; bucketing=on gives a few fixed shapes")
        self.record["notes"].append(f"compile_mode: reduce-overhead not used ({why}); default instead")
        return "default"

    def begin_step(self) -> None:
        """Before each optimizer step: with CUDA graph trees, a new iteration begins (the last one's outputs
        may be overwritten)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def run_step(self, step: int, run: Callable[[], T], before_retry: Callable[[], None]) -> T:
        """``run()`` for optimizer step ``step`` (counted from 0). Should a block fail to compile in it (at the
        first shape or a later one), the failure is recorded, the blocks uncompiled, ``before_retry()`` called
        and ``run()`` redone eagerly: a real error fails again."""
        try:
            with self._stats.step():
                return run()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            if self.blocks is None:
                raise
            uncompile_blocks(self.blocks)
            self.blocks, self.cuda_graphs = None, False
            self.record["compile"] = f"failed at step {step + 1}, off: {type(e).__name__}: {str(e)[:300]}"
            _Kept.forget()
            before_retry()
            return run()

    @property
    def loss_kernel(self) -> str:
        """How the chunked loss's kernel ran: 'eager', 'fused' or 'fused failed, eager: reason'."""
        return self._fused.status if self._fused is not None else "eager"

    def __exit__(self, *exc: Any) -> None:
        try:
            self._contexts.__exit__(*exc)
        finally:
            if self._stats.started:
                self.record["compile_stats"] = self._stats.end()
            if self.blocks is not None:  # (uncompiled already, when the compiler failed mid-run)
                uncompile_blocks(self.blocks)
                if self.cuda_graphs:  # CUDA graph trees hold their memory pool and the old weights' addresses
                    _Kept.forget()
                else:
                    _Kept.keep()


def signature(blocks: torch.nn.ModuleList, mode: str, static: bool, device: str) -> str:
    """What decides whether compiled blocks can serve another run: the blocks' structure (the method's modules
    inside them included), their parameters' dtypes and which are trained, the mode, the shapes, the device."""
    first = blocks[0]
    params = ",".join(f"{n}:{p.dtype}:{int(p.requires_grad)}" for n, p in first.named_parameters())
    return f"{len(blocks)}|{first!r}|{params}|{mode}|{'static' if static else 'dynamic'}|{device}"


class _Kept:
    """The compiled code this process keeps after training, for the next run with the same blocks (a session's
    next cell loads a fresh model of the same architecture and method): torch passes a block's parameters to
    its graph as inputs, so the graphs hold no weights and guard on shapes and dtypes, not on the model
    object. Kept only without CUDA graphs (their trees hold a memory pool and the old weights' addresses);
    otherwise, and before compiling other blocks, everything compiled is dropped (``torch._dynamo.reset``),
    which also keeps a session of many methods clear of dynamo's recompile limit."""

    kept: str | None = None  # the signature of the blocks whose compiled code is kept
    current: str | None = None  # the signature of the blocks compiled now

    @classmethod
    def prepare(cls, sig: str) -> str:
        """Before compiling blocks of signature ``sig``: drop what other blocks left; what was reused, in words."""
        if cls.kept == sig:
            reuse = "kept from the previous run in this process (same blocks, mode and shapes)"
        elif cls.kept is not None:
            torch._dynamo.reset()
            reuse = "none: the previous run in this process compiled other blocks (dropped)"
        else:
            reuse = "none: nothing compiled kept in this process"
        cls.kept, cls.current = None, sig
        return reuse

    @classmethod
    def keep(cls) -> None:
        cls.kept = cls.current

    @classmethod
    def forget(cls) -> None:
        cls.kept = cls.current = None
        torch._dynamo.reset()


class CompileStats:
    """What compiling cost one run, for its loop record (``train.loop.compile_stats``): the graphs dynamo
    compiled (the blocks' and the loss kernel's), the optimizer steps that compiled any and their seconds
    (compilation and that step's own work), and torch's on-disk cache hits and misses (inductor's FX graph
    cache, the AOTAutograd cache)."""

    COUNTERS = {"graphs_compiled": ("stats", "unique_graphs"),
                "fx_graph_cache_hits": ("inductor", "fxgraph_cache_hit"),
                "fx_graph_cache_misses": ("inductor", "fxgraph_cache_miss"),
                "aot_autograd_cache_hits": ("aot_autograd", "autograd_cache_hit"),
                "aot_autograd_cache_misses": ("aot_autograd", "autograd_cache_miss")}

    def __init__(self) -> None:
        self.started, self.steps, self.seconds = False, 0, 0.0
        self.reuse, self.cache_dir, self._at = "", "", {}

    @staticmethod
    def _counts() -> dict[str, int]:
        from torch._dynamo.utils import counters

        return {k: int(counters[group][name]) for k, (group, name) in CompileStats.COUNTERS.items()}

    def begin(self, reuse: str, cache_dir: str) -> None:
        self.started, self.reuse, self.cache_dir, self._at = True, reuse, cache_dir, self._counts()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Around one optimizer step (whose result was read back, so its work is done when it returns)."""
        if not self.started:
            yield
            return
        graphs, t0 = self._counts()["graphs_compiled"], time.perf_counter()
        yield
        if self._counts()["graphs_compiled"] > graphs:
            self.steps, self.seconds = self.steps + 1, self.seconds + time.perf_counter() - t0

    def end(self) -> dict[str, Any]:
        now = self._counts()
        compiled = now["graphs_compiled"] - self._at["graphs_compiled"]
        if self.reuse.startswith("kept") and compiled:  # (shapes the earlier run did not meet, or failed guards)
            self.reuse += f"; {compiled} more graph{'s' if compiled > 1 else ''} compiled"
        return {"reused": self.reuse, **{k: now[k] - self._at[k] for k in now},
                "steps_compiling": self.steps, "steps_compiling_s": round(self.seconds, 3),
                "cache_dir": self.cache_dir}


def forget_compiled() -> None:
    """Drop the compiled blocks a previous run kept (``torch._dynamo.reset()``): the next run compiles from
    scratch, served only by the on-disk caches (a benchmark timing each variant's compilation wants this)."""
    _Kept.forget()


def recompile_limit(n: int) -> Any:
    """Dynamo's per-function recompile limit raised to at least ``n`` (its default is 8; the bucket shapes and
    mask kinds must not exceed it, or the blocks would silently run eagerly)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    return dynamo_config.patch(**{name: max(n, getattr(dynamo_config, name))})


def use_compile_cache() -> str:
    """Where torch's on-disk compile caches (inductor's FX graph cache, the AOTAutograd cache, Triton's
    kernels under ``triton/``) live, set for this process: ``$TORCHINDUCTOR_CACHE_DIR`` as the user set it,
    else ``compile/`` in peftbench's cache (``$PEFTBENCH_CACHE``, default ``~/.cache/peftbench``) rather than
    torch's per-boot temporary folder. A later session then loads what an earlier one compiled instead of
    generating and building the kernels again. (Importing inductor already sets the variable to torch's
    default, so that value counts as unset; a ``$TRITON_CACHE_DIR`` the user set is left alone.)"""
    import getpass
    import os
    import tempfile

    from peftbench.models.sources import default_cache_dir

    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_cache_dir
    except ImportError:  # (older torch: the same default, written out)
        torch_cache_dir = lambda: os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")  # noqa: E731
    torch_default = os.path.abspath(torch_cache_dir())
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != torch_default:
        return current
    ours = str(default_cache_dir() / "compile")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = ours
    if os.environ.get("TRITON_CACHE_DIR", "").startswith(torch_default):  # set by inductor, not the user
        del os.environ["TRITON_CACHE_DIR"]
    if current:  # inductor may have memoized paths under its default
        import torch._inductor.utils as inductor_utils

        clear = getattr(inductor_utils, "clear_caches", None) or inductor_utils.clear_inductor_caches
        clear()
    return ours
