"""How far two loss curves of train_throughput.py result files stray from each other, per method.

The fast loop's loss curve is judged against the naive loop's; this puts a number on what "the same curve"
can mean in a given precision: compare two runs that are equally valid but round differently (the naive
loop in bf16 against the naive loop in fp32, say) and the result is the noise floor the fast loop's
deviation should be read against.

    python benchmarks/loss_floor.py results/throughput-cpu/sst2-floor-fp32.json:naive \
        results/throughput-cpu/sst2-floor-bf16.json:naive results/throughput-cpu/sst2-floor-bf16.json:compile

The first FILE:VARIANT is the reference; each other one is compared with it, method by method (methods
present in both), over the first 50 steps: the largest relative difference at one step and of the mean
loss of a 10-step window (the measures train_throughput.py reports as "loss dev").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import loss_deviation  # noqa: E402


def curves(spec: str) -> tuple[str, dict[str, list[float]]]:
    path, _, variant = spec.rpartition(":")
    if not path or not variant:
        raise SystemExit(f"{spec!r}: expected FILE.json:VARIANT")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read a train_throughput.py result file ({e})") from None
    out = {r["method"]: r["variants"][variant]["losses"] for r in data.get("results", [])
           if (r.get("variants") or {}).get(variant, {}).get("status") == "ok"}
    if not out:
        raise SystemExit(f"{path}: no method has a finished variant {variant!r}")
    return spec, out


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="FILE.json:VARIANT")
    ap.add_argument("others", nargs="+", help="FILE.json:VARIANT")
    args = ap.parse_args(argv)
    ref_name, ref = curves(args.reference)
    rows = []
    print(f"reference: {ref_name}")
    for spec in args.others:
        name, other = curves(spec)
        for method in [m for m in ref if m in other]:
            step, window = loss_deviation(ref[method], other[method])
            rows.append({"method": method, "other": name, "max_step_dev": step, "max_window_dev": window})
            print(f"  {method:8s} {name}: max step {step * 100:.2f}%, max 10-step window {window * 100:.2f}%")
    return rows


if __name__ == "__main__":
    main()
