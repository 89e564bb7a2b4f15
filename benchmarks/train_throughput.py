"""Training throughput of every method: peftbench's fast loop against the naive loop, in the same process.

Every variant is ``peftbench.train.loop.train`` on the same data, batch, sequence length, seed and weights,
so the ratios are side by side, not absolute times from different runs:

  naive          loop=naive: padded batches, the model's own forward with full logits, no compilation
                 (the plain eager loop a first benchmark would write; fused AdamW, bf16 autocast on CUDA)
  fast           every optimisation peftbench uses by default in a long run (compile: on CUDA) but bucketing,
                 which is off (fast+buckets turns it on)
  fast-nocompile fast without torch.compile
  chunked_loss   only the chunked loss (and the head at labelled positions): no packing, no compile
  padding_free   only padding-free batches: no chunked loss, no compile
  compile        only regional torch.compile: no packing, no chunked loss
  fast+buckets   fast with bucketing=on (TrainConfig's option, where this checkout has it: otherwise the variant
                 is recorded as unavailable); every other variant sets bucketing=off where the option exists
  fast+buckets+graphs  fast+buckets with CUDA graphs (compile_mode=reduce-overhead; compiled as fast is)
  trainer+peft   the peer: transformers' Trainer + peft on the same weights, examples, order and batch size,
                 each batch padded to its longest example by DataCollatorForSeq2Seq (benchmarks/peer_trainer.py
                 says how it matches peftbench's method configs); also added by --peer

Data: random tokens of exactly --seq-len (no padding: packing has nothing to remove), or a task's real
training examples (--task sst2 --data-dir DIR, the real model's tokenizer), where padding-free batches
matter and the loss curves of the variants can be compared: "max loss dev" is the largest relative
difference from the naive loop's loss at any one of the first 50 steps, "window dev" the largest relative
difference of the mean loss over consecutive 10-step windows of those steps (per-step losses of a few
hundred tokens are noisy, and bf16 rounding differs between compiled and eager kernels).

Reported per method and variant: tokens/s (real tokens, padding not counted; over the steps after
--warmup), the ratio to the naive loop and to the peer (when it ran), median step time, peak memory (torch.cuda.max_memory_allocated)
and its ratio to the naive loop's, the first step's time (compilation included), and the model FLOPs
utilisation. FLOPs per trained token (stated so the MFU can be checked):
  full fine-tuning: 6 N (forward 2 N; backward 4 N: activation and weight gradients);
  frozen-base methods: 4 N + 6 x (the method's trainable parameters) (no weight gradients for the base);
  plus attention: 12 x layers x hidden x (mean sequence length) per token, every method;
N counts the weights that do matrix products per token: every parameter except the input embedding table
(the LM head counts, tied or not). Activation checkpointing's recomputation is not counted (model FLOPs,
not hardware FLOPs). Peak: --peak-tflops, else dense bf16 by GPU name (H100/H200 SXM 989, A100 312).

    python benchmarks/train_throughput.py --model shape:smollm2-135m --batch-size 16 --seq-len 512 --json out.json
    python benchmarks/train_throughput.py --model $PEFTBENCH_GGUF --task sst2 --data-dir /tmp/pb/data --steps 50
    python benchmarks/train_throughput.py --model tiny:llama --device cpu --steps 3 --batch-size 2 --seq-len 32  # smoke
    python benchmarks/train_throughput.py --model tiny:llama --device cpu --steps 3 --methods lora --peer  # + Trainer
    python benchmarks/train_throughput.py --markdown results/throughput-gpu/ablate.json  # the docs' table of a file
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM parts
VARIANTS: dict[str, dict[str, Any]] = {
    "naive": {"loop": "naive"},
    "fast": {},  # the default loop of a long run: compiled on CUDA, not on CPU (see run_variant)
    "fast-nocompile": {"compile": "off"},
    "fast-graphs": {"compile_mode": "reduce-overhead"},  # fast with CUDA graphs (fixed shapes, CUDA only)
    "chunked_loss": {"padding_free": False, "compile": "off"},
    "padding_free": {"chunked_loss": False, "compile": "off"},
    "compile": {"padding_free": False, "chunked_loss": False, "compile": "on"},
    "fast+buckets": {"bucketing": "on"},
    "fast+buckets+graphs": {"bucketing": "on", "compile_mode": "reduce-overhead"},
}
COMPILED_LIKE_FAST = ("fast", "fast-graphs", "fast+buckets", "fast+buckets+graphs")  # on CUDA unless --compile off
PEER = "trainer+peft"  # benchmarks/peer_trainer.py
LOSS_STEPS = 50
LOSS_WINDOW = 10  # steps per window of the smoothed comparison


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def matmul_params(model: Any) -> int:
    """Parameters that do a matrix product per token: all but the input embedding table (a 4-bit weight counted
    by its unpacked shape)."""
    total = sum(unpacked_numel(p) for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return total - emb.numel() + (emb.numel() if tied else 0)


def unpacked_numel(p: torch.Tensor) -> int:
    """Elements of ``p``; of a bitsandbytes 4-bit weight (two per byte), those of the weight it stands for."""
    state = getattr(p, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else p.numel()


def flops_per_token(n: int, trainable: int, full: bool, layers: int, hidden: int, seq: float) -> float:
    return (6 * n if full else 4 * n + 6 * trainable) + 12 * layers * hidden * seq


def random_data(vocab: int, rows: int, seq: int, seed: int = 0, lengths: tuple[int, int] | None = None):
    """Random token rows of ``seq`` tokens, or of lengths drawn uniformly from ``lengths`` (inclusive)."""
    from peftbench.train.batching import TrainData

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab - 1, (rows, seq), generator=g).tolist()
    if lengths:
        cut = torch.randint(lengths[0], lengths[1] + 1, (rows,), generator=g).tolist()
        ids = [row[:n] for row, n in zip(ids, cut, strict=True)]
    return TrainData(input_ids=ids, answer_start=[1] * rows, pad_id=0)  # loss on every next token


def task_data(task: str, model: str, data_dir: Path | None, max_length: int):
    """A task's real training examples, tokenized by the model's tokenizer exactly as ``peftbench run`` does."""
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.session.cell import train_split
    from peftbench.session.runner import Session, SessionConfig

    out = Path(tempfile.mkdtemp(prefix="pb-throughput-"))
    session = Session(SessionConfig(methods=["full"], tasks=[task], model=model, device="cpu", output=out,
                                    data_dir=data_dir, retention=[], base_row=False),
                      host=make_plugin_manager())
    plan = session.plan()
    return train_split(plan.tasks[0], session.cell_env(plan), max_length)  # what Session.run gives each cell


def missing_options(variant: str) -> list[str]:
    """The TrainConfig options ``variant`` sets that this checkout's TrainConfig does not have."""
    from dataclasses import fields

    from peftbench.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return [k for k in VARIANTS.get(variant, {}) if k not in names]


