"""Records that flow between the hooks and into the result files (JSON through ``to_jsonable``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftbench.api.method import Method

SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "skipped", "oom", "cancelled")


@dataclass
class TuningInfo:
    """A cell's place in the fair-comparison protocol (``--tune``). A ``grid`` cell trains one point of the grid
    and is scored on the task's validation split; a ``final`` cell trains a requested seed with the values
    the grid chose and is scored on test. Only cells scored on test enter leaderboards and claims."""

    role: str                          # "grid" | "final"
    split: str                         # the split its ``eval`` scored: "validation" | "test"
    values: dict[str, Any]             # the tuned keys' values this cell trained with
    grid: dict[str, list[Any]]         # every tuned key's grid
    chosen_by: str | None = None  # final cells: how the values were chosen ("acc on validation, seed 0")
    on_edge: list[str] | None = None  # final cells: keys whose choice is the grid's end ("extend the grid")


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a method (or ``base``) on a task with a seed; in a tuned session (``--tune``) also
    its place in the tuning protocol (``tuning``: a grid point, or a final cell with the chosen values)."""

    method: str
    task: str
    seed: int
    tuning: TuningInfo | None = field(default=None, hash=False)

    @property
    def key(self) -> str:
        key = f"{self.method}--{self.task}--seed{self.seed}"
        if self.tuning is not None and self.tuning.role == "grid":  # one file per grid point
            key += "".join(f"--{k}={v}" for k, v in self.tuning.values.items())
        return key


@dataclass
class RunContext:
    """What the per-run hooks receive as ``run``."""

    spec: RunSpec
    method: Method | None
    method_config: Any
    task: Any  # peftbench.tasks.task.Task: the task trained on (or scored, for retention)
    train_config: Any  # TrainConfig: the training loop's options
    device: str
    eval_config: Any = None     # EvalConfig: how the run is scored
    latency_config: Any = None  # LatencyConfig: how its inference is timed
    include_path: Any = None  # the folder of materialized lm-eval task YAMLs
    hook: Any = None
    progress: Any = None
    world: Any = None  # peftbench.train.distributed.World: the processes training this run together (None: one)
    extras: dict[str, Any] = field(default_factory=dict)
    # `peftbench latency` continuing an interrupted method: the shapes already timed (a partial ``latency``
    # section), and a callback that saves the section after each shape (see ``peftbench.latency.timer.measure``)
    latency_done: dict[str, Any] | None = None
    latency_checkpoint: Any = None

    def record(self, key: str, value: Any) -> None:
        """Store a JSON-able value under ``extras[key]`` in this run's result file."""
        self.extras[key] = value


@dataclass
class TrainResult:
    steps: int
    tokens: int
    examples: int
    epochs: float
    wall_time_s: float
    tokens_per_s: float
    peak_memory_bytes: int
    peak_memory_kind: str
    lr: float
    losses: list[tuple[int, float]]
    final_loss: float
    diverged: bool = False
    first_step_s: float | None = None  # the first optimizer step (compilation, warm-up) alone
    loop: dict[str, Any] | None = None  # the loop's optimisations as they ran (see training.plan_loop)
    distributed: dict[str, Any] | None = None  # several processes (FSDP2): world size, backend, the sharding


@dataclass
class EvalResult:
    task: str
    metrics: dict[str, float]        # e.g. {"acc": 0.81, "acc_norm": 0.80}
    stderr: dict[str, float]         # e.g. {"acc": 0.014}
    n_samples: int
    wall_time_s: float
    lm_eval: dict[str, Any]          # lm-eval's own result block, unchanged
    samples: dict[str, list[Any]] | None = None  # per-example metric values by doc_id (paired bootstraps)
    generation: dict[str, Any] | None = None    # generative tasks: what generating the answers cost (tokens, s)
    scorer: dict[str, Any] | None = None        # how loglikelihoods were computed (evaluate.shared_context)
