"""Per-GPU memory of one training step, phase by phase, and whether it fits.

A step's memory peaks at one of three moments; the estimate is the largest:

- **forward end**: what stays (weights, optimizer moments), the bf16 copies compute uses, every block's saved
  activations and the loss's working memory;
- **backward, top block**: the same without the loss, plus that block's backward work (and, with activation
  checkpointing, its recomputed activations);
- **optimizer step**: what stays plus every gradient (the loop frees gradients after each step and
  activations during backward).

With ``gpus`` > 1 (or ``fsdp``) the model is FSDP-sharded as ``peftbench.train.distributed.shard_model`` does
(FSDP2, a bf16 ``MixedPrecisionPolicy`` with fp32 reduction): weights, gradients and moments are divided by the
world size; the LM head is gathered in bf16 for the loss, one block's weights at a time (the last one stays
gathered for backward), and in backward that block's unsharded gradients (bf16, and the fp32 copy the
reduce-scatter sends) exist until reduced. CPU offload keeps the shards, their gradients and the moments in
host memory.
What the allocator reserves beyond its peak, and the CUDA context, are not in the phases: ``fits`` adds the
context (``CUDA_CONTEXT_BYTES``) to the peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peftbench.estimate import activations as act
from peftbench.estimate.architecture import Architecture
from peftbench.estimate.parameters import BF16, FP32, stored
from peftbench.estimate.setting import Setting

# What an H200 process held outside PyTorch's allocator (context, cuBLAS/cuDNN kernels) with a model on it:
# gpu_others_bytes = 812,449,792 in results/reference/8b-shape/latency/*.json (measured alone)
CUDA_CONTEXT_BYTES = 812_449_792


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU. The parts are what each kind of memory reaches; ``peak`` is the largest phase's sum."""

    model: str
    setting: Setting
    weights: float  # stored weights (frozen base + trainable), this GPU's share
    compute_copies: float  # bf16 casts for compute (single GPU, fp32 weights) or FSDP's gathered groups
    gradients: float
    optimizer: float  # on the GPU (0 when offloaded)
    host: float  # in host memory with CPU offload: the sharded weights, gradients and moments
    activations: float  # every block's saved tensors (checkpoints only, with checkpointing)
    backward_work: float  # one block's backward (and its recomputation, with checkpointing)
    loss: float
    phases: dict[str, float]
    trainable_params: int

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    @property
    def with_context(self) -> float:
        return self.peak + CUDA_CONTEXT_BYTES

    @property
    def fits(self) -> bool:
        return self.with_context <= self.setting.gpu_memory

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "setting"}
        return {**out, "setting": asdict(self.setting), "peak": self.peak, "peak_phase": self.peak_phase,
                "cuda_context": CUDA_CONTEXT_BYTES, "with_context": self.with_context, "fits": self.fits}


def estimate(arch: Architecture, setting: Setting) -> Estimate:
    """Bytes per GPU of one training step of ``setting`` on ``arch``, phase by phase."""
    s = stored(arch, setting)
    n = setting.gpus
    share = 1 / n  # FSDP's shard; 1 on one GPU
    weights, gradients, optimizer = (s.frozen + s.weights) * share, s.grads * share, s.optimizer * share
    host = 0.0
    if setting.optimizer_offload:  # FSDP's CPUOffloadPolicy: the shards live in host memory, the step runs there
        host, weights, gradients, optimizer = weights + gradients + optimizer, 0.0, 0.0, 0.0
    if setting.sharded:  # FSDP: the head gathered for the loss, one block at a time, that block's gradients
        gathered = s.root_compute + s.block_compute
        block_grads = s.block_trainable * (BF16 + FP32)  # bf16, and the fp32 copy reduce-scatter sends
    else:
        gathered, block_grads = s.compute_copies, 0.0

    t = setting.tokens
    saved = (act.checkpoint_bytes_per_token(arch, setting) if setting.activation_checkpointing
             else act.block_bytes_per_token(arch, setting))
    activations = arch.layers * saved * t
    work = act.backward_work_bytes_per_token(arch) * t + s.dequantized
    if setting.activation_checkpointing:
        work += act.block_bytes_per_token(arch, setting) * t  # the top block, recomputed
    loss = act.loss_bytes(arch, setting, s.head_trainable) + s.dequantized

    stays = weights + optimizer
    phases = {"forward end": stays + gathered + activations + loss,
              "backward, top block": stays + gathered + activations + work + block_grads,
              "optimizer step": stays + gradients}  # gathered weights and activations are freed by then
    return Estimate(model=arch.name, setting=setting, weights=weights, compute_copies=gathered,
                    gradients=gradients + block_grads, optimizer=optimizer, host=host, activations=activations,
                    backward_work=work, loss=loss, phases=phases,
                    trainable_params=s.trainable_params)