def variant_options(variant: str, args: Any) -> dict[str, Any]:
    """The TrainConfig options of ``variant`` (an on/off option given as a bool where TrainConfig has a bool)."""
    from dataclasses import fields

    from peftbench.train.config import TrainConfig

    types = {f.name: f.type for f in fields(TrainConfig)}
    options = {"compile": args.compile or ("on" if args.device == "cuda" else "off")} \
        if variant in COMPILED_LIKE_FAST else {}
    if "bucketing" in types:  # its default (auto) buckets wherever blocks compile on CUDA: only +buckets variants do
        options["bucketing"] = "off"
    for k, v in VARIANTS[variant].items():
        options[k] = (v == "on") if v in ("on", "off") and types.get(k) in (bool, "bool") else v
    return options


def cached_task_data(task: str, model: str, data_dir: Path | None, max_length: int, cache: Path | None):
    """``task_data``, kept in ``cache`` (JSON) and read back from it when it was written for the same task, model,
    data folder and max_length: processes benchmarking one task tokenize its training split once."""
    from peftbench.train.batching import TrainData

    key = {"task": task, "model": model, "data_dir": str(data_dir), "max_length": max_length}
    if cache and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return TrainData(**saved["data"])
    data = task_data(task, model, data_dir, max_length)
    if cache:
        part = cache.with_name(f"{cache.name}.{os.getpid()}.part")  # processes side by side write their own
        part.write_text(json.dumps({"key": key, "data": {"input_ids": data.input_ids,
                                                         "answer_start": data.answer_start, "pad_id": data.pad_id}}))
        part.replace(cache)
    return data


