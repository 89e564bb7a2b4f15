from __future__ import annotations

import math
from dataclasses import dataclass, field

from peftbench.errors import ConfigError

BIAS = ("none", "all", "lora_only")


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata={"help": "rank of the update matrices"})
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator: the update is scaled by alpha/r "
                                                         "(alpha/sqrt(r) with use_rslora)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input during training"})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "module names to adapt (e.g. q_proj,v_proj), or all-linear for every linear layer but the head"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA scaling alpha/sqrt(r)"})
    use_dora: bool = field(default=False, metadata={"help": "DoRA: weight-decomposed LoRA (magnitude + direction)"})
    bias: str = field(default="none", metadata={"help": "which biases train: none, all or lora_only"})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"option 'r' must be a positive integer, got {self.r!r}.")
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise ConfigError(f"option 'alpha' must be a finite number > 0, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"option 'dropout' must be in [0, 1), got {self.dropout!r}.")
        if not self.target_modules:
            raise ConfigError("option 'target_modules' must name at least one module, or all-linear.")
        if self.bias not in BIAS:
            raise ConfigError(f"option 'bias' must be one of {', '.join(BIAS)}; got {self.bias!r}.")

    def to_peft(self):
        import peft

        targets = "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)
        return peft.LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=targets, use_rslora=self.use_rslora, use_dora=self.use_dora,
                               bias=self.bias)
