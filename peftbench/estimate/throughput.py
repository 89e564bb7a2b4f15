"""Training throughput by calculation: model FLOPs per token, and tokens/s at an assumed model FLOPs
utilisation (MFU). Memory is calculated; speed is not — it depends on kernels, shapes and the host — so the
MFU is an input: by default what peftbench's fast loop reached on the 8B shape on one H200."""

from __future__ import annotations

from peftbench.estimate.architecture import Architecture
from peftbench.estimate.setting import Setting

PEAK_TFLOPS = 989.0  # dense bf16 of an H100/H200 SXM (benchmarks/train_throughput.py's default by GPU name)

# MFU of the fast loop on shape:llama-3.1-8b, batch 2 x 2048, pure bf16, one H200:
# results/throughput-gpu/8b-all.json (no checkpointing) and 8b-all-ckpt.json (checkpointing)
MEASURED_MFU = {("full", False): 0.492, ("full", True): 0.345, ("lora", False): 0.485, ("lora", True): 0.298,
                ("qlora", False): 0.438, ("qlora", True): 0.302, ("adapter", False): 0.581, ("adapter", True): 0.407}


def flops_per_token(arch: Architecture, setting: Setting, trainable: int) -> float:
    """Model FLOPs a trained token costs, as benchmarks/train_throughput.py counts them: 6 per weight that
    multiplies a token (every weight but the input embedding's lookup) for full fine-tuning; 4 per frozen one
    (forward, and backward to the activations) + 6 per trainable one otherwise; plus attention's 12·L·h·s.
    Recomputation under checkpointing is not counted (it lowers the MFU instead)."""
    matmul = arch.total_params() - arch.embedding_params() + (arch.embedding_params() if arch.tied else 0)
    weights = 6 * matmul if setting.method == "full" else 4 * matmul + 6 * trainable
    return weights + 12 * arch.layers * arch.hidden * setting.seq_len


def default_mfu(setting: Setting) -> float:
    return MEASURED_MFU[setting.method, setting.activation_checkpointing]


def tokens_per_second(arch: Architecture, setting: Setting, trainable: int, mfu: float | None = None,
                      peak_tflops: float = PEAK_TFLOPS) -> float:
    """Tokens a second on one GPU at ``mfu`` (FSDP's communication assumed hidden behind compute)."""
    return (mfu or default_mfu(setting)) * peak_tflops * 1e12 / flops_per_token(arch, setting, trainable)