def run_variant(method: Any, resolved: Any, data: Any, variant: str, args: Any) -> dict[str, Any]:
    from peftbench.train.config import TrainConfig
    from peftbench.train.loop import train

    if variant == PEER:
        return run_peer_variant(method, resolved, data, args)
    missing = missing_options(variant)
    if missing:
        return {"status": "unavailable", "error": f"not available in this checkout: TrainConfig has no "
                                                  f"{', '.join(missing)} option"}
    from peftbench.train.compiling import forget_compiled

    forget_compiled()  # each variant compiles afresh: its first step's time includes its own compilation
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.weights_dtype]
    base, _ = resolved.load(args.device, dtype)
    n_matmul = matmul_params(base)
    cfg_model = base.config
    method_config = method.make_config({})
    model = method.prepare(base, method_config)
    params = [p for _, p in method.trainable_parameters(model)]
    trainable = sum(p.numel() for p in params)
    cfg = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.0,
                      max_length=args.seq_len, log_every=1, max_grad_norm=1.0,
                      gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer, dtype=args.autocast,
                      **variant_options(variant, args))
    marks: list[tuple[float, int]] = []
    # the last warm-up step runs in torch's sync-debug mode: every call that waits for the GPU inside a step
    # (each one stalls the host's launching) is recorded with where it was made; untimed
    check_at = args.warmup if args.device == "cuda" and args.warmup >= 2 else None

    recompiles: list[dict[str, Any]] = []
    seen_failures = guard_failures_seen()  # train() resets dynamo at its end: read them as the steps go

    gc_clock = GcClock()
    step_gc: list[float] = []
    step_cpu: list[int | None] = []

    def on_step(step: int, metrics: dict[str, Any]) -> None:
        recompiles.extend(new_guard_failures(seen_failures, step))
        step_gc.append(round(gc_clock.take(), 4))
        step_cpu.append(current_cpu())
        if step == check_at:
            torch.cuda.set_sync_debug_mode(0)
        if args.device == "cuda":
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), metrics["tokens"]))
        if check_at is not None and step == check_at - 1:
            torch.cuda.set_sync_debug_mode("warn")

    from peftbench.system import memory

    alloc0, graphs0, cpu0 = allocator_counts(args.device), compiled_graphs(), memory.cpu_sample()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, gc_clock:
        warnings.simplefilter("always")
        try:
            result = train(model, params, data, cfg, seed=0, device=args.device, on_step=on_step)
        finally:
            if check_at is not None:
                torch.cuda.set_sync_debug_mode(0)
    host_others = memory.host_others_cores(cpu0, memory.cpu_sample())
    alloc1, graphs1 = allocator_counts(args.device), compiled_graphs()
    clock = step_timing(t0, marks, args.warmup)
    seq_mean = sum(len(x) for x in data.input_ids) / len(data)
    fpt = flops_per_token(n_matmul, trainable, method.capabilities.trains_all_parameters,
                          cfg_model.num_hidden_layers, cfg_model.hidden_size, seq_mean)
    artifact = None
    if args.artifact and variant == [v for v in args.variants if v != PEER][-1]:  # what it ships, once per method
        with tempfile.TemporaryDirectory(prefix="pb-artifact-") as d:
            files = method.save(model, Path(d), method_config)
            artifact = {"bytes": sum(Path(f).stat().st_size for f in files), "files": len(files)}
    peak = peak_tflops(args.device, args.peak_tflops)
    tps = clock["tokens_per_s"]
    out = {"status": "ok", **clock,
           "peak_memory_bytes": result.peak_memory_bytes, "first_step_s": result.first_step_s,
           "losses": [loss for _, loss in result.losses], "loop": result.loop, "trainable": trainable,
           "flops_per_token": fpt, "mfu": (fpt * tps) / (peak * 1e12) if peak and tps else None,
           "total_params": sum(p.numel() for p in base.parameters()) if not method.capabilities.quantized_base
           else None, "artifact": artifact,
           # diagnostics of the stalls step_s shows: CPU other processes used on the host (host-bound steps slow
           # when it is shared), CUDA caching-allocator device mallocs/frees and retries (fragmentation under
           # varying shapes), graphs dynamo compiled (recompilations)
           "host_others_cores": host_others,
           "syncs_in_step": sync_sites(caught) if check_at is not None else None,
           "recompiles": recompiles,
           # per step: seconds the Python garbage collector ran, and the CPU the loop's thread was on at the
           # step's end (with each CPU's package: a loop that moves away from its GPU's socket launches slower)
           "gc_s": step_gc, "gc_full_collections": gc_clock.full,
           "step_cpu": step_cpu, "cpu_packages": cpu_packages({c for c in step_cpu if c is not None}),
           "allocator": {k: alloc1[k] - alloc0.get(k, 0) for k in alloc1} if alloc1 else None,
           "compiled_graphs": graphs1 - graphs0 if graphs0 is not None and graphs1 is not None else None}
    del model, base, params
    return out


