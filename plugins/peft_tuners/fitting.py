"""Defaults that depend on the model: a few tuners' PEFT defaults only fit layers of certain sizes (C3A's
block size must divide every adapted layer's width: PEFT's 256 divides neither SmolLM's 576 nor
tiny:llama's 64). peftbench leaves such an option unset by default and, at ``prepare``, gives it PEFT's
default or, where that does not fit the model, the largest value below it that fits every linear layer of
the decoder. A value the user sets is passed to PEFT as it is."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fit:
    peft_default: Any
    rule: str  # what the fitted value satisfies, for the option's help text
    value: Callable[[Any, list[tuple[int, int]], int], Any]  # (peft default, linear layers' (in, out), layers)


def _largest_divisor(limit: int, of: int) -> int:
    return max(d for d in range(1, min(limit, of) + 1) if of % d == 0)


def _widths_gcd(shapes: list[tuple[int, int]]) -> int:
    return math.gcd(*[d for shape in shapes for d in shape])


# LLaMA-Adapter (Zhang et al., 2023, https://arxiv.org/abs/2303.16199, section 4.1): adaption prompts of length
# 10 in the topmost 30 layers; PEFT has no default for either.
ADAPTER_LEN, ADAPTER_LAYERS = 10, 30

FITS: dict[tuple[str, str], Fit] = {
    ("c3a", "block_size"): Fit(256, "the largest divisor of every adapted layer's width up to PEFT's 256",
                               lambda d, s, n: _largest_divisor(d, _widths_gcd(s))),
    ("vblora", "vector_length"): Fit(256, "the largest divisor of every adapted layer's width up to PEFT's 256",
                                     lambda d, s, n: _largest_divisor(d, _widths_gcd(s))),
    ("road", "group_size"): Fit(64, "the largest divisor of every adapted layer's width up to PEFT's 64",
                                lambda d, s, n: _largest_divisor(d, _widths_gcd(s))),
    ("waveft", "n_frequency"): Fit(2592, "PEFT's 2592, or the smallest adapted weight's size if that is less",
                                   lambda d, s, n: min(d, min(i * o for i, o in s))),
    ("shira", "r"): Fit(32, "PEFT's 32, or less where r * (in + out) would exceed a layer's in * out",
                        lambda d, s, n: min(d, min(i * o // (i + o) for i, o in s))),
    ("adaption_prompt", "adapter_layers"): Fit(ADAPTER_LAYERS, "30 (LLaMA-Adapter's choice; PEFT has no "
                                               "default), or every layer of a smaller model",
                                               lambda d, s, n: min(d, n)),
}

# Prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691, section 3.2): 20 tokens reach most of
# the gain of longer prompts; peftbench uses that length for every virtual-token tuner (PEFT has no default).
VIRTUAL_TOKENS = 20
_VIRTUAL_WHY = "peftbench's default 20 is prompt tuning's (Lester et al., 2021; PEFT has none)"

# PEFT has no default; peftbench's is the method paper's (above)
OWN_DEFAULTS: dict[tuple[str, str], tuple[Any, str]] = {
    **{(key, "num_virtual_tokens"): (VIRTUAL_TOKENS, _VIRTUAL_WHY) for key in ("cartridge", "p_tuning", "prefix_tuning",
                                                                               "prompt_tuning")},
    ("adaption_prompt", "adapter_len"): (ADAPTER_LEN, "peftbench's default 10 is LLaMA-Adapter's (PEFT has none)"),
}


def fit_help(key: str, name: str, help_text: str) -> str:
    fit = FITS[(key, name)]
    return f"{help_text} Unset (the default): {fit.rule}."


def apply_fits(key: str, values: dict[str, Any], model: Any) -> dict[str, Any]:
    """``values`` with each unset model-dependent option of tuner ``key`` fitted to ``model``."""
    import torch

    shapes = [(m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"]
    layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
    out = dict(values)
    for (tuner, name), fit in FITS.items():
        if tuner == key and out.get(name) is None and shapes:
            out[name] = fit.value(fit.peft_default, shapes, layers)
    return out
