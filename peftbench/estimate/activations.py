"""What one decoder block saves for its backward pass, per token, and what the loss and one block's
backward hold on top, in bytes (bf16 compute: 2 bytes an element; fp32 statistics: 4).

The inventory follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4.1: 34·s·b·h + 5·a·s²·b bytes a GPT layer), adapted to what peftbench trains: a Llama
block (RMSNorm, no dropout in the base, grouped-query attention, SwiGLU MLP of width i) under flash/SDPA
attention, which keeps q, k, v, its output and an fp32 log-sum-exp per head instead of the a·s² scores.
Each term below is a tensor autograd keeps; they were listed from the saved tensors of a Llama block
(eager: autograd's saved-tensor hooks; compiled: the forward graph torch.compile's min-cut partitioner
returns) and docs/estimate.md lists them one by one. With h the hidden size, q the query width (heads x
head_dim), kv the key/value width, i the MLP width, a the heads:

- full fine-tuning, eager: per RMSNorm its fp32 input (4h), normalised output before and after the weight
  (2h + 2h); q after RoPE, k, v, the attention output (2q + 2kv + 2kv + 2q); gate, silu(gate), up and
  their product (4 x 2i): 16h + 4q + 4kv + 8i.
- full, compiled (peftbench's fast loop): the block input, both norm outputs, the attention output
  projection's output (4 x 2h), q, k, v, attention output, gate, up, product: 8h + 4q + 4kv + 6i.
- a frozen base (LoRA, QLoRA, adapters) saves only what gradients of the activations need: eager 8h (the
  norms' fp32 inputs) + 4q + 4kv + 6i; compiled 4h (block input, attention residual) + 4q + 4kv + 4i.
- each LoRA-adapted linear of input width d adds its dropout mask (d bytes, when dropout > 0), the
  dropped input in bf16 (2d) and the rank-r down-projection (2r); each bottleneck adapter of width m its
  input (2h) and its bottleneck (2m eager, 4m compiled).
- always: an fp32 log-sum-exp per head (4a) and two fp32 RMS statistics (8).
"""

from __future__ import annotations

from peftbench.estimate.architecture import Architecture
from peftbench.estimate.parameters import BF16, FP32, adapters_per_block, bottleneck, lora_targets
from peftbench.estimate.setting import Setting

LOGITS_PER_CHUNK = 2**26  # peftbench.train.loss.LOGITS_PER_CHUNK (a test keeps them equal)


def block_bytes_per_token(arch: Architecture, setting: Setting) -> float:
    """Bytes one block saves for backward, per token of the micro-batch."""
    h, q, kv, i = arch.hidden, arch.q_width, arch.kv_width, arch.intermediate
    compiled = setting.compiled
    attention = 4 * q + 4 * kv + FP32 * arch.heads + 2 * FP32  # q, k, v, output; log-sum-exp; RMS statistics
    attention += fp32_stream_bytes(arch, setting)
    if setting.method == "full":
        return attention + ((8 * h + 6 * i) if compiled else (16 * h + 8 * i))
    frozen = attention + ((4 * h + 4 * i) if compiled else (8 * h + 6 * i))
    if setting.method == "adapter":
        per_adapter = 2 * h + (4 if compiled else 2) * bottleneck(arch, setting)
        return frozen + adapters_per_block(setting) * per_adapter
    mask = 1 if setting.lora_dropout > 0 else 0
    return frozen + sum((mask + BF16) * d_in + BF16 * setting.lora_rank
                        for d_in, _ in lora_targets(arch, setting).values())


def fp32_stream_bytes(arch: Architecture, setting: Setting) -> float:
    """What fp32 weights on one GPU add (the residual stream in fp32, linear inputs cast to bf16 per layer):
    compiled, the block input in fp32 (+2h); eager full fine-tuning, the norms' outputs before their weight in
    fp32 (+2 x 2h) and a bf16 cast of its input for each of q, k, v and gate, up (+3 x 2h); eager with a frozen
    base nothing (the norms' fp32 inputs are saved either way). QLoRA: bitsandbytes' 4-bit layers return their
    input's dtype, so the MLP's gate and up (and eager, silu(gate)) come out fp32: +2 bytes each (2i or 3i)."""
    if not setting.fp32_stream:
        return 0
    h, i = arch.hidden, arch.intermediate
    four_bit_mlp = (2 if setting.compiled else 3) * BF16 * i if setting.method == "qlora" else 0
    if setting.compiled:
        return BF16 * h + four_bit_mlp
    return (10 * h if setting.method == "full" else 0) + four_bit_mlp


def checkpoint_bytes_per_token(arch: Architecture, setting: Setting) -> float:
    """With activation checkpointing a block keeps only its input (bf16, or fp32 with fp32 weights on one GPU)
    until its backward recomputes it."""
    return (FP32 if setting.fp32_stream else BF16) * arch.hidden


def backward_work_bytes_per_token(arch: Architecture) -> float:
    """What one block's backward holds beyond the saved tensors: the gradients of its MLP's gate, up and
    product (3 x 2i) and two of its hidden-size gradients (2 x 2h)."""
    return 3 * BF16 * arch.intermediate + 2 * BF16 * arch.hidden


def labelled_tokens(setting: Setting) -> int:
    """Positions the loss reads: every position but each row's last (the upper bound: random-token rows)."""
    return setting.batch_size * (setting.seq_len - 1)


def chunk_rows(vocab: int) -> int:
    """peftbench.train.loss.chunk_rows: tokens per chunk of the chunked loss."""
    return max(64, LOGITS_PER_CHUNK // max(1, vocab))


def loss_bytes(arch: Architecture, setting: Setting, head_trains: bool) -> float:
    """The loss's peak on top of the saved activations.

    Chunked (peftbench.train.loss.linear_cross_entropy): one chunk's bf16 logits and bf16 gradient, and its fp32
    softmax unless the compiled kernel fuses it (it does when the blocks are compiled); the bf16 gradient of the
    hidden states; for a trainable head its fp32 gradient, held from the forward pass to the backward one, plus
    the fp32 product and bf16 cast that backward makes of it (4 + 4 + 2 bytes a head weight). Full logits (the
    naive loop): their fp32 log-softmax, its incoming gradient and its outgoing one (3 x 4 bytes a logit)."""
    n = labelled_tokens(setting)
    if not setting.chunked_loss:
        return 3 * FP32 * n * arch.vocab
    per_logit = 2 * BF16 + (0 if setting.compiled else FP32)
    chunk = per_logit * min(n, chunk_rows(arch.vocab)) * arch.vocab
    head = (FP32 + FP32 + BF16) * arch.vocab * arch.hidden if head_trains else 0
    hidden = (2 if setting.fp32_stream else 1) * BF16 * n * arch.hidden  # d hidden; the fp32 hidden's bf16 cast
    return chunk + hidden + head