def step_timing(t0: float, marks: list[tuple[float, int]], warmup: int) -> dict[str, Any]:
    """tokens/s over the steps after ``warmup``, every step's time and the median of the timed ones, from
    ``marks`` (per optimizer step, the device synchronised: time, real tokens trained so far) after ``t0``."""
    times = [b[0] - a[0] for a, b in zip([(t0, 0), *marks], marks, strict=False)]
    timed = marks[warmup - 1:] if warmup else [(t0, 0), *marks]
    span_s = timed[-1][0] - timed[0][0]
    span_tokens = timed[-1][1] - timed[0][1]
    step_median = statistics.median(times[warmup:] or times)
    n_timed = len(timed) - 1
    return {"tokens_per_s": span_tokens / span_s if span_s > 0 else None, "step_s_median": step_median,
            "step_s": [round(t, 6) for t in times],  # every step, warm-up included: where the stalls were
            # steady state: the mean tokens of a timed step over the median step time (recompilations and other
            # one-off stalls inside the timed steps do not count here; they do in tokens_per_s)
            "steady_tokens_per_s": (span_tokens / n_timed) / step_median if n_timed > 0 and step_median else None}


def run_peer_variant(method: Any, resolved: Any, data: Any, args: Any) -> dict[str, Any]:
    """The peer (benchmarks/peer_trainer.py) on the same data and settings, summarised as the other variants."""
    from peer_trainer import PeerUnavailable, run_peer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.weights_dtype]
    try:
        raw = run_peer(method.name, resolved, data, device=args.device, dtype=dtype, autocast=args.autocast,
                       batch_size=args.batch_size, steps=args.warmup + args.steps, lr=args.lr,
                       gradient_checkpointing=args.gradient_checkpointing)
    except PeerUnavailable as e:
        return {"status": "unavailable", "error": str(e)}
    model, trainable, full = raw.pop("model"), raw["trainable"], method.capabilities.trains_all_parameters
    added = 0 if full else trainable  # a frozen-base method's own parameters, not the base's
    cfg_model = model.config
    seq_mean = sum(len(x) for x in data.input_ids) / len(data)
    fpt = flops_per_token(matmul_params(model) - added, trainable, full, cfg_model.num_hidden_layers,
                          cfg_model.hidden_size, seq_mean)
    clock = step_timing(raw["t0"], raw["marks"], args.warmup)
    peak = peak_tflops(args.device, args.peak_tflops)
    tps = clock["tokens_per_s"]
    quantized = any(getattr(p, "quant_state", None) is not None for p in model.parameters())
    out = {"status": "ok", **clock, "peak_memory_bytes": raw["peak_memory_bytes"],
           "first_step_s": round(raw["marks"][0][0] - raw["t0"], 3), "losses": raw["losses"],
           "loop": {"loop": PEER, "peer": raw["peer"], **raw["settings"]}, "peer": raw["peer"],
           "trainable": trainable, "flops_per_token": fpt,
           "mfu": (fpt * tps) / (peak * 1e12) if peak and tps else None,
           "total_params": None if quantized else sum(p.numel() for p in model.parameters()) - added,
           "artifact": None}
    del model, raw
    gc.collect()  # Trainer's objects hold the model in reference cycles: gone before the next variant's peak
    return out


class GcClock:
    """Times the Python garbage collector while active (a ``gc.callbacks`` hook): ``take()`` returns the
    seconds collected since the last call; ``full`` counts collections of the oldest generation."""

    def __init__(self) -> None:
        self.pending, self.full, self._start = 0.0, 0, None

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.pending += time.perf_counter() - self._start
            self.full += info.get("generation") == 2
            self._start = None

    def take(self) -> float:
        out, self.pending = self.pending, 0.0
        return out

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._hook)


