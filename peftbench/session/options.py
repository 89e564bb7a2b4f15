"""A cell's shared options, by concern: how it trains, how it is scored, how its inference is timed.

They are set together as ``--set KEY=VALUE`` (and in a task's ``train:`` section): each key belongs to
exactly one of the three. Run files keep recording them as one flat mapping (``config.train``), so files
written before the split read the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peftbench.api.options import build_dataclass, describe_fields, to_jsonable
from peftbench.evaluate.config import EvalConfig
from peftbench.latency.config import QUIET_OPTIONS, SET_PREFIX, LatencyConfig
from peftbench.train.config import TrainConfig

TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
EVAL_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig))
LATENCY_KEYS = tuple(SET_PREFIX + f.name for f in dataclasses.fields(LatencyConfig))
OPTION_KEYS = (*TRAIN_KEYS, *EVAL_KEYS, *LATENCY_KEYS)
LATENCY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LatencyConfig)}
GRID_KEYS = tuple(SET_PREFIX + k for k in ("rounds", "batch_sizes", "prompt_lengths", "new_tokens", "regimes",
                                           "stack", "dtype"))  # what a latency grid depends on (not ``once``)
STOP_KEYS = tuple(SET_PREFIX + k for k in QUIET_OPTIONS)  # and when its shapes stop: keyed only when set otherwise


@dataclass
class CellOptions:
    """The three option groups of one cell."""

    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    @classmethod
    def build(cls, values: dict[str, Any], where: str) -> CellOptions:
        """From flat ``KEY=VALUE`` pairs (strings or JSON values); an unknown key is a ConfigError."""
        unknown = {k: v for k, v in values.items() if k not in OPTION_KEYS}
        train = build_dataclass(TrainConfig, {**_pick(values, TRAIN_KEYS), **unknown}, where)
        evaluate = build_dataclass(EvalConfig, _pick(values, EVAL_KEYS), where)
        latency = build_dataclass(LatencyConfig, {k[len(SET_PREFIX):]: v for k, v in _pick(values, LATENCY_KEYS).items()},
                                  where)
        return cls(train, evaluate, latency)

    def resolve(self, device: str, earlier: dict[str, Any] | None = None) -> None:
        """Settle the options whose default is 'auto' for ``device`` (``earlier``: the flat options a continued
        session's folder recorded for these cells, which an 'auto' keeps)."""
        self.eval.resolve(device, earlier)

    def flat(self) -> dict[str, Any]:
        """The options as one JSON mapping under their ``--set`` keys (the run files' ``config.train``)."""
        return {**to_jsonable(self.train), **to_jsonable(self.eval), **latency_flat(self.latency)}


def latency_flat(latency: LatencyConfig) -> dict[str, Any]:
    """The latency options under their ``--set`` keys, the quiet ones only when not at their default."""
    return {SET_PREFIX + k: v for k, v in to_jsonable(latency).items()
            if k not in QUIET_OPTIONS or v != LATENCY_DEFAULTS[k]}


def _pick(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in keys}


def describe_options() -> list[dict[str, Any]]:
    """Every shared option under its ``--set`` key, grouped training, evaluation, latency."""
    rows = [{**r, "group": "training"} for r in describe_fields(TrainConfig)]
    rows += [{**r, "group": "evaluation"} for r in describe_fields(EvalConfig)]
    rows += [{**r, "name": SET_PREFIX + r["name"], "group": "latency"} for r in describe_fields(LatencyConfig)]
    return rows


def options_markdown() -> str:
    """docs/training-options.md: every shared option, generated from the three option dataclasses."""
    lines = ["# Training options", "",
             "Shared by every method (the same loop, data, budget and measurements for all); set with `peftbench "
             "run --set KEY=VALUE`, listed by `peftbench options`. A method's own options are `--set "
             "METHOD.KEY=VALUE` (`peftbench methods`). Generated from `TrainConfig`, `EvalConfig` and "
             "`LatencyConfig` by `peftbench options --markdown`; a test keeps it current."]
    for group, title in (("training", "Training"), ("evaluation", "Evaluation"), ("latency", "Latency")):
        lines += ["", f"## {title}", "", "| option | type | default | what it does |", "|---|---|---|---|"]
        for r in describe_options():
            if r["group"] != group:
                continue
            default = (",".join(map(str, r["default"])) or "none") if isinstance(r["default"], list) else r["default"]
            lines.append(f"| `{r['name']}` | {r['type'].replace(' | ', ' or ')} | `{default}` | {r['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"
