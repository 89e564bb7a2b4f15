"""Tuning each method on a task's validation split before its seeds run (``peftbench run --tune KEY``).

For every method and task the grid's points are cells of their own (``role: grid``): trained on the task's
train split with the first requested seed and scored on its validation split. The point with the best
validation score is chosen (ties: the earlier point of the grid), and the requested seeds are then trained
with it and scored on test (``role: final``). A choice at either end of a key's grid is flagged: the best
value may lie beyond it. The choice is a function of the grid cells' run files, so a resumed or sharded
session makes it again from the same files and gets the same values.

A key is a shared training option (``lr``, ``weight_decay``, ...; tuned for every method) or a method's own
option (``lora.r``; tuned for that method only). Grids: ``--grid KEY=V1,V2,...``, else the method's
``default_grid``, else for ``lr`` two decades around the cell's learning rate (``lr_grid``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftbench.api.method import lr_grid
from peftbench.api.records import RunSpec, TuningInfo
from peftbench.errors import ConfigError, UsageError, did_you_mean
from peftbench.session.options import TRAIN_KEYS, CellOptions
from peftbench.session.scores import headline

# what a grid cell does not need: it only has to rank the grid points on validation
GRID_CELL_OPTIONS = {"latency_rounds": 0, "merge_eval": False, "merge_precisions": False}
NO_CHOICE = "tuning"  # how the reason of a final cell that could not be given values starts


@dataclass(frozen=True)
class TuningPlan:
    """What ``--tune`` asks for, resolved: the keys, each (method, task)'s grid, the seed the grid trains."""

    keys: tuple[str, ...]
    grids: Mapping[tuple[str, str], Mapping[str, tuple[Any, ...]]]  # (method, task) -> key -> values
    seed: int

    def grid_of(self, method: str, task: str) -> Mapping[str, tuple[Any, ...]] | None:
        return self.grids.get((method, task))

    def describe(self) -> dict[str, Any]:
        """As ``session.json`` records it."""
        return {"keys": list(self.keys), "seed": self.seed, "split": "validation",
                "grids": {f"{m}--{t}": {k: list(v) for k, v in g.items()} for (m, t), g in self.grids.items()}}


@dataclass(frozen=True)
class Choice:
    """The grid point chosen for a method on a task, or why none could be."""

    values: dict[str, Any] | None
    chosen_by: str = ""
    on_edge: tuple[str, ...] = ()
    why_not: str = ""
    waiting: bool = False  # the grid is not finished yet (cells still to run, or left for --resume)


# ---- planning ------------------------------------------------------------------------------------------
def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``--grid KEY=V1,V2,...`` (repeatable) as key -> value strings (typed when the configs are built)."""
    grids: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        listed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not listed:
            raise UsageError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. --grid lr=1e-4,3e-4,1e-3).")
        if key in grids:
            raise UsageError(f"--grid names {key!r} twice; give all its values in one --grid {key}=V1,V2,...")
        if len(set(listed)) != len(listed):
            raise UsageError(f"--grid {item!r}: a value is listed twice.")
        grids[key] = listed
    return grids


def make_tuning(tune: list[str], grid_items: list[str], seeds: list[int], methods: list[str], tasks: list[Any],
                registry: Any, method_configs: Mapping[str, Any], options: Mapping[tuple[str, str], CellOptions],
                sets: Mapping[str, Any]) -> TuningPlan | None:
    """The tuning plan of ``--tune`` and ``--grid`` (None without ``--tune``); every grid value is checked by
    building the configs it gives, so a bad value stops the session before anything trains."""
    explicit = parse_grid(grid_items)
    if not tune:
        if explicit:
            raise UsageError("--grid gives values to try, but --tune names no key to tune (e.g. --tune lr).")
        return None
    keys = _check_keys(tune, methods, registry, sets)
    explicit = {_canonical_key(k, registry, "--grid"): v for k, v in explicit.items()}
    unused = [k for k in explicit if k not in keys]
    if unused:
        raise UsageError(f"--grid {unused[0]}=...: --tune does not name {unused[0]!r} (it tunes "
                         f"{', '.join(keys)}).")
    grids: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {}
    for task in tasks:
        for method in methods:
            grid = {}
            for key in keys:
                values = _values(key, method, task.name, explicit, registry, options)
                if values is not None:
                    grid[key] = tuple(_typed(key, v, method, task.name, method_configs, options) for v in values)
            if grid:
                grids[(method, task.name)] = grid
    if not grids:
        raise UsageError(f"--tune {','.join(keys)}: none of the methods run ({', '.join(methods)}) has these options.")
    return TuningPlan(keys=tuple(keys), grids=grids, seed=seeds[0])


def _canonical_key(key: str, registry: Any, flag: str) -> str:
    """``METHOD.KEY`` under the method's registered name (``peft:vera.r`` -> ``peft-vera.r``)."""
    if "." not in key:
        return key
    method, sub = key.split(".", 1)
    return f"{registry.canonical(method, flag)}.{sub}"


