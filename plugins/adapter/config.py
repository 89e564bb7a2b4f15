"""Options of the bottleneck adapter method; every bad value is a ConfigError naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftbench import option
from peftbench.errors import ConfigError

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")


@dataclass
class AdapterConfig:
    placement: str = option(
        "where adapters go: houlsby (in series after the attention output and after the MLP output), "
        "pfeiffer (in series after the MLP output only) or parallel (beside the MLP block: "
        "mlp(x) + scaling * adapter(x))", default="houlsby")
    reduction_factor: int = option(
        "bottleneck width = hidden_size // reduction_factor (at least 1)", default=16)
    non_linearity: str = option("activation inside the bottleneck: relu, gelu, silu or tanh", default="relu")
    dropout: float = option("dropout on the bottleneck activations during training, in [0, 1)", default=0.0)
    scaling: float = option("multiplies the adapter's output (series and parallel)", default=1.0)
    attn_output_modules: list[str] = option(
        "leaf names of the attention output Linear layers the houlsby adapters follow",
        default_factory=lambda: ["o_proj", "out_proj"])
    mlp_output_modules: list[str] = option(
        "leaf names of the MLP output Linear layers the houlsby/pfeiffer adapters follow",
        default_factory=lambda: ["down_proj", "fc2"])
    mlp_modules: list[str] = option(
        "leaf names of the MLP blocks the parallel adapters run beside", default_factory=lambda: ["mlp"])

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"adapter option 'placement' must be one of {', '.join(PLACEMENTS)}; "
                              f"got {self.placement!r}.")
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int) \
                or self.reduction_factor < 1:
            raise ConfigError(f"adapter option 'reduction_factor' must be an integer >= 1 (e.g. 16), "
                              f"got {self.reduction_factor!r}.")
        if self.non_linearity not in NON_LINEARITIES:
            raise ConfigError(f"adapter option 'non_linearity' must be one of {', '.join(NON_LINEARITIES)}; "
                              f"got {self.non_linearity!r}.")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"adapter option 'dropout' must be a number in [0, 1), got {self.dropout!r}.")
        if not _is_number(self.scaling) or not math.isfinite(self.scaling) or self.scaling == 0:
            raise ConfigError(f"adapter option 'scaling' must be a finite non-zero number, got {self.scaling!r}.")
        for name in ("attn_output_modules", "mlp_output_modules", "mlp_modules"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
                    or not all(isinstance(v, str) and v.strip() for v in value):
                raise ConfigError(f"adapter option {name!r} must be a non-empty list of module leaf names "
                                  f"(e.g. o_proj,out_proj), got {value!r}.")
            setattr(self, name, [v.strip() for v in value])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
