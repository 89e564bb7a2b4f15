"""What a latency measurement times: the grid (``LatencyPlan``) and the options a session sets for it
(``LatencyConfig``, ``--set latency_KEY=VALUE``). Torch-free, so option listings stay fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftbench.api.options import DTYPES, check_choices, option
from peftbench.errors import ConfigError

REGIMES = ("eager", "static")
SET_PREFIX = "latency_"  # a LatencyConfig field ``rounds`` is set as ``--set latency_rounds=...``
# options run files record only when set otherwise than their default: folders written before they existed
# then resume with an unchanged plan, and their timings keep their reuse key (``session.timing``)
QUIET_OPTIONS = ("min_rounds", "target_rel_ci")


@dataclass
class LatencyPlan:
    """What to time. ``run`` uses a small grid by default; ``peftbench latency`` the full one."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 1024])
    new_tokens: int = 64
    rounds: int = 5                  # timed rounds per shape (the most, under a StopRule)
    warmup: int = 1
    regimes: list[str] = field(default_factory=lambda: ["eager", "static"])
    tolerance: float = 0.03          # the sanity check's bound on |overhead| of modes that should equal base
    bootstrap: int = 2000
    seed: int = 1234

    def __post_init__(self) -> None:
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad:
            raise ConfigError(f"latency regime(s) {bad} unknown; valid: {', '.join(REGIMES)}.")
        if self.new_tokens < 2:
            raise ConfigError(f"latency new_tokens must be >= 2 (prefill plus at least one decode step); "
                              f"got {self.new_tokens}.")
        for name in ("batch_sizes", "prompt_lengths"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise ConfigError(f"latency {name} must be positive integers; got {values}.")
        if self.rounds < 1:
            raise ConfigError(f"latency rounds must be >= 1; got {self.rounds}.")


@dataclass(frozen=True)
class StopRule:
    """When a shape's timed rounds may end before the plan's ``rounds``: after ``min_rounds``, once every mode's
    median decode time is tight (``stats.median_ci``'s half-width at most ``target_rel_ci`` of the median).
    Kept apart from ``LatencyPlan``, so that plans recorded before it existed compare equal."""

    min_rounds: int
    target_rel_ci: float

    def stops(self, taken: int, rounds: int, tightness: list[float]) -> bool:
        """Whether to stop after ``taken`` of at most ``rounds`` rounds, each mode's tightness being given."""
        early = self.min_rounds < rounds and self.target_rel_ci > 0 and taken >= self.min_rounds
        return early and bool(tightness) and all(t <= self.target_rel_ci for t in tightness)


@dataclass
class LatencyConfig:
    """How each cell times inference. Set as ``--set latency_<field>=VALUE`` (e.g. ``latency_rounds=0``)."""

    rounds: int = option("timed rounds per latency mode and shape, at most (median reported; 0: skip latency)",
                         default=5)
    min_rounds: int = option("timed rounds before a shape may stop: it stops once every mode's median decode time "
                             "is as tight as latency_target_rel_ci (set it to latency_rounds for a fixed count)",
                             default=3)
    target_rel_ci: float = option("stop a shape's rounds once each mode's 95 % interval of its median decode time "
                                  "(order statistics; [min, max] below 6 rounds) has a half-width of at most this "
                                  "share of the median (0: always latency_rounds)", default=0.05)
    batch_sizes: list[int] = option("batch sizes of the latency grid", default_factory=lambda: [1])
    prompt_lengths: list[int] = option("prompt lengths (tokens) of the latency grid", default_factory=lambda: [128])
    new_tokens: int = option("tokens generated per latency round (>= 2)", default=32)
    regimes: list[str] = option("'eager' (generate, dynamic cache) and/or 'static' (static cache; a CUDA graph on "
                                "GPU)", default_factory=lambda: ["eager"])
    stack: list[int] = option("also time 2, 4, ... of the method's modules active at once (stackable methods; "
                              "e.g. 2,4)", default_factory=list)
    dtype: str = option("weights' dtype while timing: 'auto' (bf16 on CUDA, fp32 on CPU), 'bf16', 'fp32'",
                        default="auto")
    once: bool = option("time each method once per session (its first cell) and reuse those figures, marked with "
                        "the cell they come from, in its other cells: latency depends on the shapes and placement "
                        "of a method's weights, not their values (a session continued with --resume reuses its "
                        "kept cells' timings). false: time every cell", default=True)

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"latency option 'latency_rounds' must be >= 0, got {self.rounds!r}.")
        check_choices("latency option", {"latency_dtype": (self.dtype, DTYPES)})
        if any(k < 2 for k in self.stack):
            raise ConfigError(f"latency option 'latency_stack' lists how many modules to stack (each >= 2); got "
                              f"{self.stack}.")
        if self.min_rounds < 1 or self.target_rel_ci < 0:
            raise ConfigError(f"latency options 'latency_min_rounds' must be >= 1 and 'latency_target_rel_ci' >= 0, "
                              f"got {self.min_rounds!r} and {self.target_rel_ci!r}.")
        if self.rounds:
            self.grid()  # validates the grid

    def grid(self) -> LatencyPlan:
        """The shapes, regimes and rounds to time."""
        return LatencyPlan(batch_sizes=list(self.batch_sizes), prompt_lengths=list(self.prompt_lengths),
                           new_tokens=self.new_tokens, rounds=self.rounds, regimes=list(self.regimes))

    def stop_rule(self) -> StopRule:
        """When a shape's rounds may stop early (``StopRule``)."""
        return StopRule(min_rounds=min(self.min_rounds, self.rounds), target_rel_ci=self.target_rel_ci)
