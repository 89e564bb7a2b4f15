"""The training loop's options, the same for every method: budget, optimizer, schedule, loop."""

from __future__ import annotations

from dataclasses import dataclass

from peftbench.api.options import DTYPES, check_choices, option
from peftbench.errors import ConfigError

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw")


@dataclass
class TrainConfig:
    """Options shared by every method: the same loop, data and budget for all."""

    steps: int = option("optimizer steps to train (the budget); the task sets a default per device", default=0)
    epochs: float = option("passes over the training split (0: use steps or max_tokens)", default=0.0)
    max_tokens: int = option("stop once this many training tokens were seen (0: no token budget)", default=0)
    batch_size: int = option("examples per micro-batch", default=8)
    grad_accum: int = option("micro-batches per optimizer step (gradient accumulation)", default=1)
    lr: float = option("peak learning rate (0: the task's per-method value, else the method's default)", default=0.0)
    warmup_ratio: float = option("fraction of steps with linear learning-rate warm-up", default=0.1)
    min_lr_ratio: float = option("cosine decay ends at lr * min_lr_ratio", default=0.1)
    weight_decay: float = option("AdamW weight decay", default=0.0)
    max_grad_norm: float = option("gradient clipping norm (0: off)", default=1.0)
    max_length: int = option("truncate training examples to this many tokens (from the left)", default=512)
    dtype: str = option("'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fp32' or 'bf16'", default="auto")
    log_every: int = option("record the loss every N steps", default=1)
    loop: str = option("'fast' (the optimisations below, as set) or 'naive' (the plain loop: padded batches, the "
                       "model's own full-logit loss, no compile; overrides padding_free, chunked_loss, compile and "
                       "bucketing)",
                       default="fast")
    padding_free: bool = option("pack each micro-batch's examples into as few rows as fit (no attention across "
                                "examples), so padding is not computed", default=True)
    chunked_loss: bool = option("cross-entropy through the LM head a chunk of tokens at a time: no full "
                                "(tokens x vocabulary) logits tensor", default=True)
    compile: str = option("torch.compile of each repeated transformer block: 'auto' (on CUDA, for runs long enough "
                          "to pay back the compilation: 250+ optimizer steps with bucketing, 500+ without), 'on', "
                          "'off'", default="auto")
    compile_mode: str = option("how compiled blocks run: 'default'; 'reduce-overhead' (CUDA graphs: each block's "
                               "kernels replayed with one launch; for steps bound by launching kernels, e.g. a small "
                               "model; needs batches of few fixed shapes (bucketing, or examples of one length) on "
                               "CUDA, else it is not used and the run's notes say so); or 'auto' (reduce-overhead "
                               "where it can work, else default)", default="default")
    bucketing: str = option("padding-free micro-batches in a few fixed shapes (rows x width, chosen from the run's own "
                            "batches; padding kept out of the loss and of attention), so compiled blocks run one "
                            "static graph per shape and CUDA graphs can replay them: 'auto' (on where blocks are "
                            "compiled on CUDA), 'on', 'off'. Needs padding_free", default="auto")
    gradient_checkpointing: bool = option("recompute each block's activations in the backward pass (less memory, "
                                          "~1/3 more compute)", default=False)
    optimizer: str = option("'adamw' (torch; fused on CUDA), 'adamw_8bit', 'paged_adamw_8bit' or 'paged_adamw' "
                            "(bitsandbytes)", default="adamw")
    fsdp_precision: str = option("several processes (torchrun, --nproc): the sharded model's compute dtype: 'auto' "
                                 "(bf16 with fp32 gradient reduction on CUDA, fp32 on the CPU), 'fp32' or 'bf16'",
                                 default="auto")
    fsdp_cpu_offload: bool = option("several processes: keep the shards, their gradients and the optimizer state in "
                                    "host memory (FSDP's CPU offload)", default=False)
    fsdp_reshard_after_forward: bool = option("several processes: free each block's gathered weights after its "
                                              "forward and gather them again for the backward (less memory)",
                                              default=True)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():  # nan passes every comparison below, inf every lower bound
            if isinstance(value, float) and not -float("inf") < value < float("inf"):
                raise ConfigError(f"train option {name!r} must be a finite number, got {value!r}.")
        for name in ("batch_size", "grad_accum", "max_length", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train option {name!r} must be >= 1, got {getattr(self, name)!r}.")
        for name in ("steps", "epochs", "max_tokens", "lr", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train option {name!r} must be >= 0, got {getattr(self, name)!r}.")
        for name in ("warmup_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train option {name!r} must be between 0 and 1, got {getattr(self, name)!r}.")
        budgets = [n for n in ("steps", "epochs", "max_tokens") if getattr(self, n)]
        if len(budgets) > 1:
            raise ConfigError(f"train options {' and '.join(budgets)} are both set; the budget is one of steps, epochs "
                              "or max_tokens.")
        check_choices("train option", {name: (getattr(self, name), valid) for name, valid in (
            ("dtype", DTYPES), ("loop", ("fast", "naive")), ("compile", ("auto", "on", "off")),
            ("compile_mode", ("default", "reduce-overhead", "auto")), ("bucketing", ("auto", "on", "off")),
            ("optimizer", OPTIMIZERS), ("fsdp_precision", ("auto", "fp32", "bf16")))})
