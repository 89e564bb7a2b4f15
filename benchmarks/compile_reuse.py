"""What compiling the blocks costs a session's cells, and what reuse saves (``compile=on``, ``bucketing=on``).

Each session is a fresh Python process that trains ``--cells`` cells one after another, each on a freshly
loaded model of the same architecture (as a peftbench session's cells do), and reports per cell the first
step's seconds (compilation included), the run's ``train.loop.compile_stats`` (graphs compiled, inductor FX
graph cache and AOTAutograd cache hits and misses, whether compiled code was kept from the previous cell)
and its bucket shapes. The first session starts from an empty compile cache (a fresh ``PEFTBENCH_CACHE``
folder); the later ones find what it wrote there. ``--reset`` drops the compiled code between cells
(``torch._dynamo.reset()``, as the loop did before it kept it), to show what the on-disk caches alone save.

    python benchmarks/compile_reuse.py --out results/compile-reuse-cpu/tiny-llama.json [--sessions 2]
        [--cells 2] [--steps 8] [--method full|lora] [--device cpu|cuda] [--reset]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def one_session(args: argparse.Namespace) -> list[dict[str, Any]]:
    """This process's cells, in order (run inside a session's own process)."""
    import torch

    from peftbench.models.sources import load_model
    from peftbench.train.batching import TrainData
    from peftbench.train.config import TrainConfig
    from peftbench.train.loop import train

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 64, (256,), generator=g).tolist()
    data = TrainData([torch.randint(3, 250, (n,), generator=g).tolist() for n in lengths], [n // 2 for n in lengths],
                     pad_id=0)
    cfg = TrainConfig(steps=args.steps, batch_size=8, lr=1e-3, compile="on", bucketing="on", dtype="fp32")
    cells = []
    for cell in range(args.cells):
        torch.manual_seed(0)
        model = load_model(args.model, device=args.device)[0]
        params = [p for p in model.parameters()]
        if args.method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
            params = [p for p in model.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        res = train(model, params, data, cfg, seed=0, device=args.device)
        cells.append({"cell": cell + 1, "train_s": round(time.perf_counter() - t0, 3), "first_step_s": res.first_step_s,
                      "steps": res.steps, "final_loss": res.final_loss, "compile": res.loop["compile"],
                      "compile_stats": res.loop.get("compile_stats"), "bucketing": res.loop["bucketing"]})
        print(f"cell {cell + 1}: first step {res.first_step_s} s, {json.dumps(res.loop.get('compile_stats'))}",
              file=sys.stderr, flush=True)
        del model, params, res
        if args.reset:
            from peftbench.train.compiling import forget_compiled

            forget_compiled()  # torch._dynamo.reset(), and the loop knows nothing is kept
    return cells


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON here (else stdout)")
    ap.add_argument("--model", default="tiny:llama")
    ap.add_argument("--method", choices=("full", "lora"), default="full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--cells", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reset", action="store_true", help="drop compiled code between cells (the on-disk caches stay)")
    ap.add_argument("--cache", help=argparse.SUPPRESS)  # (a session process: its PEFTBENCH_CACHE)
    args = ap.parse_args(argv)
    if args.cache:  # one session, in its own process: its cells as JSON on stdout
        print(json.dumps(one_session(args)))
        return {}
    import torch

    cache = tempfile.mkdtemp(prefix="peftbench-compile-reuse-")  # empty: the first session compiles from scratch
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["PEFTBENCH_CACHE"] = cache
    flags = [f"--{k}={getattr(args, k)}" for k in ("model", "method", "device", "cells", "steps")]
    sessions = []
    for s in range(args.sessions):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--cache", cache, *flags, *(["--reset"] if args.reset else [])],
                             env=env, check=True, capture_output=True, text=True)
        sessions.append({"session": s + 1, "process_s": round(time.perf_counter() - t0, 3),
                         "load_average_before": round(load, 2), "cells": json.loads(out.stdout.splitlines()[-1])})
        print(f"session {s + 1}: {sessions[-1]['process_s']} s", file=sys.stderr, flush=True)
    result = {"benchmark": "compile_reuse", "label": "shared machine, other agents running",
              "command": "python benchmarks/compile_reuse.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
              "settings": {"model": args.model, "method": args.method, "device": args.device, "steps": args.steps,
                           "batch_size": 8, "compile": "on", "bucketing": "on", "reset_between_cells": args.reset},
              "sessions": sessions}
    shutil.rmtree(cache, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
