"""How often the statistics engine's 95 % CI covers the true value, on synthetic experiments whose truth is
known (docs/statistics.md cites the figures).

    python benchmarks/stats_coverage.py            # the grid -> results/stats-coverage/coverage.json + README.md
    python benchmarks/stats_coverage.py --quick    # fewer cells, printed only

The synthetic model (a probit item-response model, so the true mean is closed-form): test examples have a
difficulty z ~ N(0, 1) shared by every method (so methods are paired on examples) and, per method, a
difficulty of their own u ~ N(0, item_sd^2) (methods are right on different examples); a method of ability
theta, trained with seed s, answers an example right when z + u + e < theta + a_s, with a seed effect
a_s ~ N(0, seed_sd^2) and a per-answer noise e ~ N(0, noise^2). Its expected score over seeds and examples is
Phi(theta / sqrt(1 + item_sd^2 + noise^2 + seed_sd^2)); the zero-shot base (theta 0, one evaluation, no seed
effect) 0.5. With one seed the target is that seed's model: Phi((theta + a_1) / sqrt(1 + item_sd^2 + noise^2)).
noise 0.3 and item_sd 0.3 give what the reference runs show: most examples answered alike by every seed (a
tenth of the per-example variance is seed-to-seed flips) and differences between methods carried as much by
examples as by flips. item_sd 0 is a stress case: methods differ only in ability, so a difference is mostly
flips.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peftbench.report.bootstrap import hierarchical_bootstrap, ratio  # noqa: E402

THETA = {"full": 0.5, "lora": 0.45, "base": 0.0}
KINDS = {  # a statistic of the methods' mean scores, and the methods it takes
    "score": (lambda lora: lora, ("lora",)),
    "difference": (lambda lora, full: lora - full, ("lora", "full")),
    "gain_share": (lambda lora, full, base: ratio(lora - base, full - base), ("lora", "full", "base")),
}


def _phi(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(np.asarray(x) / math.sqrt(2)))


def experiment(rng: np.random.Generator, seeds: int, examples: int, seed_sd: float, noise: float = 0.3,
               item_sd: float = 0.3) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One synthetic experiment: per method an array (seeds, examples) of 0/1 answers, and the true means."""
    z = rng.standard_normal(examples)
    data, truth = {}, {}
    for method, theta in THETA.items():
        n_seeds = 1 if method == "base" else seeds
        a = np.zeros(1) if method == "base" else rng.normal(0.0, seed_sd, n_seeds)
        u = rng.normal(0.0, item_sd, examples)
        e = rng.normal(0.0, noise, (n_seeds, examples))
        data[method] = ((z + u)[None, :] + e < theta + a[:, None]).astype(float)
        spread = 1 + item_sd ** 2 + noise ** 2
        if method == "base":
            truth[method] = float(_phi(theta / math.sqrt(spread)))
        elif seeds == 1:   # one seed: the interval is about that seed's model
            truth[method] = float(_phi((theta + a[0]) / math.sqrt(spread)))
        else:
            truth[method] = float(_phi(theta / math.sqrt(spread + seed_sd ** 2)))
    return data, truth


def coverage(kind: str, seeds: int, examples: int, seed_sd: float, item_sd: float = 0.3, experiments: int = 1000,
             draws: int = 1000, rng_seed: int = 1) -> dict[str, float]:
    """Share of ``experiments`` whose 95 % CI of ``kind`` holds its true value (an experiment the engine gives
    no interval -- a ratio undefined in many draws -- counts as a miss); mean CI width; how many got none."""
    fn, needs = KINDS[kind]
    rng = np.random.default_rng(rng_seed)
    hits, widths, none = 0, [], 0
    for _ in range(experiments):
        data, truth = experiment(rng, seeds, examples, seed_sd, item_sd=item_sd)
        out = hierarchical_bootstrap([data[m] for m in needs], fn, draws=draws)
        if out.ci95 is None:
            none += 1
            continue
        lo, hi = out.ci95
        hits += lo <= float(fn(*(truth[m] for m in needs))) <= hi
        widths.append(hi - lo)
    return {"coverage": hits / experiments, "mean_width": float(np.mean(widths)), "no_interval": none}


