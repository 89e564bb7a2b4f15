"""How each cell is scored: lm-eval's batch, limit and shots, and the checks run on merged models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftbench.api.options import check_choices, option
from peftbench.errors import ConfigError

EVALUATE_MODES = ("auto", "on", "off")
# 'auto' scoring batch sizes. CPU: the fastest for short multiple-choice prompts on the 2-core CPU
# (results/main-job-cpu/README.md has the measurement); CUDA: 32, the size the reference results were scored at
CPU_BATCH, CUDA_BATCH = 64, 32


@dataclass
class EvalConfig:
    """Scoring options shared by every method (``--set KEY=VALUE``)."""

    eval_batch_size: int | str = option("batch size for lm-eval scoring (the task's and the retention tasks'): "
                                        f"'auto' ({CPU_BATCH} on CPU, {CUDA_BATCH} on CUDA) or a number",
                                        default="auto")
    limit: int = option("score at most this many evaluation examples (0: all)", default=0)
    num_fewshot: int = option("few-shot examples in the scoring prompt", default=0)
    shared_context: bool | str = option("score the answer choices that share a context in one packed row (the "
                                        "context once; checked against lm-eval's own path on the first requests, "
                                        "which it falls back to on a mismatch): 'auto' (on CPU, where scoring is "
                                        "bound by compute; off on CUDA), true/on, false/off", default="auto")
    merge_eval: bool = option("score the merged model with lm-eval too (mergeable methods)", default=True)
    merge_precisions: bool | str = option("also compare merging in fp32 then casting to bf16 with merging in "
                                          "bf16 (mergeable methods; logits and lm-eval score vs the unmerged bf16 "
                                          "model): 'auto' (on CUDA; off on CPU, where bf16 is not served), "
                                          "true/on, false/off", default="auto")
    evaluate: str = option("'auto' (score with lm-eval, except on shape: models, whose random weights carry no "
                           "accuracy), 'on', or 'off' (cost only: training, artifact, merge and reload checks, "
                           "latency)", default="auto")

    def __post_init__(self) -> None:
        if isinstance(self.eval_batch_size, str):
            check_choices("eval option", {"eval_batch_size": (self.eval_batch_size, ("auto", "a number >= 1"))})
        elif self.eval_batch_size < 1:
            raise ConfigError(f"eval option 'eval_batch_size' must be >= 1, got {self.eval_batch_size!r}.")
        for name in ("limit", "num_fewshot"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval option {name!r} must be >= 0, got {getattr(self, name)!r}.")
        check_choices("eval option", {"evaluate": (self.evaluate, EVALUATE_MODES)})
        for name in ("merge_precisions", "shared_context"):
            if isinstance(getattr(self, name), str):
                check_choices("eval option", {name: (getattr(self, name), ("auto", "true", "false"))})

    def resolve(self, device: str, earlier: dict[str, Any] | None = None) -> None:
        """Settle the 'auto' options for ``device``, so that run files record what was done. A session
        continued with --resume keeps what its folder recorded (``earlier``: that cell group's options), so
        its earlier and later cells measure alike."""
        if self.eval_batch_size == "auto":
            recorded = (earlier or {}).get("eval_batch_size")
            self.eval_batch_size = recorded if isinstance(recorded, int) else self.batch_size(device)
        if self.merge_precisions == "auto":
            recorded = (earlier or {}).get("merge_precisions")
            self.merge_precisions = recorded if isinstance(recorded, bool) else merge_precisions_default(device)
        if self.shared_context == "auto":
            recorded = (earlier or {}).get("shared_context")
            self.shared_context = recorded if isinstance(recorded, bool) else self.packs_contexts(device)


    def batch_size(self, device: str) -> int:
        """The scoring batch size on ``device`` ('auto': ``CPU_BATCH`` or ``CUDA_BATCH``)."""
        if isinstance(self.eval_batch_size, int):
            return self.eval_batch_size
        return CUDA_BATCH if str(device).startswith("cuda") else CPU_BATCH


    def packs_contexts(self, device: str) -> bool:
        """Whether scoring packs shared contexts on ``device`` ('auto': on CPU only, where scoring is bound by
        compute and fp32 keeps the packed path within 1e-4 of lm-eval's own; a GPU scores these tasks in
        seconds either way)."""
        if isinstance(self.shared_context, bool):
            return self.shared_context
        return not str(device).startswith("cuda")


def merge_precisions_default(device: str) -> bool:
    """The merge-precision study compares two ways to serve in bf16: worth its three scoring passes where bf16
    is served (CUDA), not on a CPU, which serves fp32."""
    return str(device).startswith("cuda")

