"""Do two `peftbench latency` runs of the same grid agree? For every method x regime x shape x mode present in
both, compare the overhead ratios: the time ratios (1 + overhead) of the two runs must agree within a relative
tolerance (default 5 %). Prints one line per comparison that fails, then a summary; exit 1 if any fails.

    python benchmarks/latency_agreement.py results/latency-gpu/latency-grid-A results/latency-gpu/latency-grid-B-static
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((folder / "latency").glob("*.json"))}


def ratio(cell: dict, mode: str, statistic: str) -> float:
    """The mode's overhead vs base in a shape: as recorded (``median``: the harness's median decode time per
    token), or recomputed from the rounds' samples with the fastest round of each (``min``, timeit's advice for
    timings disturbed by other work)."""
    if statistic == "median":
        return cell["overhead"][mode]["ratio"]
    return min(cell["modes"][mode]["samples"]["decode"]) / min(cell["modes"]["base"]["samples"]["decode"]) - 1


def compare(a: dict[str, dict], b: dict[str, dict], tol: float, statistic: str = "median"
            ) -> tuple[list[tuple], list[tuple]]:
    rows, bad = [], []
    for method in sorted(set(a) & set(b)):
        la, lb = a[method].get("latency") or {}, b[method].get("latency") or {}
        for regime in sorted(set(la.get("regimes") or {}) & set(lb.get("regimes") or {})):
            cells_b = {(c["batch_size"], c["prompt_tokens"]): c for c in lb["regimes"][regime]}
            for ca in la["regimes"][regime]:
                cb = cells_b.get((ca["batch_size"], ca["prompt_tokens"]))
                if cb is None:
                    continue
                for mode in sorted(set(ca["overhead"]) & set(cb["overhead"])):
                    ra, rb = ratio(ca, mode, statistic), ratio(cb, mode, statistic)
                    dev = (1 + ra) / (1 + rb) - 1
                    row = (method, regime, ca["batch_size"], ca["prompt_tokens"], mode, ra, rb, dev)
                    rows.append(row)
                    if abs(dev) > tol:
                        bad.append(row)
    return rows, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--methods", help="comma-separated subset of methods")
    ap.add_argument("--statistic", choices=("median", "min"), default="median",
                    help="median: the overhead ratios as recorded; min: recomputed from each mode's fastest round")
    ap.add_argument("--modes", help="comma-separated subset of modes (e.g. unmerged,merged: leaves out the stacked "
                    "modes, whose LoRA/QLoRA form changed between runs made before and after 3195e47)")
    args = ap.parse_args()
    a, b = load(args.run_a), load(args.run_b)
    if args.methods:
        keep = set(args.methods.split(","))
        a = {k: v for k, v in a.items() if k in keep}
    rows, bad = compare(a, b, args.tolerance, args.statistic)
    if args.modes:
        modes = set(args.modes.split(","))
        rows, bad = [r for r in rows if r[4] in modes], [r for r in bad if r[4] in modes]
    for m, reg, bs, pl, mode, ra, rb, dev in bad:
        print(f"DIFFERS  {m:8s} {reg:6s} bs{bs:<3d} prompt {pl:<5d} {mode:9s} A {ra * 100:+7.1f}%  B {rb * 100:+7.1f}%  "
              f"time ratio differs by {dev * 100:+.1f}%")
    worst = max(rows, key=lambda r: abs(r[-1])) if rows else None
    print(f"{len(rows)} overhead ratios compared, {len(bad)} differ by more than {args.tolerance * 100:.0f}%"
          + (f"; largest: {worst[0]} {worst[1]} bs{worst[2]} prompt {worst[3]} {worst[4]} "
             f"{worst[-1] * 100:+.2f}%" if worst else ""))
    sys.exit(1 if bad or not rows else 0)


if __name__ == "__main__":
    main()
