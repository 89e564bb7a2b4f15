"""``peftbench estimate``: per-GPU training memory of each method at any scale, by calculation (no GPU, no
weights), and the same formulas against measured peaks (``--check``)."""

from __future__ import annotations

from pathlib import Path

import click

from peftbench.cli import flags
from peftbench.cli.output import print_json, print_tables
from peftbench.errors import UsageError

GIB = 2**30
BAR = 0.15  # docs/estimate.md: the estimate is held to 15 % of every measured peak it models


@click.command()
@click.option("--model", "models", default="shape:llama-3.1-8b", show_default=True,
              help="comma-separated shape:NAME (shipped configs) or paths to a config.json / a folder holding one")
@click.option("--methods", default="full,lora,qlora", show_default=True, help="comma-separated: full, lora, qlora, adapter")
@click.option("--gpus", default="1", show_default=True,
              help="FSDP world size(s), comma-separated (1: the single-GPU loop; N > 1: FSDP2 over N GPUs)")
@click.option("--fsdp", is_flag=True, help="FSDP2 even with --gpus 1 (one rank); more GPUs always shard")
@click.option("--gpu-memory", default="80GiB", show_default=True, help="memory of one GPU, e.g. 80GiB, 48GB")
@click.option("--batch-size", default=1, show_default=True, type=int, help="sequences per micro-batch, per GPU")
@click.option("--seq-len", default=2048, show_default=True, type=int, help="tokens per sequence")
@click.option("--activation-checkpointing", is_flag=True, help="recompute each block's activations in backward")
@click.option("--optimizer-offload", is_flag=True,
              help="FSDP's CPU offload: the sharded weights, their gradients and AdamW's moments in host memory")
@click.option("--master-weights", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="dtype the weights are stored in, and the trainable ones' gradients and AdamW moments (fp32: "
                   "peftbench run's fp32 weights under bf16 autocast, or FSDP's fp32 shards; bf16: pure bf16, as "
                   "benchmarks/train_throughput.py trains on CUDA); compute is bf16 either way")
@click.option("--optimizer", default="adamw", show_default=True, type=click.Choice(["adamw", "adamw_8bit"]))
@click.option("--naive", is_flag=True, help="the naive loop: eager blocks and full logits")
@click.option("--no-compile", is_flag=True, help="eager blocks (the fast loop off CUDA, or compile=off)")
@click.option("--lora-rank", default=16, show_default=True, type=int, help="LoRA/QLoRA rank (lora's default)")
@click.option("--lora-targets", default="all-linear", show_default=True,
              help="LoRA/QLoRA targets: all-linear or comma-separated names (q_proj,v_proj)")
@click.option("--adapter-placement", default="houlsby", show_default=True,
              type=click.Choice(["houlsby", "pfeiffer", "parallel"]))
@click.option("--adapter-reduction", default=16, show_default=True, type=int, help="bottleneck = hidden // this")
@click.option("--mfu", type=float, help="model FLOPs utilisation for the tokens/s column (default: what the fast "
                                        "loop reached on the 8B shape on one H200, by method and checkpointing)")
@click.option("--peak-tflops", default=989.0, show_default=True, type=float,
              help="one GPU's dense bf16 peak, for the tokens/s column (H100/H200 SXM: 989; A100: 312)")
@click.option("--claims", "show_claims", is_flag=True,
              help="instead: the scale claims peftbench checks by calculation (peftbench/report/calculated_claims.yaml)")
@click.option("--check", is_flag=True,
              help="instead: compare with the measured peaks in FILES (benchmarks/train_throughput.py --json files)")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="same as --format json")