def current_cpu() -> int | None:
    """The CPU this thread last ran on (Linux: field 39 of /proc/thread-self/stat), else None."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


def cpu_packages(cpus: set[int]) -> dict[str, int]:
    """{cpu: physical package (socket)} for ``cpus``, from sysfs (empty where unknown)."""
    out = {}
    for c in sorted(cpus):
        try:
            out[str(c)] = int(Path(f"/sys/devices/system/cpu/cpu{c}/topology/physical_package_id").read_text())
        except (OSError, ValueError):
            pass
    return out


def guard_failures_seen() -> dict[Any, int]:
    """How many guard failures (recompilations) dynamo has recorded so far, per compiled function."""
    from torch._dynamo.utils import guard_failures

    return {code: len(reasons) for code, reasons in guard_failures.items()}


def new_guard_failures(seen: dict[Any, int], step: int) -> list[dict[str, Any]]:
    """The recompilations since the last call (``seen`` is updated): the step after which they were seen,
    the function and the failed guard (e.g. a size crossing a threshold the compiled code was built for)."""
    from torch._dynamo.utils import guard_failures

    found = []
    for code, reasons in list(guard_failures.items()):
        for reason in reasons[seen.get(code, 0):]:
            found.append({"step": step, "function": f"{code.co_name} ({Path(code.co_filename).name}:"
                                                       f"{code.co_firstlineno})",
                          "guard": " ".join(str(reason).split("\n")[0].split())[:300]})
        seen[code] = len(reasons)
    return found


SYNC_WARNING = "synchronizing CUDA operation"  # torch's sync-debug mode warning


def sync_sites(caught: list[Any]) -> list[dict[str, Any]]:
    """Where the sync-debug warnings came from: [{"where": "package/file.py:line", "count": n}], most first.
    One is expected per step: the loop reads the step's loss back (peftbench/train/loop.py) before the
    optimizer step."""
    counts: dict[str, int] = {}
    for w in caught:
        if SYNC_WARNING not in str(w.message):
            continue
        path = Path(str(w.filename)).parts
        cut = max((i + 1 for i, part in enumerate(path) if part in ("site-packages", "dist-packages")), default=0)
        if not cut and "peftbench" in path:
            cut = len(path) - 1 - path[::-1].index("peftbench")
        where = f"{'/'.join(path[cut:] if cut else path[-2:])}:{w.lineno}"
        counts[where] = counts.get(where, 0) + 1
    return [{"where": k, "count": v} for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


ALLOC_KEYS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")


def allocator_counts(device: str) -> dict[str, int]:
    """The CUDA caching allocator's counters that mean a device malloc/free (each can stall the host)."""
    if device != "cuda":
        return {}
    stats = torch.cuda.memory_stats()
    return {k: int(stats[k]) for k in ALLOC_KEYS if k in stats}


def compiled_graphs() -> int | None:
    """Graphs dynamo has compiled in this process so far (a recompilation adds one)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


def measure(method_name: str, resolved: Any, data: Any, args: Any, write: Any) -> dict[str, Any]:
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.api.registry import collect_methods

    method = collect_methods(make_plugin_manager()).get(method_name)
    out: dict[str, Any] = {"method": method_name, "variants": {}}
    for variant in args.variants:
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            out["variants"][variant] = run_variant(method, resolved, data, variant, args)
        except torch.cuda.OutOfMemoryError as e:
            reached = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
            out["variants"][variant] = {"status": "oom", "peak_memory_bytes": reached, "error": str(e)[:300]}
        except Exception as e:  # one failing variant never loses the others
            out["variants"][variant] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500],
                                        "traceback": traceback.format_exc()[-2000:]}
        compare(out)
        write(out)
    return out


def compare(out: dict[str, Any]) -> None:
    """Ratios to the naive loop and to the peer, and how far each loss curve strays from the naive loop's."""
    naive, peer = out["variants"].get("naive"), out["variants"].get(PEER)
    for name, v in out["variants"].items():
        if v.get("status") == "ok" and peer and peer.get("status") == "ok" and name != PEER \
                and v["tokens_per_s"] and peer["tokens_per_s"]:
            v["vs_peer"] = v["tokens_per_s"] / peer["tokens_per_s"]
        if v.get("status") != "ok" or not naive or naive.get("status") != "ok" or name == "naive":
            continue
        v["speedup"] = v["tokens_per_s"] / naive["tokens_per_s"]
        v["memory_ratio"] = (v["peak_memory_bytes"] / naive["peak_memory_bytes"]
                             if v["peak_memory_bytes"] and naive["peak_memory_bytes"] else None)
        v["max_loss_dev"], v["max_loss_dev_window"] = loss_deviation(naive["losses"], v["losses"])


