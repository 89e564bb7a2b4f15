"""What an estimate is asked for: the method and how it trains, validated with errors that name the field."""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftbench.errors import UsageError

METHODS = ("full", "lora", "qlora", "adapter")
MASTER = ("fp32", "bf16")
OPTIMIZERS = ("adamw", "adamw_8bit")
PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
ALL_LINEAR = ("all-linear",)

# peftbench's built-in method defaults (peftbench_plugins.lora.config.LoraConfig, .adapter.config.AdapterConfig;
# tests/test_estimate.py checks they still agree)
LORA_RANK, LORA_DROPOUT = 16, 0.05
ADAPTER_REDUCTION, ADAPTER_PLACEMENT = 16, "houlsby"


def parse_memory(text: str, where: str = "--gpu-memory") -> int:
    """Bytes of ``80GiB``, ``80 GB``, ``48e9`` (bytes without a unit); GB = 10^9, GiB = 2^30."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"{where} {text!r} is not an amount of memory: write a positive number and a unit, "
                         "e.g. 80GiB, 48GB, 24576MiB (GB = 10^9 bytes, GiB = 2^30).")
    return int(float(m.group(1)) * UNITS[unit])


@dataclass(frozen=True)
class Setting:
    """One method's training set-up. ``gpus`` is the FSDP world size (1: the plain single-GPU loop, unless
    ``fsdp``)."""

    method: str
    gpus: int = 1
    gpu_memory: int = 80 * 2**30
    batch_size: int = 1
    seq_len: int = 2048
    activation_checkpointing: bool = False
    optimizer_offload: bool = False  # FSDP's CPU offload: shards, gradients and moments in host memory
    master_weights: str = "fp32"  # dtype weights are stored in (and gradients, AdamW's moments); compute: bf16
    optimizer: str = "adamw"
    compiled: bool = True  # blocks under torch.compile (peftbench's fast loop on CUDA); False: eager
    chunked_loss: bool = True  # the head and loss a chunk of tokens at a time; False: full logits (naive loop)
    lora_rank: int = LORA_RANK
    lora_targets: tuple[str, ...] = ALL_LINEAR
    lora_dropout: float = LORA_DROPOUT
    adapter_reduction: int = ADAPTER_REDUCTION
    adapter_placement: str = ADAPTER_PLACEMENT
    double_quant: bool = True
    fsdp: bool = False  # FSDP even on one GPU (a world size of 1); more GPUs always shard

    def __post_init__(self) -> None:
        choices = {"method": (self.method, METHODS),
                   "master_weights": (self.master_weights, MASTER), "optimizer": (self.optimizer, OPTIMIZERS),
                   "adapter_placement": (self.adapter_placement, PLACEMENTS)}
        for name, (value, valid) in choices.items():
            if value not in valid:
                raise UsageError(f"estimate {name} {value!r} is not one of {', '.join(valid)}.")
        for name in ("gpus", "batch_size", "seq_len", "lora_rank", "adapter_reduction", "gpu_memory"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"estimate {name} must be a whole number >= 1, got {value!r}.")
        if self.optimizer_offload and not self.sharded:
            raise UsageError("estimate optimizer_offload is FSDP's CPU offload (peftbench.train.distributed): give "
                             "--gpus N (N > 1) or --fsdp.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"estimate lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch on one GPU."""
        return self.batch_size * self.seq_len

    @property
    def sharded(self) -> bool:
        """FSDP (a world size above 1, or ``fsdp``) rather than the plain single-GPU loop."""
        return self.gpus > 1 or self.fsdp

    @property
    def fp32_stream(self) -> bool:
        """fp32 weights in the plain loop: the embedding and the residual stream stay fp32 under autocast
        (FSDP's mixed precision gathers bf16 weights, so everything computes in bf16)."""
        return self.master_weights == "fp32" and not self.sharded
