"""What ``peftbench serve-bench`` times: one base model serving K adapters at once, for each batch size, and
the points of that sweep (a point: one batch size, every mode timed together in the same rotated rounds).
Torch-free, so the reports and the command's checks read it without loading the harness."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftbench.errors import ConfigError
from peftbench.latency.config import REGIMES, LatencyPlan

# modes every point times besides the mixed batches: the base model, one adapter merged into it (served
# unloaded), one adapter on a model that holds only it ("one"), and one adapter active on the model that
# holds all K ("single": the request of one tenant on a multi-tenant server)
FIXED_MODES = ("base", "merged", "one", "single")
MIXED = "mixed"  # mixedK: a batch whose rows ask for K different adapters (PEFT's per-row adapter_names)


def mixed_mode(k: int) -> str:
    return f"{MIXED}{k}"


def mixed_k(mode: str) -> int | None:
    """K of a ``mixedK`` mode name, else None."""
    return int(mode[len(MIXED):]) if mode.startswith(MIXED) and mode[len(MIXED):].isdigit() else None


@dataclass
class ServePlan:
    """The sweep: K adapters loaded for K in ``adapters``, each batch size, one or more prompt lengths."""

    adapters: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    prompt_lengths: list[int] = field(default_factory=lambda: [128])
    new_tokens: int = 16
    rounds: int = 5
    warmup: int = 1
    regimes: list[str] = field(default_factory=lambda: ["eager"])
    dtype: str = "auto"
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("adapters", "batch_sizes", "prompt_lengths"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ConfigError(f"serve-bench {name.replace('_', ' ')} must be positive whole numbers; got "
                                  f"{values}.")
            if len(set(values)) != len(values):
                raise ConfigError(f"serve-bench {name.replace('_', ' ')} lists a value twice: {values}.")
        if self.adapters != sorted(self.adapters) or self.adapters[0] != 1:
            raise ConfigError(f"serve-bench adapters must start at 1 and rise (the claims compare K adapters with "
                              f"one); got {self.adapters}.")
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad or not self.regimes:
            raise ConfigError(f"serve-bench regime(s) {bad or self.regimes} unknown; valid: {', '.join(REGIMES)}.")
        if self.new_tokens < 2:
            raise ConfigError(f"serve-bench new tokens must be >= 2 (prefill plus a decode step); got "
                              f"{self.new_tokens}.")
        if self.rounds < 1 or self.warmup < 0:
            raise ConfigError(f"serve-bench rounds must be >= 1 and warm-up >= 0; got {self.rounds} and "
                              f"{self.warmup}.")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"serve-bench dtype must be auto, bf16 or fp32; got {self.dtype!r}.")

    @property
    def most_adapters(self) -> int:
        """How many adapters the multi-adapter model holds: the largest K."""
        return self.adapters[-1]

    def points(self) -> list[ServePoint]:
        """One point per batch size, in order. A batch of B rows can ask for at most B adapters: K > B is
        not timed there (it would time the same batch as K = B) and the point says so."""
        return [ServePoint(b, [k for k in self.adapters if k <= b], [k for k in self.adapters if k > b])
                for b in self.batch_sizes]

    def latency_plan(self, batch: int) -> LatencyPlan:
        """The timer's plan for one point: this batch size, every prompt length."""
        return LatencyPlan(batch_sizes=[batch], prompt_lengths=list(self.prompt_lengths),
                           new_tokens=self.new_tokens, rounds=self.rounds, warmup=self.warmup,
                           regimes=list(self.regimes), seed=self.seed)


@dataclass
class ServePoint:
    batch_size: int
    mixed: list[int]          # the K timed at this batch size
    not_timed: list[int]      # the K larger than the batch

    @property
    def key(self) -> str:
        return f"bs{self.batch_size}"

    def modes(self, mergeable: bool) -> list[str]:
        fixed = [m for m in FIXED_MODES if mergeable or m != "merged"]
        return fixed + [mixed_mode(k) for k in self.mixed]


def row_adapters(names: list[str], k: int, batch: int) -> list[str]:
    """The adapter each row of a batch asks for when K adapters are in use: the first K names in turn
    (row i gets adapter i mod K), so every adapter serves about B/K rows."""
    if not 1 <= k <= len(names):
        raise ValueError(f"{k} adapters asked for, {len(names)} loaded")
    return [names[i % k] for i in range(batch)]
