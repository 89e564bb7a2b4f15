"""QLoRA = LoRA + a 4-bit quantized base. It composes the LoRA method; it does not subclass it.

Merging: LoRA cannot be folded into 4-bit weights without re-quantizing (which changes the outputs), so
``merge`` dequantizes the base to the model's activation dtype and merges into that. The merged model computes the
same function as the unmerged one, but is no longer 4-bit: ``unmerge`` leaves the dequantized weights.
The run file records this (capabilities.merge_lossy) and the measured logit difference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from peftbench_plugins.lora.config import LoraConfig
from peftbench_plugins.lora.method import LoraMethod

from peftbench import Capabilities, ConfigError, Method, NotSupported

from .quantize import DTYPES, dequantize, quantize_linears


@dataclass
class QLoraConfig(LoraConfig):
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type of the base: nf4 or fp4"})
    double_quant: bool = field(default=True, metadata={"help": "also quantize the quantization constants"})
    compute_dtype: str = field(default="auto", metadata={
        "help": "dtype the 4-bit layers compute in: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"option 'quant_type' must be nf4 or fp4, got {self.quant_type!r}.")
        if self.compute_dtype not in ("auto", *DTYPES):
            raise ConfigError(f"option 'compute_dtype' must be one of auto, {', '.join(DTYPES)}; "
                              f"got {self.compute_dtype!r}.")


def _activation_dtype(model):
    """The dtype activations reach the linear layers in: that of the model's (unquantized) embeddings."""
    import torch

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return weight.dtype if weight is not None and weight.is_floating_point() else torch.float32


def _lora_layers(model):
    """peft's LoRA layers (they hold ``base_layer`` and compute ``get_delta_weight``)."""
    return [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "get_delta_weight")]


def _compute_dtype(config: QLoraConfig, model):
    import torch

    if config.compute_dtype != "auto":
        return DTYPES[config.compute_dtype]
    device = next(model.parameters()).device
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class QLoraMethod(Method):
    name = "qlora"
    Config = QLoraConfig
    capabilities = Capabilities(mergeable=True, merge_lossy=True, can_disable=True, quantized_base=True,
                                can_stack=True)
    requires = ("peft", "bitsandbytes")
    default_lr = 2e-4
    description = "QLoRA: LoRA (peft) on a 4-bit NF4/FP4 base (bitsandbytes); merges into a dequantized base"

    def __init__(self) -> None:
        self.lora = LoraMethod()

    def quantize(self, model, config: QLoraConfig):
        head = model.get_output_embeddings()
        n = quantize_linears(model, config.quant_type, config.double_quant, _compute_dtype(config, model),
                             skip=(head,) if head is not None else ())
        if n == 0:
            raise ConfigError("qlora found no linear layer to quantize in this model.")
        return model

    def prepare(self, model, config: QLoraConfig):
        return self.lora.prepare(self.quantize(model, config), config)

    def merge(self, model):
        """Dequantize each adapted layer's 4-bit base to the dtype of the model's activations (fp32 unless the
        model itself was loaded in half precision: the 4-bit layer cast its input to ``compute_dtype`` and its
        output back, a plain linear layer must take the activations as they come) and add the LoRA delta
        to it. (peft's own 4-bit merge re-quantizes the sum, which changes the outputs.)"""
        import bitsandbytes as bnb

        dtype = _activation_dtype(model)
        for layer in _lora_layers(model):
            names = [n for n in layer.active_adapters if n in layer.lora_A and n not in layer.merged_adapters]
            if any(layer.use_dora.get(n) for n in names):
                raise NotSupported("qlora cannot merge DoRA adapters into a dequantized base yet")
            if isinstance(layer.base_layer, bnb.nn.Linear4bit):
                layer.base_layer = dequantize(layer.base_layer, dtype)
            weight = layer.base_layer.weight
            for name in names:
                weight.data += layer.get_delta_weight(name).to(weight.dtype)
                layer.merged_adapters.append(name)
        return model

    def unmerge(self, model):
        """Subtract the LoRA deltas again; the base stays dequantized (re-quantizing would be lossy)."""
        for layer in _lora_layers(model):
            weight = layer.base_layer.weight
            while layer.merged_adapters:
                name = layer.merged_adapters.pop()
                weight.data -= layer.get_delta_weight(name).to(weight.dtype)
        return model

    def unload(self, model):
        return self.lora.unload(model)  # the dequantized, merged base layers without their LoRA wrappers

    @contextlib.contextmanager
    def disabled(self, model):
        with self.lora.disabled(model):
            yield model

    @contextlib.contextmanager
    def stacked(self, model, n: int):
        with self.lora.stacked(model, n):
            yield model

    def save(self, model, directory: Path, config: QLoraConfig) -> list[Path]:
        return self.lora.save(model, directory, config)

    def load(self, directory: Path, base_model, config: QLoraConfig):
        return self.lora.load(directory, self.quantize(base_model, config), config)
