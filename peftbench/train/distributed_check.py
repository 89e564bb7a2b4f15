"""Check FSDP training end to end: tiny:llama trained a few optimizer steps with a built-in method on every
process torchrun started, the loss curve and the trained model's logits written by rank 0 alone::

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m peftbench.train.distributed_check \\
        out.json full lora lora:fail=1@3 lora

Each RUN is ``METHOD[:OPTION,...]``, trained one after the other in the same processes (as a session's
cells are): ``fail=R@K`` makes rank R raise before optimizer step K (counted from 1; 0: while the others wait for it
to build its model), ``ckpt`` turns on
activation checkpointing, ``padded`` uses padded batches instead of packed ones, ``offload`` keeps the
sharded state in host memory (FSDP's CPU offload), ``bf16`` gathers and computes in bf16 (FSDP's mixed
precision, the default on CUDA). The training data, model and settings are
``reference_setup``'s, so a test can train the same run with ``peftbench.train.loop.train`` on one process
and compare. Without torchrun it runs as one process, unsharded.

Each run trains through ``peftbench.train.loop.train`` with the ``World``, as ``peftbench run --nproc`` does.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from peftbench.train.batching import TrainData, tokenize_pairs
from peftbench.train.config import TrainConfig
from peftbench.train.distributed import (
    DEFAULT_TIMEOUT_S,
    ShardPolicy,
    World,
    join_world,
    leave_world,
    run_together,
    shard_model,
    unsharded_copy,
    wait_for_all,
)
from peftbench.train.loop import train

SEED = 0
METHOD_OPTIONS = {"lora": {"dropout": 0.0, "r": 4}, "full": {}, "adapter": {}, "qlora": {"dropout": 0.0, "r": 4}}
# (no dropout: the ranks would draw other masks than one process does)
LR = {"lora": 5e-3, "full": 2e-3, "adapter": 5e-3, "qlora": 5e-3}


class InjectedFailure(RuntimeError):
    """The failure a ``fail=R@K`` run raises on purpose."""


@dataclass(frozen=True)
class RunSpec:
    method: str
    fail: tuple[int, int] | None = None  # (rank, step)
    checkpointing: bool = False
    padded: bool = False
    offload: bool = False
    bf16: bool = False

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        method, _, opts = text.partition(":")
        if method not in METHOD_OPTIONS:
            raise ValueError(f"run {text!r}: the method must be one of {', '.join(METHOD_OPTIONS)}")
        kw: dict[str, Any] = {}
        for opt in filter(None, opts.split(",")):
            if opt.startswith("fail="):
                rank, _, step = opt[5:].partition("@")
                if not (rank.isdigit() and step.isdigit()):
                    raise ValueError(f"run {text!r}: {opt!r} must be fail=RANK@STEP, e.g. fail=1@3")
                kw["fail"] = (int(rank), int(step))
            elif opt in ("ckpt", "padded", "offload", "bf16"):
                kw[{"ckpt": "checkpointing"}.get(opt, opt)] = True
            else:
                raise ValueError(f"run {text!r}: unknown option {opt!r}; valid: fail=R@K, ckpt, padded, offload, bf16")
        return cls(method, **kw)


def reference_setup(spec: RunSpec) -> tuple[Any, Any, TrainData, TrainConfig]:
    """The method, the prepared tiny:llama, the data and the training config of a run: the same on every
    rank and in a one-process reference (the seeds are fixed)."""
    from peftbench.models.sources import load_model

    method = _methods().get(spec.method)
    base, tokenizer, _ = load_model("tiny:llama", device="cpu")
    torch.manual_seed(SEED)  # the method's own initialisation (LoRA's A matrices)
    model = method.prepare(base, method.make_config(dict(METHOD_OPTIONS[spec.method])))
    pairs = [(f"Sentence: item {i}\nTag:", f" {'dax wug fep lum'.split()[i % 4]}{' x' * (i % 3)}") for i in range(24)]
    data = tokenize_pairs(pairs, tokenizer, 64)
    cfg = TrainConfig(steps=6, batch_size=4, grad_accum=2, lr=LR[spec.method], warmup_ratio=0.2, max_grad_norm=1.0,
                      gradient_checkpointing=spec.checkpointing, padding_free=not spec.padded)
    return method, model, data, cfg


@functools.cache
def _methods() -> Any:
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.api.registry import collect_methods

    return collect_methods(make_plugin_manager())


def probe_ids() -> torch.Tensor:
    """Token ids whose logits compare a trained model with its reference."""
    return torch.arange(3, 3 + 2 * 12).reshape(2, 12)


def run_one(spec: RunSpec, world: World) -> dict[str, Any]:
    """Train one run sharded over ``world`` and, on rank 0, the logits of the gathered weights loaded onto a
    fresh prepared model (what evaluation on one rank would see)."""
    method, model, data, cfg = reference_setup(spec)
    trainable = method.trainable_parameters(model)
    if spec.fail == (world.rank, 0):
        raise InjectedFailure(f"injected failure on rank {world.rank} while building the model")
    wait_for_all(world)  # the ranks built their models at their own pace: train from here in step
    if world.grouped:
        params, shard = shard_model(model, trainable, world, ShardPolicy(precision="bf16" if spec.bf16 else "auto",
                                                                        cpu_offload=spec.offload))
    else:
        model.to(world.device)  # (fully_shard moves a sharded model to its mesh's device itself)
        params, shard = [p for _, p in trainable], {"fsdp": None, "whole_forward": False}
    del trainable  # (sharded: it holds the unsharded originals)
    def fail_before_next(step: int, _metrics: dict[str, Any]) -> None:
        if spec.fail == (world.rank, step + 1):
            raise InjectedFailure(f"injected failure on rank {world.rank} before step {step + 1}")

    t0 = time.perf_counter()
    fail_before_next(0, {})
    trained = train(model, params, data, cfg, SEED, world.device, on_step=fail_before_next, world=world)
    result: dict[str, Any] = {"steps": trained.steps, "tokens": trained.tokens, "losses": trained.losses,
                              "wall_s": round(time.perf_counter() - t0, 3)}
    ranks: list[Any] = [world.rank]
    if world.grouped:  # (before rank 0 works alone below: the others must not wait on it in a collective)
        ranks = [None] * world.size
        dist.all_gather_object(ranks, world.rank)
    # one plain process scores the model it trained (a 4-bit model's state dict does not load strictly into a
    # fresh one: its quantization state is extra keys)
    fresh = unsharded_copy(model, world, lambda: reference_setup(spec)[1]) if world.grouped else model
    if fresh is not None:  # rank 0
        with torch.inference_mode():
            ids = probe_ids().to(next(fresh.parameters()).device)
            result["probe"] = method.inference_model(fresh.eval())(input_ids=ids).logits.float().flatten().tolist()
    return {**result, "shard": shard, "ranks_trained": ranks}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    timeout_s = DEFAULT_TIMEOUT_S
    try:
        if argv[0] == "--timeout":
            timeout_s, argv = float(argv[1]), argv[2:]
        out, specs = Path(argv[0]), [RunSpec.parse(a) for a in argv[1:]]
        if not specs:
            raise ValueError("name at least one run after the output file, e.g. lora")
    except (ValueError, IndexError) as e:
        print(f"distributed_check: {e or 'bad --timeout'}", file=sys.stderr)
        return 2
    world = join_world(timeout_s=timeout_s)
    runs = []
    try:
        for text, spec in zip(argv[1:], specs, strict=True):
            done = run_together(world, lambda spec=spec: run_one(spec, world))
            runs.append({"run": text, "ok": done.ok, "error": done.error(),
                         "failures": [f.to_json() for f in done.failures], **(done.value or {})})
            if world.broken:
                break
        if world.main:  # rank 0 alone writes
            out.write_text(json.dumps({"world": world.record(), "runs": runs}, indent=1))
    finally:
        leave_world(world)
    return 1 if world.broken else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
