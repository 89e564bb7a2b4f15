"""Peak memory of FSDP2 training as peftbench.train.distributed shards it, for the check of `peftbench estimate
--fsdp --naive` on one GPU (results/estimate/README.md).

It trains as peftbench.train.distributed_check does (peftbench run --nproc shards the same way): shard_model
(fully_shard per block, the embeddings and the head as groups of their own, bf16 compute with fp32 reduction,
the weights fp32), fused AdamW, eager blocks, the unchunked loss on every position. On one rank nothing is
divided, but the rest is FSDP's own: fp32 shards, one block gathered in bf16 at a time, gradients reduced in fp32.
    usage: torchrun --nproc-per-node 1 fsdp_one_rank.py MODEL METHOD BATCH SEQ [ckpt] [offload] > out.json
    (METHOD: full, lora; offload: FSDP's CPU offload of the shards, their gradients and AdamW's moments)
"""

import json
import sys
import time

import torch

from peftbench.models.shape import shape_model
from peftbench.train.distributed import ShardPolicy, join_world, shard_model
from peftbench.train.loss import answer_loss


def main() -> None:
    name, method, batch, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ckpt, offload = "ckpt" in sys.argv[5:], "offload" in sys.argv[5:]
    world = join_world()
    model = shape_model(name.removeprefix("shape:"), device=world.device, dtype=torch.float32)
    if method == "lora":
        import peft
        from peftbench_plugins.lora.config import LoraConfig

        model = peft.get_peft_model(model, LoraConfig().to_peft())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if ckpt:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params, shard = shard_model(model, trainable, world, ShardPolicy(cpu_offload=offload))
    n_trainable = sum(p.numel() for _, p in trainable)
    del trainable  # it holds the unsharded originals: kept, they add a full copy of the trainable weights
    opt = torch.optim.AdamW(params, lr=1e-5, fused=world.device == "cuda" and not offload)  # (offload: steps on the CPU)
    g = torch.Generator().manual_seed(0)
    if world.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, steps_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ids = torch.randint(10, base.config.vocab_size - 1, (batch, seq), generator=g).to(world.device)
        loss = answer_loss(model, {"input_ids": ids, "labels": ids}, chunked=False, naive=shard["whole_forward"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))  # (a sync: the step's time is complete)
        steps_s.append(round(time.perf_counter() - t0, 3))
    cuda = world.device == "cuda"
    print(json.dumps({"model": name, "method": method, "batch_size": batch, "seq_len": seq,
                      "activation_checkpointing": ckpt, "cpu_offload": offload, "world_size": world.size, "shard": shard,
                      "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                      "trainable": n_trainable, "losses": losses, "step_s": steps_s,
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else None},
                     default=str))


if __name__ == "__main__":
    main()
