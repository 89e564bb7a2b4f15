"""The chunked linear cross-entropy (peftbench.train.loss) against the plain one, forward and backward, alone.

Prints the median time of each over alternating repetitions, and the peak memory on CUDA. Defaults: SmolLM2's
head (hidden 576, vocabulary 49,152), 8,192 tokens (batch 16 x 512), bf16 autocast on CUDA.

    python benchmarks/loss_speed.py --device cuda --fused
    python benchmarks/loss_speed.py --device cpu --tokens 2048 --reps 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peftbench.train.loss import fused_chunks, linear_cross_entropy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--frozen-head", action="store_true", help="the head needs no gradient (LoRA, adapters)")
    ap.add_argument("--fused", action="store_true", help="also the chunked loss with its compiled chunk kernel "
                    "(as the training loop runs it when it compiles the blocks)")
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    h = torch.randn(args.tokens, args.hidden, device=dev, requires_grad=True)
    w = (torch.randn(args.vocab, args.hidden, device=dev) * 0.02).requires_grad_(not args.frozen_head)
    y = torch.randint(0, args.vocab, (args.tokens,), device=dev)
    autocast = torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda")

    def plain():
        with autocast:
            loss = F.cross_entropy(F.linear(h, w).float(), y)
        loss.backward()

    def chunked():
        with autocast:
            loss = linear_cross_entropy(h, w, y)
        loss.backward()

    fused_ctx = fused_chunks()

    def fused():
        with fused_ctx, autocast:
            loss = linear_cross_entropy(h, w, y)
        loss.backward()

    variants = (("plain", plain), ("chunked", chunked)) + ((("fused", fused),) if args.fused else ())
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    peaks: dict[str, int] = {}
    for _ in range(args.reps + 1):  # the first round warms up and is dropped
        for name, fn in variants:
            if dev == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
                peaks[name] = torch.cuda.max_memory_allocated()
            times[name].append(time.perf_counter() - t0)
            h.grad = None
            w.grad = None
    print(f"{args.tokens} tokens x hidden {args.hidden} x vocab {args.vocab} on {dev}"
          f"{' (frozen head)' if args.frozen_head else ''}, median of {args.reps}:")
    for name, ts in times.items():
        peak = f", peak {peaks[name] / 2**30:.2f} GiB" if name in peaks else ""
        print(f"  {name:8s} {statistics.median(ts[1:]) * 1000:9.1f} ms{peak}")
    for name in times:
        if name != "plain":
            ratio = statistics.median(times[name][1:]) / statistics.median(times["plain"][1:])
            print(f"  {name} / plain time: {ratio:.2f}")
    if args.fused:
        print(f"  fused kernel: {fused_ctx.status}")


if __name__ == "__main__":
    main()
