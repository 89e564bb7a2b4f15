"""Regional compilation for the fast loop: each transformer block compiled in place while a run trains.

``CompiledBlocks`` is the context the loop trains in. It compiles the blocks the plan chose (for symbolic
shapes when the examples vary in length; with CUDA graphs only where they can work), makes the compiled
kernels round like eager ones, fuses the chunked loss's kernel, falls back to the eager blocks when the
compiler fails mid-run, and leaves the blocks plain on exit: evaluation and latency time the plain modules.
What it did goes into the run's loop record (``train.loop``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
    graph for the first shape and a recompilation when the next differs. ``mode``: torch.compile's mode
    ('reduce-overhead': CUDA graphs)."""
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND, dynamic=True if dynamic else None,
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
    ``data``, in torch.compile's ``mode`` where it can work; ``record``: the run's loop record."""

    def __init__(self, blocks: torch.nn.ModuleList | None, data: TrainData, mode: str, device: str,
                 record: dict[str, Any]) -> None:
        self.blocks, self.data, self.mode, self.device, self.record = blocks, data, mode, device, record
        self.cuda_graphs = False
        self._fused: fused_chunks | None = None
        self._contexts = contextlib.ExitStack()

    def __enter__(self) -> CompiledBlocks:
        if self.blocks is None:
            return self
        dynamic = len({len(x) for x in self.data.input_ids}) > 1  # batches of varying shape
        mode = self._usable_mode(dynamic)
        self.cuda_graphs = mode == "reduce-overhead"
        compile_blocks(self.blocks, dynamic=dynamic, mode=mode)
        self.record["compile"] += (", dynamic shapes" if dynamic else ", static shapes") + (
            ", CUDA graphs (reduce-overhead)" if self.cuda_graphs else "")
        self._contexts.enter_context(eager_rounding())
        self.record["compile_rounding"] = "eager (inductor emulate_precision_casts)"
        if self.record["chunked_loss"]:  # the chunks' softmax and gradient as one compiled kernel too
            self._fused = self._contexts.enter_context(fused_chunks(COMPILE_BACKEND))
        return self

    def _usable_mode(self, dynamic: bool) -> str:
        """The compile mode asked for, or 'default' (and a note why) where CUDA graphs cannot work."""
        if self.mode != "reduce-overhead" or not (dynamic or self.device != "cuda"):
            return self.mode
        why = "batches vary in shape: a CUDA graph per shape" if dynamic else "CUDA graphs need a CUDA device"
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
            return run()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            if self.blocks is None:
                raise
            uncompile_blocks(self.blocks)
            self.blocks, self.cuda_graphs = None, False
            self.record["compile"] = f"failed at step {step + 1}, off: {type(e).__name__}: {str(e)[:300]}"
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
            if self.blocks is not None:  # (uncompiled already, when the compiler failed mid-run)
                uncompile_blocks(self.blocks)
                torch._dynamo.reset()