def loss_deviation(ref: list[float], other: list[float]) -> tuple[float | None, float | None]:
    """How far ``other``'s loss curve strays from ``ref``'s over the first LOSS_STEPS steps: the largest
    relative difference at one step, and of the mean loss over consecutive LOSS_WINDOW-step windows."""
    pairs = list(zip(ref, other, strict=False))[:LOSS_STEPS]
    step = max(abs(b - a) / abs(a) for a, b in pairs) if pairs else None
    windows = [pairs[i:i + LOSS_WINDOW] for i in range(0, len(pairs) - LOSS_WINDOW + 1, LOSS_WINDOW)]
    window = max(abs(sum(b for _, b in w) - sum(a for a, _ in w)) / sum(a for a, _ in w)
                 for w in windows) if windows else None
    return step, window


def _gib(b: Any) -> str:
    return f"{b / 2**30:.2f}" if b else "-"


def _fmt(x: Any, fmt: str, scale: float = 1.0, suffix: str = "", missing: str = "—") -> str:
    return format(x * scale, fmt) + suffix if x is not None else missing


def print_table(results: list[dict[str, Any]]) -> None:
    head = (f"{'method':8s} {'variant':19s} {'tok/s':>10s} {'x naive':>8s} {'x peer':>7s} {'step ms':>8s} {'steady':>9s} "
            f"{'peak GiB':>9s} {'mem x':>6s} {'MFU':>6s} {'loss dev':>9s} {'window':>7s} {'1st step s':>10s}")
    print(head)
    print("-" * len(head))
    for r in results:
        for name, v in r["variants"].items():
            if v.get("status") == "unavailable":
                print(f"{r['method']:8s} {name:19s} unavailable: {v.get('error', '')}")
                continue
            if v.get("status") != "ok":
                print(f"{r['method']:8s} {name:19s} {v['status']}: {v.get('error', '')[:80]} "
                      f"(peak {_gib(v.get('peak_memory_bytes'))} GiB)")
                continue
            def f(x: Any, fmt: str, scale: float = 1.0) -> str:  # noqa: E306
                return _fmt(x, fmt, scale, missing="-")
            print(f"{r['method']:8s} {name:19s} {f(v['tokens_per_s'], ',.0f'):>10s} {f(v.get('speedup'), '.2f'):>8s} "
                  f"{f(v.get('vs_peer'), '.2f'):>7s} {v['step_s_median'] * 1000:8.1f} {f(v.get('steady_tokens_per_s'), ',.0f'):>9s} "
                  f"{_gib(v['peak_memory_bytes']):>9s} "
                  f"{f(v.get('memory_ratio'), '.2f'):>6s} {f(v['mfu'], '.1f', 100):>5s}% "
                  f"{f(v.get('max_loss_dev'), '.2f', 100):>8s}% "
                  f"{f(v.get('max_loss_dev_window'), '.2f', 100):>6s}% "
                  f"{f(v['first_step_s'], '.1f'):>10s}")
    for line in diagnostics(results):
        print(line)


def diagnostics(results: list[dict[str, Any]]) -> list[str]:
    """Lines under a table: variants timed on a busy host, with recompilations or allocator churn."""
    from peftbench.system.memory import HOST_BUSY_CORES

    lines = []
    for r in results:
        for name, v in r["variants"].items():
            notes = []
            if (v.get("host_others_cores") or 0) > HOST_BUSY_CORES:
                notes.append(f"host busy: other processes kept {v['host_others_cores']:.1f} CPU cores busy")
            if v.get("syncs_in_step"):
                notes.append("device syncs in a step: " + ", ".join(f"{x['where']} x{x['count']}"
                                                                     for x in v["syncs_in_step"]))
            gcs = v.get("gc_s") or []
            if sum(gcs) > 0.05:
                notes.append(f"garbage collection {sum(gcs):.2f} s in all ({v.get('gc_full_collections', 0)} full), "
                             f"at most {max(gcs) * 1000:.0f} ms in one step")
            packages = v.get("cpu_packages") or {}
            if len(set(packages.values())) > 1:
                per = {}
                for c in v.get("step_cpu") or []:
                    if str(c) in packages:
                        per[packages[str(c)]] = per.get(packages[str(c)], 0) + 1
                notes.append("steps ended on CPU packages " + ", ".join(f"{p}: {n}" for p, n in sorted(per.items())))
            for event in v.get("recompiles") or []:
                notes.append(f"recompiled {event['function']} at step {event['step']}: {event['guard'][:120]}")
            if (v.get("compiled_graphs") or 0) > 0:
                notes.append(f"{v['compiled_graphs']} graphs compiled")
            alloc = v.get("allocator") or {}
            if alloc.get("num_device_alloc"):
                notes.append(f"{alloc['num_device_alloc']} device mallocs, {alloc.get('num_device_free', 0)} frees, "
                             f"{alloc.get('num_alloc_retries', 0)} retries")
            if notes:
                lines.append(f"{r['method']} {name}: " + "; ".join(notes))
    return lines


