"""What each method keeps per parameter: the frozen base's storage, the trainable weights, their gradients
and the optimizer's moments (bytes of the whole model, before FSDP shards them), and the bf16 copies compute
makes."""

from __future__ import annotations

from dataclasses import dataclass

from peftbench.errors import UsageError
from peftbench.estimate.architecture import Architecture
from peftbench.estimate.setting import ALL_LINEAR, Setting

BF16, FP32 = 2, 4
NF4_BLOCK, NF4_BLOCK2 = 64, 256  # bitsandbytes: absmax per 64 weights; double quant: 8-bit absmax, fp32 per 256


def nf4_bytes_per_weight(double_quant: bool) -> float:
    """4 bits, plus each block of 64's absmax: fp32, or (double quant) 8-bit with an fp32 scale per 256 blocks."""
    absmax = 1 / NF4_BLOCK + FP32 / (NF4_BLOCK * NF4_BLOCK2) if double_quant else FP32 / NF4_BLOCK
    return 0.5 + absmax


@dataclass(frozen=True)
class Stored:
    """Bytes (whole model, unsharded) and the counts the phases need."""

    frozen: float  # the frozen base in the stored dtype (QLoRA: its linears in 4 bits)
    trainable_params: int
    weights: float  # the trainable weights, in their dtype
    grads: float
    optimizer: float  # AdamW's two moments (or 8-bit ones)
    compute_copies: float  # bf16 casts of fp32 matrices that autocast keeps for backward (single GPU)
    block_compute: float  # one block's weights as compute sees them (bf16): what FSDP gathers at a time
    block_trainable: int  # one block's trainable parameters (FSDP: its unsharded gradients in backward)
    root_compute: float  # the LM head (or tied embedding) and final norm in bf16: FSDP gathers it for the loss
    dequantized: float  # QLoRA: the largest linear dequantized to bf16, one at a time
    head_trainable: bool


def lora_targets(arch: Architecture, setting: Setting) -> dict[str, tuple[int, int]]:
    """The linear layers LoRA adapts: all-linear (every block linear; never the head) or those named."""
    linears = arch.linears()
    if tuple(setting.lora_targets) == ALL_LINEAR:
        return linears
    unknown = [t for t in setting.lora_targets if t not in linears]
    if unknown:
        raise UsageError(f"--lora-targets {','.join(unknown)}: not a linear layer of this architecture; its "
                         f"linear layers are {', '.join(linears)} (or all-linear).")
    return {t: linears[t] for t in setting.lora_targets}


def lora_params(arch: Architecture, setting: Setting) -> int:
    """r x (in + out) per adapted linear, per block."""
    return arch.layers * sum(setting.lora_rank * (a + b) for a, b in lora_targets(arch, setting).values())


def bottleneck(arch: Architecture, setting: Setting) -> int:
    return max(1, arch.hidden // setting.adapter_reduction)


def adapters_per_block(setting: Setting) -> int:
    """Houlsby: after the attention output and after the MLP; Pfeiffer: after the MLP; parallel: beside it."""
    return 2 if setting.adapter_placement == "houlsby" else 1


def adapter_params(arch: Architecture, setting: Setting) -> int:
    """down (h x m + m) and up (m x h + h) per bottleneck."""
    h, m = arch.hidden, bottleneck(arch, setting)
    return arch.layers * adapters_per_block(setting) * (2 * h * m + m + h)


def stored(arch: Architecture, setting: Setting) -> Stored:
    """``master_weights`` is the dtype every unquantized weight is stored in, trainable or frozen (peftbench
    run: fp32 weights under bf16 autocast; FSDP: fp32 shards gathered as bf16; bf16: pure bf16). Compute runs in
    bf16 either way: on one GPU autocast makes a bf16 copy of each fp32 matrix and keeps it for backward."""
    store = FP32 if setting.master_weights == "fp32" else BF16
    base = arch.total_params()
    block_matrices = arch.layers * arch.block_matrix_params()
    head_matrix = arch.vocab * arch.hidden  # the LM head's matrix, tied or not, as the loss multiplies by it
    # FSDP (peftbench.train.distributed.shard_model): the head is a group of its own, gathered for the loss; a
    # separate embedding group is gathered only at the forward pass's start, before activations pile up
    root = (arch.vocab * arch.hidden + arch.hidden) * BF16
    block = arch.block_params() * BF16
    cast = BF16 if store == FP32 else 0  # bytes of autocast's bf16 copy per fp32 matrix weight
    kind = setting.method
    if kind == "full":
        return Stored(frozen=0, trainable_params=base, weights=base * store, grads=base * store,
                      optimizer=base * _moment_bytes(setting, store), compute_copies=(block_matrices + head_matrix) * cast,
                      block_compute=block, block_trainable=arch.block_params(), root_compute=root,
                      dequantized=0, head_trainable=True)
    if kind == "adapter":
        n = adapter_params(arch, setting)
        return Stored(frozen=base * store, trainable_params=n, weights=n * store, grads=n * store,
                      optimizer=n * _moment_bytes(setting, store),
                      compute_copies=(block_matrices + head_matrix + n) * cast,
                      block_compute=block + n // arch.layers * BF16, block_trainable=n // arch.layers,
                      root_compute=root, dequantized=0, head_trainable=False)
    # LoRA and QLoRA: peft keeps the LoRA weights in fp32 (autocast_adapter_dtype) whatever the base's dtype;
    # autocast makes bf16 copies of them for the matmuls
    n = lora_params(arch, setting)
    frozen, dequantized, block_base = base * store, 0.0, block
    copies = (block_matrices + head_matrix) * cast + n * BF16
    if kind == "qlora":  # 4-bit linears, dequantized to bf16 one at a time (never kept); the rest as stored
        nf4 = nf4_bytes_per_weight(setting.double_quant)
        frozen = (base - block_matrices) * store + block_matrices * nf4
        block_base = arch.block_matrix_params() * nf4 + 2 * arch.hidden * BF16
        dequantized = max(a * b for a, b in arch.linears().values()) * BF16
        copies = head_matrix * cast + n * BF16
    return Stored(frozen=frozen, trainable_params=n, weights=n * FP32, grads=n * FP32,
                  optimizer=n * _moment_bytes(setting, FP32), compute_copies=copies,
                  block_compute=block_base + n // arch.layers * BF16, block_trainable=n // arch.layers,
                  root_compute=root, dequantized=dequantized, head_trainable=False)


def _moment_bytes(setting: Setting, weight_bytes: int) -> int:
    """AdamW's two moments per weight: in the weight's dtype (torch), or 8-bit (bitsandbytes)."""
    return 2 if setting.optimizer == "adamw_8bit" else 2 * weight_bytes
