"""Virtual-token (prompt-style) tuners as a model whose outputs line up with the task's tokens.

PEFT's ``PeftModelForCausalLM`` prepends a prompt tuner's ``num_virtual_tokens`` learned embeddings in
``forward``, so its logits have that many more positions than the input: lm-eval, which reads the logits at
the input's positions, and peftbench's loss, which shifts them against the labels, would score the wrong
tokens. ``VirtualTokenModel`` runs PEFT's forward (the virtual tokens in place) and returns the logits of the
input's own positions only; ``generate`` is PEFT's, which puts the virtual tokens in front of the prompt before
decoding, so the latency harness's eager regime times them. Everything else (``config``, ``device``,
``disable_adapter``, ``save_pretrained``, ...) is the wrapped ``PeftModel``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from peftbench import NotSupported


class VirtualTokenModel(torch.nn.Module):
    def __init__(self, peft_model: Any):
        super().__init__()
        self.peft = peft_model

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (self.peft)
        except AttributeError:
            return getattr(self.peft, name)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is not None or kwargs.get("cache_position") is not None:
            # the static latency regime sizes its cache and masks for the prompt alone
            raise NotSupported("a virtual-token tuner's tokens need cache positions a caller-made cache does not "
                               "have; its decoding is timed through generate (the eager regime)")
        if kwargs.pop("position_ids", None) is not None and attention_mask is None:
            # packed rows (padding-free training): the virtual tokens would precede the row, not each example
            raise NotSupported("a virtual-token tuner cannot train on packed rows; set padding_free=false")
        out = self.peft(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        length = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
        out.logits = out.logits[:, -length:]  # inside disable_adapter() PEFT adds none: the slice keeps all
        return out

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.peft.generate(*args, **kwargs)