def estimate(models, methods, gpus, fsdp, gpu_memory, batch_size, seq_len, activation_checkpointing, optimizer_offload,
             master_weights, optimizer, naive, no_compile, lora_rank, lora_targets, adapter_placement,
             adapter_reduction, mfu, peak_tflops, show_claims, check, files, fmt, as_json):
    """Per-GPU memory of a training step for each method, by calculation: weights, gradients, optimizer
    state, activations at the batch given, the loss, the peak and whether it fits on --gpu-memory (with the
    CUDA context). The formulas and their check against measured peaks: docs/estimate.md."""
    fmt = "json" if as_json else fmt
    if show_claims:
        return _claims(fmt)
    if check or files:
        if not (check and files):
            raise UsageError("FILES go with --check (peftbench estimate --check results/throughput-gpu/8b-all.json); "
                             "--check needs at least one file.")
        return _check(files, fmt)
    from peftbench.estimate import Setting, load_architecture, parse_memory
    from peftbench.estimate import estimate as calculate

    if mfu is not None and not 0 < mfu <= 1:
        raise UsageError(f"--mfu {mfu}: a utilisation is a fraction in (0, 1], e.g. 0.45.")
    if peak_tflops <= 0:
        raise UsageError(f"--peak-tflops {peak_tflops}: a GPU's peak is a positive number of TFLOP/s, e.g. 989.")
    memory = parse_memory(gpu_memory)
    targets = tuple(flags.comma_list(lora_targets, "--lora-targets"))
    results = []
    for model in flags.comma_list(models, "--model"):
        arch = load_architecture(model)
        for n in flags.whole_numbers(gpus, "--gpus"):
            if n < 1:
                raise UsageError(f"--gpus {gpus!r}: a world size is a whole number >= 1, got {n}.")
            for method in flags.comma_list(methods, "--methods"):
                setting = Setting(method=method, gpus=n, gpu_memory=memory, batch_size=batch_size, seq_len=seq_len,
                                  activation_checkpointing=activation_checkpointing,
                                  optimizer_offload=optimizer_offload, master_weights=master_weights,
                                  optimizer=optimizer, compiled=not (naive or no_compile), chunked_loss=not naive,
                                  lora_rank=lora_rank, lora_targets=targets, adapter_placement=adapter_placement,
                                  adapter_reduction=adapter_reduction, fsdp=fsdp)
                results.append((calculate(arch, setting), _speed(arch, setting, mfu, peak_tflops)))
    if fmt == "json":
        print_json([{**e.to_dict(), "throughput": speed} for e, speed in results])
    else:
        print_tables(estimate_tables(results), markdown=fmt == "markdown")


def _speed(arch, setting, mfu: float | None, peak_tflops: float) -> dict:
    from peftbench.estimate.parameters import stored
    from peftbench.estimate.throughput import default_mfu, flops_per_token, tokens_per_second

    trainable = stored(arch, setting).trainable_params
    used = mfu or default_mfu(setting)
    per_gpu = tokens_per_second(arch, setting, trainable, used, peak_tflops)
    return {"flops_per_token": flops_per_token(arch, setting, trainable), "mfu": used, "peak_tflops": peak_tflops,
            "tokens_per_s_per_gpu": per_gpu, "tokens_per_s": per_gpu * setting.gpus}


def estimate_tables(results) -> list:
    """One table per model and world size: a row per method."""
    from rich.table import Table

    groups: dict[tuple[str, int], list] = {}
    for e, speed in results:
        groups.setdefault((e.model, e.setting.gpus), []).append((e, speed))
    tables = []
    for (model, n), rows in groups.items():
        s = rows[0][0].setting
        where = (f"{n} GPUs (FSDP)" if n > 1 else "1 GPU (FSDP)" if s.fsdp else "1 GPU")
        t = Table(title=f"{model} on {where}, {_gib(s.gpu_memory)} GiB each: batch {s.batch_size} x {s.seq_len}, "
                        f"{_how(s)} — GiB per GPU, by calculation", title_justify="left", header_style="bold")
        for col in ("method", "trainable", "weights", "compute copies", "gradients", "optimizer", "activations",
                    "backward work", "loss", "peak", "at", "+ context", "fits", "tokens/s/GPU"):
            t.add_column(col, justify="left" if col in ("method", "at", "fits") else "right")
        for e, speed in rows:
            t.add_row(e.setting.method, f"{e.trainable_params:,}", _gib(e.weights), _gib(e.compute_copies),
                      _gib(e.gradients), _gib(e.optimizer) + (f" (+{_gib(e.host)} host)" if e.host else ""),
                      _gib(e.activations), _gib(e.backward_work), _gib(e.loss), _gib(e.peak), e.peak_phase,
                      _gib(e.with_context), "[green]yes[/]" if e.fits else "[red]no[/]",
                      f"{speed['tokens_per_s_per_gpu']:,.0f} (MFU {speed['mfu']:.0%})")
        t.caption = ("peak = the largest of the step's phases (forward end, backward of the top block, optimizer "
                     "step), so the parts do not add up to it; + context: the CUDA context, 0.76 GiB; tokens/s at "
                     f"the MFU shown of {rows[0][1]['peak_tflops']:g} TFLOP/s (an assumption, not a calculation). "
                     "Formulas: docs/estimate.md.")
        tables.append(t)
    return tables