def _check_keys(tune: list[str], methods: list[str], registry: Any, sets: Mapping[str, Any]) -> list[str]:
    keys = []
    for key in tune:
        if "." in key:
            method, sub = key.split(".", 1)
            name = registry.canonical(method, "--tune")
            fields = [f.name for f in dataclasses.fields(registry.get(name).Config)]
            if sub not in fields:
                raise UsageError(f"--tune {key}: method {name!r} has no option {sub!r}.{did_you_mean(sub, fields)} "
                                 f"Its options: {', '.join(fields)}.")
            if name not in methods:
                raise UsageError(f"--tune {key}: --methods does not run {name!r}.")
            key = f"{name}.{sub}"
        elif key not in TRAIN_KEYS:
            raise UsageError(f"--tune {key!r}: not a training option.{did_you_mean(key, list(TRAIN_KEYS))} Tune a "
                             "training option (lr, weight_decay, ...) or a method's option as METHOD.KEY (lora.r).")
        if key in sets:
            raise UsageError(f"--tune {key} and --set {key}=... both give {key}: tune it or fix it, not both.")
        if key in keys:
            raise UsageError(f"--tune names {key!r} twice.")
        keys.append(key)
    return keys


def _values(key: str, method: str, task: str, explicit: Mapping[str, list[str]], registry: Any,
            options: Mapping[tuple[str, str], CellOptions]) -> tuple[Any, ...] | None:
    """The values ``key`` takes for ``method`` on ``task`` (None: the key is not this method's)."""
    own = key.split(".", 1)[0] if "." in key else None
    if own is not None and own != method:
        return None
    if key in explicit:
        return tuple(explicit[key])
    sub = key.split(".", 1)[1] if own else key
    default = registry.get(method).default_grid.get(sub)
    if default is not None:
        return tuple(default)
    if key == "lr":
        return lr_grid(options[(method, task)].train.lr)
    raise UsageError(f"--tune {key}: {method!r} has no default grid for {sub!r}; give one with --grid {key}=V1,V2,...")


def _typed(key: str, value: Any, method: str, task: str, method_configs: Mapping[str, Any],
           options: Mapping[tuple[str, str], CellOptions]) -> Any:
    """``value`` as the config it goes into types it (an invalid value is a ConfigError naming the key)."""
    where = f"--grid {key}={value} for {method} on {task}"
    if "." in key:
        sub = key.split(".", 1)[1]
        built = _method_config_with(method_configs[method], {sub: value}, where)
        return getattr(built, sub)
    built = CellOptions.build({**options[(method, task)].flat(), key: value}, where=where)
    return getattr(built.train, key)


def _method_config_with(config: Any, values: Mapping[str, Any], where: str) -> Any:
    from peftbench.api.options import build_dataclass

    try:
        return build_dataclass(type(config), {**dataclasses.asdict(config), **values}, where)
    except (TypeError, ValueError) as e:  # a config whose fields do not round-trip through asdict
        raise ConfigError(f"{where}: {e}") from None


def grid_cells(tuning: TuningPlan, method: str, task: str) -> list[RunSpec]:
    """One cell per grid point (the cartesian product of the keys' values, in the order given)."""
    grid = tuning.grid_of(method, task)
    if grid is None:
        return []
    listed = {k: list(v) for k, v in grid.items()}
    return [RunSpec(method, task, tuning.seed, TuningInfo(role="grid", split="validation",
                                                           values=dict(zip(grid, point, strict=True)), grid=listed))
            for point in itertools.product(*grid.values())]


def final_cell(tuning: TuningPlan | None, method: str, task: str, seed: int) -> RunSpec:
    """A requested seed's cell; in a tuned (method, task), a final cell whose values the grid will choose."""
    grid = tuning.grid_of(method, task) if tuning is not None else None
    if grid is None:
        return RunSpec(method, task, seed)
    return RunSpec(method, task, seed, TuningInfo(role="final", split="test", values={},
                                                  grid={k: list(v) for k, v in grid.items()}))


