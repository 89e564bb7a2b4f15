"""The typed record of one cell. Each phase of a cell returns its own section; the cell assembles them into
a ``RunRecord``, and only the store (``peftbench.results.store``) turns a record into a run file's JSON.

A field marked ``optional`` is left out of the JSON while it is None (the run files have always omitted
what a cell did not measure, e.g. the merge checks of a method that cannot merge); every other field is
written, None or not, in the order declared here (the run files' key order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftbench.api.records import SCHEMA_VERSION, EvalResult, TrainResult, TuningInfo


def optional(**kw: Any) -> Any:
    """A field left out of the JSON while it is None."""
    return field(default=None, metadata={"optional": True}, **kw)


@dataclass
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""


@dataclass
class ParamCount:
    trainable: int
    total: int
    trainable_pct: float | None


@dataclass
class LogitCheck:
    """Two models' logits on the same probe prompts: the largest and mean |difference|, the largest relative
    to the largest |logit|, and how often their greedy tokens agree."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    max_rel_logit_diff: float
    greedy_agreement: float


@dataclass
class ScorePair:
    """An lm-eval score beside a reference score of the same task (e.g. merged vs unmerged), with the
    per-example values (``samples``) that let a score change be tested paired over the same examples."""

    metric: str
    score: float | None
    stderr: float | None
    reference: float | None
    delta: float | None
    n_samples: int | None
    samples: dict[str, list[Any]] | None


@dataclass
class MergeVariant:
    """One way of merging for bf16 serving, against the unmerged bf16 model."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    max_rel_logit_diff: float
    greedy_agreement: float
    eval: ScorePair | None


@dataclass
class MergePrecision:
    dtype: str
    unmerged: ScorePair | None
    merge_fp32_then_cast: MergeVariant
    merge_in_bf16: MergeVariant


@dataclass
class SameBase:
    """The merged model against the unmerged one after unmerging, on the same base weights."""

    max_abs_logit_diff: float
    max_rel_logit_diff: float
    greedy_agreement: float
    ok: bool


@dataclass
class MergeCheck:
    """Whether merging reproduces the unmerged model, and unmerging restores it."""

    supported: bool
    lossy: bool
    tolerance_rel: float
    max_abs_logit_diff: float | None = optional()
    mean_abs_logit_diff: float | None = optional()
    max_rel_logit_diff: float | None = optional()
    greedy_agreement: float | None = optional()
    ok: bool | None = optional()
    eval: ScorePair | None = optional()
    unmerge_max_rel_logit_diff: float | None = optional()
    unmerge_ok: bool | None = optional()
    same_base: SameBase | None = optional()
    precision: MergePrecision | None = optional()
    precision_skipped: str | None = optional()  # why the precision study did not run


@dataclass
class ReloadCheck:
    """The saved artifact loaded onto a fresh base against the trained model."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    max_rel_logit_diff: float
    greedy_agreement: float
    ok: bool
    tolerance_rel: float


@dataclass
class ArtifactInfo:
    bytes: int
    files: dict[str, int]
    kept_at: str | None


@dataclass
class RetentionScore:
    """A task the model was not trained on (forgetting), with the base model's score beside it."""

    metric: str
    score: float | None
    stderr: float | None = optional()
    n_samples: int | None = optional()
    eval: dict[str, Any] | None = optional()
    base: float | None = optional()
    base_stderr: float | None = optional()
    delta: float | None = optional()
    error: ErrorInfo | None = optional()


def scored_on_test(run: dict[str, Any]) -> bool:
    """Whether a run file's scores are test scores (every cell but a tuning grid's)."""
    return ((run.get("tuning") or {}).get("split") or "test") == "test"


@dataclass(kw_only=True)
class RunRecord:
    """One cell's run file."""

    schema_version: int = SCHEMA_VERSION
    key: str
    status: str
    method: str
    task: str
    seed: int
    model: str | None
    config: dict[str, Any]
    capabilities: dict[str, Any] | None
    data: dict[str, Any] | None
    limit: int | None
    tuning: TuningInfo | None = optional()  # set when the session tunes (--tune): the cell's role in it
    example: dict[str, Any] | None = optional()  # one training example as trained on and as scored (tasks.example_prompt)
    params: ParamCount | None = None
    train: TrainResult | None = None
    eval: EvalResult | dict[str, Any] | None = None
    retention: dict[str, RetentionScore] | None = None
    latency: dict[str, Any] | None = None   # the measure_latency hook's section, as it returned it
    artifact: ArtifactInfo | None = None
    merge: MergeCheck | None = None
    reload: ReloadCheck | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    reason: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    # the most other processes used while the cell's phases ran (the report flags cost measured then)
    gpu_others_bytes: int | None = optional()
    host_others_cores: float | None = optional()

    def failed(self, status: str, error: ErrorInfo) -> None:
        self.status, self.error = status, error