GRID = {"kind": tuple(KINDS), "seeds": (1, 2, 3, 5), "examples": (100, 500, 2000), "seed_sd": (0.0, 0.02, 0.1),
        "item_sd": (0.3,)}
STRESS = {"kind": ("difference",), "seeds": (3, 5), "examples": (100, 500, 2000), "seed_sd": (0.0, 0.1),
          "item_sd": (0.0,)}
QUICK = {"kind": tuple(KINDS), "seeds": (1, 3), "examples": (500,), "seed_sd": (0.02,), "item_sd": (0.3,)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few cells, printed, nothing written")
    p.add_argument("--experiments", type=int, default=1000)
    p.add_argument("--draws", type=int, default=500, help="bootstrap draws per experiment (the engine's default "
                   "is 2000; fewer keeps the grid quick: it adds Monte Carlo noise to each CI, so if anything "
                   "widens it slightly)")
    p.add_argument("--out", type=Path, default=ROOT / "results/stats-coverage")
    args = p.parse_args(argv)
    cells = []
    for grid in (QUICK,) if args.quick else (GRID, STRESS):
        for kind, seeds, examples, seed_sd, item_sd in _cells(grid):
            out = coverage(kind, seeds, examples, seed_sd, item_sd, experiments=args.experiments, draws=args.draws)
            cells.append({"kind": kind, "seeds": seeds, "examples": examples, "seed_sd": seed_sd, "item_sd": item_sd,
                          **out})
            print(f"{kind:11s} seeds {seeds:2d} examples {examples:5d} seed_sd {seed_sd:.2f} item_sd {item_sd:.1f}: "
                  f"coverage {out['coverage'] * 100:5.1f}%  width {out['mean_width'] * 100:.2f} pts", flush=True)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"model": "probit: z ~ N(0,1) per example, u ~ N(0, item_sd^2) per example and method, "
                         "a ~ N(0, seed_sd^2) per seed, e ~ N(0, 0.3^2) per answer",
                "theta": THETA, "experiments": args.experiments, "draws": args.draws, "rng_seed": 1,
                "command": "python benchmarks/stats_coverage.py"}
        (args.out / "coverage.json").write_text(json.dumps({**meta, "cells": cells}, indent=1) + "\n")
        (args.out / "README.md").write_text(_readme(meta, cells))
    return 0


def _cells(grid: dict) -> list[tuple]:
    """The grid's cells; one seed has no seed effect to vary."""
    return [(k, s, n, sd, item) for k in grid["kind"] for s in grid["seeds"] for n in grid["examples"]
            for sd in (grid["seed_sd"] if s > 1 else grid["seed_sd"][:1]) for item in grid["item_sd"]]


def _readme(meta: dict, cells: list[dict]) -> str:
    lines = ["# Coverage of the statistics engine's 95 % CI", "",
             f"`{meta['command']}` ({meta['experiments']} synthetic experiments per cell, {meta['draws']} bootstrap "
             "draws each; model in the script's docstring). Coverage: share of experiments whose CI holds the "
             "true value (95 % is right; 1,000 experiments put +-1.4 points of chance on each figure). "
             "seed_sd on the latent scale: 0.02 is about 0.7 points of score, 0.1 about 3.5.", "",
             "| statistic | seeds | examples | seed_sd | item_sd | coverage | mean CI width (pts) | no interval |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['kind']} | {c['seeds']} | {c['examples']} | {c['seed_sd']:.2f} | {c['item_sd']:.1f} | "
              f"{c['coverage'] * 100:.1f}% | {c['mean_width'] * 100:.2f} | {c['no_interval']} |" for c in cells]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