def cell_options(base: CellOptions, spec: RunSpec) -> CellOptions:
    """A cell's shared options: its (method, task)'s, with its tuned values; a grid cell also leaves out the
    measurements that do not rank grid points (latency, scoring the merged model, the merge-precision study)."""
    tuning = spec.tuning
    if tuning is None or (tuning.role == "final" and not tuning.values):
        return base
    shared = {k: v for k, v in tuning.values.items() if "." not in k}
    extra = GRID_CELL_OPTIONS if tuning.role == "grid" else {}
    return CellOptions.build({**base.flat(), **shared, **extra}, where=f"training options of {spec.key}")


def method_config(base: Any, spec: RunSpec) -> Any:
    """A cell's method config: the method's, with the cell's tuned method options."""
    tuning = spec.tuning
    own = {k.split(".", 1)[1]: v for k, v in (tuning.values.items() if tuning else ()) if "." in k}
    return _method_config_with(base, own, f"options of {spec.key}") if own else base


# ---- choosing ------------------------------------------------------------------------------------------
def choose(tuning: TuningPlan, method: str, task: str, metric: str, runs: Mapping[str, dict[str, Any]]) -> Choice:
    """The grid point of ``method`` on ``task`` with the best validation ``metric``, from the grid cells' run
    files in ``runs`` (by key). Waiting while a grid cell has no result yet; no choice when none is ok."""
    cells = grid_cells(tuning, method, task)
    found = [runs.get(c.key) for c in cells]
    if any(r is None or r.get("status") == "cancelled" for r in found):
        missing = sum(1 for r in found if r is None or r.get("status") == "cancelled")
        return Choice(None, why_not=f"{missing} of its {len(cells)} grid cells have no result yet", waiting=True)
    scored = [(c, _score(r, metric)) for c, r in zip(cells, found, strict=True)]
    ranked = [(c, s) for c, s in scored if s is not None]
    if not ranked:
        reasons = sorted({str(r.get("reason") or (r.get("error") or {}).get("message") or r.get("status"))[:120]
                          for r in found if r is not None})
        return Choice(None, why_not=f"{NO_CHOICE}: no grid point of {method} on {task} was scored on validation "
                                    f"({'; '.join(reasons)})")
    best, score = max(ranked, key=lambda cs: cs[1])  # max keeps the first of equal scores: the earlier point
    values = dict(best.tuning.values)
    grid = tuning.grid_of(method, task) or {}
    edge = tuple(k for k, v in values.items() if _at_end(v, grid[k]))
    left_out = len(scored) - len(ranked)
    how = f"best {metric} on validation ({score:.4f}), seed {tuning.seed}, over {len(ranked)} grid points"
    return Choice(values, chosen_by=how + (f" ({left_out} failed)" if left_out else ""), on_edge=edge)


def awaits_choice(spec: RunSpec) -> bool:
    """Whether ``spec`` is a final cell whose values its grid has not given yet."""
    return spec.tuning is not None and spec.tuning.role == "final" and not spec.tuning.values


def choose_for(plan: Any, spec: RunSpec, runs: Mapping[str, dict[str, Any]]) -> Choice:
    """``choose`` for a final cell of ``plan`` (a ``session.plan.Plan``), by its task's metric."""
    return choose(plan.tuning, spec.method, spec.task, plan.task(spec.task).metric, runs)


def resolved(spec: RunSpec, choice: Choice) -> RunSpec:
    """A final cell with the values the grid chose."""
    assert spec.tuning is not None and choice.values is not None
    info = dataclasses.replace(spec.tuning, values=dict(choice.values), chosen_by=choice.chosen_by,
                               on_edge=list(choice.on_edge) or None)
    return dataclasses.replace(spec, tuning=info)


def _score(run: dict[str, Any], metric: str) -> float | None:
    """A grid cell's validation score (``metric``, else its evaluation's first), None unless it is ok."""
    return headline(run.get("eval") or {}, metric)[1] if run.get("status") == "ok" else None


def _at_end(value: Any, grid: tuple[Any, ...]) -> bool:
    """Whether ``value`` is the smallest or largest of a numeric grid (the best may lie beyond it); a grid of
    words (a choice among kinds) has no ends."""
    if len(grid) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid):
        return False
    return value in (min(grid), max(grid))