def markdown(data: dict[str, Any]) -> str:
    """A results file as the docs show it: a bold title line, then one Markdown row per method x variant."""
    st, env = data["settings"], data["env"]
    what = f"task {st['task']}" if st.get("task") else (
        f"random tokens x {st['lengths']} (uniform)" if st.get("lengths") else f"random tokens x {st['seq_len']}")
    title = (f"**{Path(str(st['model'])).name} on {env.get('gpu') or env['device']}: batch {st['batch_size']}, {what}, "
             f"weights {st['weights_dtype']}{', activation checkpointing' if st.get('gradient_checkpointing') else ''}; "
             f"{st['steps']} timed steps after {st['warmup']}**")
    steady = any("steady_tokens_per_s" in v for r in data["results"] for v in r["variants"].values())
    peer = any(PEER in r["variants"] for r in data["results"])  # files of runs with the peer: its column
    rows = ["| method | variant | tokens/s | x naive | " + ("x Trainer+peft | " if peer else "") + "step ms (median) | "
            + ("steady tokens/s | " if steady else "")
            + "peak GiB | memory x naive | MFU | loss dev: max step / 10-step window | first step s |",
            "|---|---|---|---|---|" + ("---|" if peer else "") + ("---|" if steady else "") + "---|---|---|---|---|"]

    f = _fmt
    for r in data["results"]:
        for name, v in r["variants"].items():
            if v.get("status") != "ok":
                what = f"unavailable: {v.get('error', '')}" if v.get("status") == "unavailable" else \
                    f"{v['status']} (peak {_gib(v.get('peak_memory_bytes'))} GiB)"
                rows.append(f"| {r['method']} | {name} | {what} " + "| " * (8 + steady + peer) + "|")
                continue
            dev = "—" if v.get("max_loss_dev") is None else \
                f"{v['max_loss_dev'] * 100:.2f}% / {f(v.get('max_loss_dev_window'), '.2f', 100, '%')}"
            rows.append(f"| {r['method']} | {name} | {f(v['tokens_per_s'], ',.0f')} | {f(v.get('speedup'), '.2f')} | "
                        + (f"{f(v.get('vs_peer'), '.2f')} | " if peer else "")
                        + f"{v['step_s_median'] * 1000:.1f} | "
                        + (f"{f(v.get('steady_tokens_per_s'), ',.0f')} | " if steady else "")
                        + f"{_gib(v['peak_memory_bytes'])} | "
                        f"{f(v.get('memory_ratio'), '.2f')} | {f(v['mfu'], '.1f', 100, '%')} | {dev} | "
                        f"{f(v['first_step_s'], '.1f')} |")
    return title + "\n\n" + "\n".join(rows)


def environment(args: Any) -> dict[str, Any]:
    import hashlib

    import peft
    import transformers

    src = hashlib.sha256()
    for p in sorted((ROOT / "peftbench").rglob("*.py")) + [Path(__file__)]:
        src.update(p.read_bytes())
    return {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "source_sha256": src.hexdigest(),
            "peak_tflops": peak_tflops(args.device, args.peak_tflops),
            "gpu_local_cpus": gpu_local_cpus() if args.device == "cuda" else None}


