"""The bottleneck block and the two wrappers that put it in series after, or in parallel to, a module."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def param_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype and device of ``module``'s first parameter; float32 when it has no float parameter
    (e.g. a bitsandbytes layer whose weight is packed integers)."""
    device = torch.device("cpu")
    for i, p in enumerate(module.parameters()):
        if i == 0:
            device = p.device
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, device


class Bottleneck(nn.Module):
    """down (hidden -> bottleneck), activation, dropout, up (bottleneck -> hidden).

    ``up`` starts at zero (weight and bias), so the adapter outputs exactly 0 until it trains."""

    def __init__(self, hidden: int, bottleneck: int, non_linearity: str = "relu", dropout: float = 0.0,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.down = nn.Linear(hidden, bottleneck, **kw)
        self.act = ACTIVATIONS[non_linearity]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden, **kw)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # as LoRA's A: small, non-zero
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))

    @property
    def dtype(self) -> torch.dtype:
        return self.down.weight.dtype


class _AdapterWrapper(nn.Module):
    def __init__(self, base: nn.Module, adapter: Bottleneck, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.extra = nn.ModuleList()  # stacked copies (latency of composition); empty otherwise
        self.scaling = float(scaling)
        self.adapter_enabled = True
        self.train(base.training)  # a fresh module is in training mode; follow the wrapped one

    def _delta(self, x: torch.Tensor, like: torch.Tensor, adapter: Bottleneck | None = None) -> torch.Tensor:
        adapter = adapter or self.adapter
        return (self.scaling * adapter(x.to(adapter.dtype))).to(like.dtype)

    def extra_repr(self) -> str:
        return f"scaling={self.scaling}, adapter_enabled={self.adapter_enabled}"


class SeriesAdapterWrapper(_AdapterWrapper):
    """``h = base(x); h + scaling * adapter(h)`` (Houlsby / Pfeiffer)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base(x, *args, **kwargs)
        if not self.adapter_enabled:
            return h
        h = h + self._delta(h, h)
        for extra in self.extra:  # stacked adapters, one after another
            h = h + self._delta(h, h, extra)
        return h


class ParallelAdapterWrapper(_AdapterWrapper):
    """``base(x) + scaling * adapter(x)`` beside an MLP block (He et al., 2022)."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        if not self.adapter_enabled:
            return out
        main = out[0] if isinstance(out, tuple) else out  # blocks that also return e.g. router logits
        delta = self._delta(x, main)
        for extra in self.extra:  # stacked adapters, side by side
            delta = delta + self._delta(x, main, extra)
        return (main + delta, *out[1:]) if isinstance(out, tuple) else main + delta


WRAPPERS = (SeriesAdapterWrapper, ParallelAdapterWrapper)