def _how(s) -> str:
    parts = [f"{s.master_weights} weights", s.optimizer + (" (offloaded)" if s.optimizer_offload else ""),
             "checkpointing" if s.activation_checkpointing else "no checkpointing",
             "compiled blocks" if s.compiled else "eager blocks", "chunked loss" if s.chunked_loss else "full logits"]
    return ", ".join(parts)


def _check(paths, fmt: str) -> None:
    """The estimate next to every measured peak it models in ``paths``."""
    from rich.table import Table

    from peftbench.estimate.measured import comparisons

    rows = [c for p in paths for c in comparisons(p)]
    if not rows:
        raise UsageError(f"--check {', '.join(map(str, paths))}: no run there that the estimate models (a shape: "
                         "model on random rows of one length, a built-in method, AdamW, on CUDA).")
    if fmt == "json":
        print_json([{"file": c.file, "method": c.method, "variant": c.variant, "measured": c.measured,
                     "estimated": c.estimated.peak, "phase": c.estimated.peak_phase, "error": c.error,
                     "setting": c.estimated.to_dict()["setting"]} for c in rows])
        return
    t = Table(title="the estimate against measured peaks (torch.cuda.max_memory_allocated), GiB",
              title_justify="left", header_style="bold")
    for col in ("file", "model", "method", "variant", "batch", "checkpointing", "measured", "estimated", "error", "at"):
        t.add_column(col, justify="right" if col in ("measured", "estimated", "error") else "left")
    for c in rows:
        s = c.estimated.setting
        err = f"{c.error * 100:+.1f}%"
        t.add_row(c.file, c.estimated.model, c.method, c.variant, f"{s.batch_size} x {s.seq_len}",
                  "yes" if s.activation_checkpointing else "no", _gib(c.measured), _gib(c.estimated.peak),
                  err if abs(c.error) <= BAR else f"[red]{err}[/]", c.estimated.peak_phase)
    t.caption = f"error = estimated / measured - 1; red: beyond the {BAR:.0%} bar (docs/estimate.md says why)"
    print_tables([t], markdown=fmt == "markdown")


def _claims(fmt: str) -> None:
    """The by-calculation claims: each one's calculated value, the claimed range and the verdict."""
    from rich.table import Table

    from peftbench.report.calculated import check_by_calculation

    results = check_by_calculation()
    if fmt == "json":
        print_json(results)
        return
    t = Table(title="scale claims checked by calculation (peftbench estimate)", title_justify="left",
              header_style="bold")
    for col in ("claim", "on", "calculated", "claimed", "verdict", "how"):
        t.add_column(col, justify="right" if col in ("calculated", "claimed") else "left")
    for r in results:
        lo, hi = (_in_unit(v, r["unit"]) if v is not None else None for v in r["range"])
        claimed = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"{lo} to {hi}"
        color = "green" if r["verdict"].startswith("holds") else "red"
        t.add_row(r["claim"], r["task"], _in_unit(r["value"], r["unit"]), claimed, f"[{color}]{r['verdict']}[/]",
                  r["how"])
    print_tables([t], markdown=fmt == "markdown")


def _in_unit(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.0f}%" if unit == "share" else f"{value:.0f} GPUs" if unit == "GPUs" else f"{value:.1f} GiB"


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"
