"""Training throughput of every method: peftbench's shared loop against the naive loop, in the same process.

The naive loop is the plain eager loop a first benchmark would write: ``model(input_ids, labels=...)`` (full
logits over the vocabulary, cross-entropy on every position), fused AdamW, bf16 autocast on CUDA. peftbench's
loop is ``peftbench.training.train`` on the same random tokens, batch and sequence length. For each method:
tokens/s, step time, peak memory and model FLOPs utilisation, and the ratios to the naive loop — ratios
measured side by side, not absolute times from different runs.

FLOPs per trained token (the usual estimate; stated so the MFU can be checked):
  full fine-tuning: 6 N (forward 2 N, backward 4 N: activation and weight gradients);
  frozen-base methods: 4 N (no weight gradients for the base; the method's own parameters are negligible);
  plus attention: 12 x layers x hidden x sequence length per token (forward and backward), all methods.
N is the parameter count of the base (non-embedding parameters would lower it slightly; we keep the total).

    python benchmarks/train_throughput.py --model shape:smollm2-135m --device cuda --batch-size 16 --seq-len 512
    python benchmarks/train_throughput.py --model tiny:llama --device cpu --steps 3 --batch-size 2 --seq-len 32  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM parts


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def flops_per_token(n_params: int, full: bool, layers: int, hidden: int, seq: int) -> float:
    return (6 if full else 4) * n_params + 12 * layers * hidden * seq


def random_batches(vocab: int, batch: int, seq: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab - 1, (batch, seq), generator=g) for _ in range(steps)]


def naive_loop(model, params, batches, device: str, lr: float) -> dict:
    """The plain eager loop (the reference every ratio is taken against)."""
    from peftbench.memory import PeakMemory

    opt = torch.optim.AdamW(params, lr=lr, fused=(device == "cuda"))
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")
    model.train()
    losses, times = [], []
    with PeakMemory(device) as mem:
        for ids in batches:
            ids = ids.to(device)
            t0 = time.perf_counter()
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss))
    return {"times": times, "losses": losses, "peak_memory_bytes": mem.peak}


def peftbench_loop(model, params, batches, device: str, lr: float) -> dict:
    from peftbench.config import TrainConfig
    from peftbench.training import TrainData, train

    rows = [row.tolist() for ids in batches for row in ids]
    data = TrainData(input_ids=rows, answer_start=[1] * len(rows), pad_id=0)  # loss on every next token
    cfg = TrainConfig(steps=len(batches), batch_size=batches[0].shape[0], lr=lr, warmup_ratio=0.0,
                      max_length=batches[0].shape[1], latency_rounds=0, log_every=1)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step, metrics):
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    result = train(model, params, data, cfg, seed=0, device=device, on_step=on_step)
    return {"times": times, "losses": [loss for _, loss in result.losses], "peak_memory_bytes": result.peak_memory_bytes}


def measure(method_name: str, args) -> dict:
    from peftbench.models import resolve_model
    from peftbench.plugins import make_plugin_manager
    from peftbench.registry import collect_methods

    registry = collect_methods(make_plugin_manager())
    method = registry.get(method_name)
    resolved = resolve_model(args.model)
    out = {"method": method_name}
    for loop_name, loop in (("naive", naive_loop), ("peftbench", peftbench_loop)):
        torch.manual_seed(0)
        base, _ = resolved.load(args.device)
        n_params = sum(p.numel() for p in base.parameters())
        model = method.prepare(base, method.make_config({}))
        params = [p for _, p in method.trainable_parameters(model)]
        cfg = base.config
        batches = random_batches(cfg.vocab_size, args.batch_size, args.seq_len, args.warmup + args.steps)
        res = loop(model, params, batches, args.device, args.lr)
        timed = res["times"][args.warmup:]
        step_s = sorted(timed)[len(timed) // 2]
        tokens = args.batch_size * args.seq_len
        fpt = flops_per_token(n_params, method.capabilities.trains_all_parameters, cfg.num_hidden_layers,
                              cfg.hidden_size, args.seq_len)
        peak = peak_tflops(args.device, args.peak_tflops)
        out[loop_name] = {"step_s_median": step_s, "tokens_per_s": tokens / step_s,
                          "peak_memory_bytes": res["peak_memory_bytes"], "losses": res["losses"],
                          "mfu": (fpt * tokens / step_s) / (peak * 1e12) if peak else None}
        del model, base, params
        if args.device == "cuda":
            torch.cuda.empty_cache()
    out["speedup"] = out["peftbench"]["tokens_per_s"] / out["naive"]["tokens_per_s"]
    out["memory_ratio"] = ((out["peftbench"]["peak_memory_bytes"] or 0) / out["naive"]["peak_memory_bytes"]
                           if out["naive"]["peak_memory_bytes"] else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shape:smollm2-135m")
    ap.add_argument("--methods", default="full,lora,qlora,adapter")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median step time reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: by GPU name)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    env = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
           "torch": torch.__version__, "model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
           "steps": args.steps, "warmup": args.warmup}
    results = [measure(m.strip(), args) for m in args.methods.split(",") if m.strip()]
    print(f"{'method':10s} {'naive tok/s':>12s} {'peftbench tok/s':>16s} {'speedup':>8s} {'mem ratio':>10s} "
          f"{'MFU naive':>10s} {'MFU pb':>8s}")
    for r in results:
        mfu = [r[k]["mfu"] for k in ("naive", "peftbench")]
        print(f"{r['method']:10s} {r['naive']['tokens_per_s']:12,.0f} {r['peftbench']['tokens_per_s']:16,.0f} "
              f"{r['speedup']:8.2f} {r['memory_ratio'] or float('nan'):10.2f} "
              + " ".join(f"{x * 100:9.1f}%" if x is not None else f"{'-':>9s}" for x in mfu))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
