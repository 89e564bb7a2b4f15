"""What one full garbage collection costs in a process that holds a model (the latency harness collects
before timing; results/latency-gpu/README.md cites this figure).

    python benchmarks/gc_cost.py --model PATH_OR_SOURCE [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import time


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:llama", help="a peftbench model source (a .gguf file, a folder, ...)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    import peft  # noqa: F401  (loaded as in a latency run: its modules are part of the heap)

    from peftbench.models.sources import load_model

    model = load_model(args.model)[0]
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters loaded; gc.collect(): "
          + ", ".join(f"{t:.3f} s" for t in times))
    return times


if __name__ == "__main__":
    main()
