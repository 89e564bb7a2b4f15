"""A generative task's scoring settings, read from its lm-eval YAML (``output_type: generate_until``) and
checked when the task loads: the stop sequences, the cap on new tokens, greedy decoding and the one filter
that extracts the answer from what the model wrote.

The first stop sequence also ends every training answer (``answer_end``): a model trained on
``<answer><until[0]>`` learns to stop where scoring cuts the generation, so it neither rambles up to the
token cap (the cost of scoring) nor leaves the answer unfinished. lm-eval removes the stop sequence from
the generation before filtering, so what is scored is the answer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError

GENERATE = "generate_until"


@dataclass(frozen=True)
class GenerationSpec:
    """How a generative task is scored: generate greedily from the prompt until a stop sequence or
    ``max_gen_toks`` new tokens, extract the answer with the filter ``filter``, compare by the metrics."""

    until: tuple[str, ...]   # stop sequences; the first one also ends every training answer
    max_gen_toks: int
    filter: str              # the one filter's name: lm-eval's metric keys are "<metric>,<filter>"

    def describe(self) -> dict[str, Any]:
        return {"until": list(self.until), "max_gen_toks": self.max_gen_toks, "filter": self.filter,
                "answer_end": self.until[0]}


def _fail(path: Path, msg: str) -> UsageError:
    return UsageError(f"Task file {path}: {msg} See docs/tasks.md, 'Generative tasks'.")


def generation_spec(config: dict[str, Any], path: Path) -> GenerationSpec | None:
    """The generation settings of an lm-eval task config (includes merged in); None for a task that is not
    ``generate_until``. Everything peftbench relies on is required here, not defaulted by lm-eval."""
    if config.get("output_type") != GENERATE:
        return None
    kwargs = config.get("generation_kwargs")
    if not isinstance(kwargs, dict):
        raise _fail(path, "a generate_until task needs generation_kwargs: {until: [STOP, ...], max_gen_toks: N, "
                    "do_sample: false}.")
    until = kwargs.get("until")
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list) or not until or not all(isinstance(u, str) and u for u in until):
        raise _fail(path, "generation_kwargs.until must list the stop sequences (non-empty strings); the first one "
                    "ends every training answer, so it should be what follows an answer (e.g. \"\\n\\n\").")
    max_gen = kwargs.get("max_gen_toks")
    if not isinstance(max_gen, int) or isinstance(max_gen, bool) or max_gen < 1:
        raise _fail(path, f"generation_kwargs.max_gen_toks must be a whole number of at least 1 (the cap on new "
                    f"tokens per answer), not {max_gen!r}.")
    if kwargs.get("do_sample") is not False or float(kwargs.get("temperature", 0.0) or 0.0) != 0.0:
        raise _fail(path, "generation_kwargs must decode greedily (do_sample: false, temperature 0 or left out): "
                    "a sampled answer makes the score depend on the sampler, not only on the method.")
    filters = config.get("filter_list")
    if not isinstance(filters, list) or len(filters) != 1 or not isinstance(filters[0], dict) or \
            not filters[0].get("name") or not isinstance(filters[0].get("filter"), list):
        raise _fail(path, "a generate_until task needs exactly one entry in filter_list ({name: ..., filter: "
                    "[...]}, the answer extraction): its metrics are recorded under their own names, so two "
                    "filters' scores could not be told apart.")
    return GenerationSpec(until=tuple(until), max_gen_toks=max_gen, filter=str(filters[0]["name"]))


def answer_end(lm_task: Any) -> str:
    """What follows the gold answer in a training example: the first stop sequence of a generative lm-eval
    task (nothing for a multiple-choice one)."""
    if lm_task.OUTPUT_TYPE != GENERATE:
        return ""
    until = (lm_task.config.generation_kwargs or {}).get("until") or [""]
    return until if isinstance(until, str) else until[0]
