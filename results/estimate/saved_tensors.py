"""The tensors one Llama block saves for its backward pass, listed, next to the estimate's formula for them.

How the activation terms of peftbench/estimate/activations.py were found (docs/estimate.md): a one-block Llama
(h 256, MLP 704, 8 heads of 32, 2 key/value heads) under bf16 autocast on the CPU, the method applied as
peftbench applies it; eager: every tensor autograd's saved-tensor hooks see (weights and the shared RoPE tables
left out); compiled: the tensors the forward graph of torch's min-cut partitioner (what inductor uses) returns
for backward (the RoPE tables, shared by all blocks, left out). Bytes per token, to compare with
``block_bytes_per_token``.
    usage: python results/estimate/saved_tensors.py full|lora|adapter compiled|eager [bf16|fp32] [houlsby|pfeiffer|parallel]
Eager LoRA differs on the CPU: its dropout keeps a mask in the input's dtype where CUDA's keeps a bool (1 byte).
"""

import sys

import torch
import torch._inductor.config as inductor_config
from functorch.compile import min_cut_rematerialization_partition
from torch._functorch.aot_autograd import aot_module_simplified
from transformers import LlamaConfig, LlamaForCausalLM

from peftbench.estimate.activations import block_bytes_per_token
from peftbench.estimate.architecture import Architecture
from peftbench.estimate.setting import Setting

H, MLP, HEADS, KV_HEADS, HEAD_DIM = 256, 704, 8, 2, 32
BATCH, SEQ = 2, 48


def one_block(method: str, dtype: torch.dtype, placement: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = LlamaConfig(vocab_size=1000, hidden_size=H, intermediate_size=MLP, num_hidden_layers=1,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    if method == "lora":
        import peft
        from peftbench_plugins.lora.config import LoraConfig

        model = peft.get_peft_model(model, LoraConfig().to_peft())
    elif method == "adapter":
        from peftbench_plugins.adapter.config import AdapterConfig
        from peftbench_plugins.adapter.method import AdapterMethod

        model = AdapterMethod().prepare(model, AdapterConfig(placement=placement))
    model.train()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model, base


def saved_compiled(block, x, pe, pos) -> list[tuple[str, tuple, str, int]]:
    saved = []

    def forward_graph(gm, _inputs):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        for node in outputs[1:]:  # the block's output first, then what backward needs
            value = node.meta.get("val")
            shape = tuple(getattr(value, "shape", ()))
            if shape == (BATCH, SEQ, HEAD_DIM):
                continue  # the RoPE tables: one pair for all blocks
            if SEQ in shape or BATCH * SEQ in shape:
                saved.append((node.name, shape, str(value.dtype), value.numel() * value.element_size()))
        return gm

    def backend(gm, inputs):
        return aot_module_simplified(gm, inputs, fw_compiler=forward_graph, bw_compiler=lambda g, _: g,
                                     partition_fn=min_cut_rematerialization_partition)

    block.compile(backend=backend)
    block(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
    return saved


def saved_eager(model, block, x, pe, pos) -> list[tuple[str, tuple, str, int]]:
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {t.untyped_storage().data_ptr() for t in pe}
    seen = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in skip and (SEQ in t.shape or BATCH * SEQ in t.shape):
            seen[key] = ("saved", tuple(t.shape), str(t.dtype), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
    return list(seen.values())


def compare(method: str, mode: str, weights: str = "bf16", placement: str = "houlsby", show: bool = False
            ) -> tuple[float, float]:
    """(bytes a token the block saves, as listed; the estimate's formula for them)."""
    dtype = torch.float32 if weights == "fp32" else torch.bfloat16
    model, base = one_block(method, dtype, placement)
    block = base.model.layers[0]
    x = torch.randn(BATCH, SEQ, H, dtype=dtype, requires_grad=True)
    pos = torch.arange(SEQ)[None].expand(BATCH, SEQ)
    pe = base.model.rotary_emb(x, pos)
    with inductor_config.patch(emulate_precision_casts=True), torch.autocast("cpu", dtype=torch.bfloat16):
        saved = saved_compiled(block, x, pe, pos) if mode == "compiled" else saved_eager(model, block, x, pe, pos)
    tokens = BATCH * SEQ
    for name, shape, dt, nbytes in saved if show else ():
        print(f"{name:14s} {str(shape):18s} {dt:15s} {nbytes / tokens:8.1f} bytes a token")
    listed = sum(n for *_, n in saved)
    sdpa = [n for name, shape, _, n in saved if name.startswith("detach") and shape == (BATCH, HEADS, SEQ, HEAD_DIM)]
    o_input = any(name.startswith("view") and shape == (BATCH * SEQ, HEADS * HEAD_DIM) for name, shape, *_ in saved)
    if mode == "compiled" and method == "full" and sdpa and o_input:
        # flash attention writes its output in (batch, seq, heads, dim) order on CUDA, so the attention
        # projection's input (HF's transpose + reshape of it) is the same storage: counted once
        if show:
            print(f"of which {sdpa[0] / tokens:.0f} bytes a token are SDPA's output a second time (one storage on CUDA)")
        listed -= sdpa[0]
    arch = Architecture("probe", H, MLP, 1, HEADS, KV_HEADS, HEAD_DIM, 1000, False)
    setting = Setting(method, compiled=mode == "compiled", master_weights=weights, adapter_placement=placement)
    return listed / tokens, block_bytes_per_token(arch, setting)


def main() -> None:
    listed, formula = compare(*sys.argv[1:5], show=True)
    print(f"listed: {listed:.0f} bytes a token; the estimate's formula: {formula:.0f}")


if __name__ == "__main__":
    main()