def gpu_local_cpus() -> str | None:
    """The CPUs on the current GPU's NUMA node (sysfs local_cpulist, e.g. "0-15,32-47"), to read ``step_cpu``
    against; None where unknown."""
    try:
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        bus = f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
        return Path(f"/sys/bus/pci/devices/{bus}/local_cpulist").read_text().strip()
    except (AttributeError, OSError, RuntimeError):
        return None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--markdown"]:  # render committed results files: --markdown FILE...
        for path in argv[1:]:
            print(markdown(json.loads(Path(path).read_text())) + "\n")
        return []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shape:smollm2-135m")
    ap.add_argument("--methods", default="full,lora,qlora,adapter")
    ap.add_argument("--variants", default="naive,fast", help=f"comma-separated, of: {', '.join([*VARIANTS, PEER])}")
    ap.add_argument("--peer", action="store_true", help=f"also run the peer, transformers' Trainer + peft ({PEER}; "
                    "benchmarks/peer_trainer.py), on the same data: ratios to it in 'x peer'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights-dtype", choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--autocast", choices=["auto", "bf16", "fp32"], default="auto",
                    help="the loop's dtype option: auto (bf16 autocast on CUDA, none on CPU), bf16, fp32")
    ap.add_argument("--task", help="train on this task's real examples instead of random tokens")
    ap.add_argument("--data-dir", type=Path, help="local data folder for --task")
    ap.add_argument("--data-cache", type=Path, help="with --task: keep the tokenized examples in this JSON file, "
                    "and read them from it when it was written for the same task, model, data folder and --seq-len")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per random row; with --task, max_length")
    ap.add_argument("--lengths", metavar="LO-HI", help="random rows of lengths drawn uniformly from LO..HI tokens "
                    "(variable lengths: what padding-free batches are for) instead of exactly --seq-len")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--gradient-checkpointing", action="store_true", help="for every variant alike")
    ap.add_argument("--artifact", action="store_true", help="also save each method's artifact after its last "
                    "variant and record its size (what the method ships)")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: by GPU name)")
    ap.add_argument("--compile", choices=["on", "off"],
                    help="compile the fast variants' blocks or not (default: on CUDA yes, on CPU no); e.g. on CPU to "
                         "see the recompilations the JSON's 'recompiles' records")
    ap.add_argument("--memory-limit-gib", type=float,
                    help="cap this process's CUDA allocations (torch.cuda.set_per_process_memory_fraction) to see "
                         "what fits a smaller GPU: 79 for an 80 GB H100 (81,559 MiB, less ~0.6 GiB of CUDA context); "
                         "a variant that needs more is recorded as oom with the memory it reached")
    ap.add_argument("--json", type=Path, help="write the results here (rewritten after every variant)")
    args = ap.parse_args(argv)
    if args.memory_limit_gib:
        if args.device != "cuda":
            ap.error("--memory-limit-gib caps CUDA allocations: it needs --device cuda")
        total = torch.cuda.get_device_properties(0).total_memory
        if not 0 < args.memory_limit_gib * 2**30 <= total:
            ap.error(f"--memory-limit-gib {args.memory_limit_gib}: this GPU has {total / 2**30:.1f} GiB")
        torch.cuda.set_per_process_memory_fraction(args.memory_limit_gib * 2**30 / total)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS and v != PEER]
    if bad:
        ap.error(f"--variants: unknown {', '.join(bad)}; valid: {', '.join([*VARIANTS, PEER])}")
    if args.peer and PEER not in args.variants:
        args.variants.append(PEER)
    args.weights_dtype = args.weights_dtype or ("bf16" if args.device == "cuda" else "fp32")
    from peftbench.models.sources import resolve_model

    resolved = resolve_model(args.model)
    if args.task:
        data = cached_task_data(args.task, args.model, args.data_dir, args.seq_len, args.data_cache)
    else:
        vocab = resolved.load("meta")[0].config.vocab_size if args.model.startswith("shape:") else \
            resolved.load("cpu")[0].config.vocab_size
        span = None
        if args.lengths:
            try:
                lo, hi = (int(x) for x in args.lengths.split("-"))
                assert 2 <= lo <= hi
            except (ValueError, AssertionError):
                ap.error(f"--lengths {args.lengths!r}: expected LO-HI with 2 <= LO <= HI, e.g. 64-512")
            span, args.seq_len = (lo, hi), hi
        data = random_data(vocab, args.batch_size * (args.warmup + args.steps), args.seq_len, lengths=span)
    env = environment(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("json", "data_cache")}
    results: list[dict[str, Any]] = []

    def write(current: dict[str, Any]) -> None:
        if args.json:
            done = [r for r in results if r is not current] + [current]
            args.json.write_text(json.dumps({"env": env, "settings": settings, "results": done}, indent=1))

    for m in [m.strip() for m in args.methods.split(",") if m.strip()]:
        results.append(measure(m, resolved, data, args, write))
    print(f"{args.model} on {env['gpu'] or args.device}: batch {args.batch_size}, "
          f"{'task ' + args.task if args.task else f'random tokens x {args.lengths or args.seq_len}'}, "
          f"weights {args.weights_dtype}"
          f"{', activation checkpointing' if args.gradient_checkpointing else ''}")
    print_table(results)
    return results


if __name__ == "__main__":
    main()
