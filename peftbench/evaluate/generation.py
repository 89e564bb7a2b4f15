"""What scoring a generative task cost: requests, batches, tokens generated and seconds, counted around
lm-eval's ``generate_until`` (``count_generation`` wraps the LM's two generation methods).

lm-eval generates a batch until every row has written a stop sequence (or the token cap), so a batch costs
``rows x steps`` token positions whatever its rows' answers: ``generated_tokens`` counts those, the compute
spent; ``answer_tokens`` counts each row's tokens up to the end of its first stop sequence, the part that
was needed. ``unstopped`` answers reached ``max_gen_toks`` without a stop sequence: many of them mean the cap
cuts answers short, or that the model never learnt to stop.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

EXAMPLES_KEPT = 3  # generations kept in the run file, with what was extracted and scored, for a reader to see


@dataclass
class GenerationCost:
    requests: int = 0
    batches: int = 0
    decode_steps: int = 0        # sum over batches of the new tokens of its longest row (sequential steps)
    generated_tokens: int = 0    # rows x steps: every token position generated, padding after a stop included
    answer_tokens: int = 0       # each row's tokens up to the end of its first stop sequence (all: none)
    unstopped: int = 0           # answers that hit max_gen_toks without a stop sequence
    seconds: float = 0.0         # wall time inside generate_until

    def add_batch(self, steps: int, answers: list[tuple[int, bool]]) -> None:
        """One generated batch: its new tokens per row, and each row's (answer tokens, stopped)."""
        self.batches += 1
        self.decode_steps += steps
        self.generated_tokens += steps * len(answers)
        self.answer_tokens += sum(n for n, _ in answers)
        self.unstopped += sum(not stopped for _, stopped in answers)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["tokens_per_s"] = round(self.generated_tokens / self.seconds, 1) if self.seconds > 0 else None
        return out


def count_generation(lm_class: type) -> type:
    """A subclass of the lm-eval LM ``lm_class`` whose instances count their generation in ``.generation``."""

    class Counted(lm_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.generation = GenerationCost()

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> list[str]:
            t0 = time.perf_counter()
            out = super().generate_until(requests, disable_tqdm=disable_tqdm)
            self.generation.seconds += time.perf_counter() - t0
            self.generation.requests += len(requests)
            return out

        def _model_generate(self, context: Any, max_length: int, stop: list[str], **kwargs: Any) -> Any:
            out = super()._model_generate(context, max_length, stop, **kwargs)
            rows = out[:, context.shape[1]:].tolist()
            decode = lambda ids: self.tok_decode(ids, skip_special_tokens=False)  # noqa: E731
            self.generation.add_batch(len(rows[0]) if rows else 0, [answer_length(r, stop, decode) for r in rows])
            return out

    return Counted


def answer_length(row: list[int], stop: list[str], decode: Any) -> tuple[int, bool]:
    """The tokens of a generated ``row`` up to the end of its first stop sequence (all of them when none
    occurs), and whether one does: the shortest prefix whose text holds a stop sequence, found by bisection
    (a prefix that holds one stays holding it as it grows), a few decodes per row."""
    def stopped(k: int) -> bool:
        text = decode(row[:k])
        return any(s in text for s in stop)

    if not row or not stopped(len(row)):
        return len(row), False
    lo, hi = 1, len(row)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if stopped(mid) else (mid + 1, hi)
    return lo, True


def examples(samples: list[dict[str, Any]], metric: str, n: int = EXAMPLES_KEPT) -> list[dict[str, Any]]:
    """The first ``n`` documents' generations: what the model wrote, what the filter extracted, the gold
    answer and the metric's value (lm-eval's sample log keeps them all; the run file keeps a few)."""
    out = []
    for s in sorted((s for s in samples if "doc_id" in s), key=lambda s: s["doc_id"])[:n]:
        resps, filtered = s.get("resps") or [[None]], s.get("filtered_resps") or [None]
        out.append({"doc_id": s["doc_id"], "generated": _first(resps), "extracted": _first(filtered),
                    "target": s.get("target"), metric: s.get(metric)})
    return out


def _first(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value
