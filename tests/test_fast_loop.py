"""The fast training loop: every optimisation that also runs on CPU computes what the plain loop computes."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from peftbench.errors import ConfigError
from peftbench.train import batching, compiling, plan
from peftbench.train import loop as training
from peftbench.train.batching import TrainData, collate, collate_packed, pack_rows
from peftbench.train.config import TrainConfig
from peftbench.train.loop import train
from peftbench.train.loss import answer_loss, decoder_and_head, linear_cross_entropy


def _tiny():
    from peftbench.models.sources import load_model

    torch.manual_seed(0)
    return load_model("tiny:llama", device="cpu")[0]


def _data(n=24, seed=0, lo=4, hi=30):
    g = torch.Generator().manual_seed(seed)
    seqs, starts = [], []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        seqs.append(torch.randint(3, 90, (length,), generator=g).tolist())
        starts.append(int(torch.randint(1, length, (1,), generator=g)))
    return TrainData(seqs, starts, pad_id=0)


# ---- chunked cross-entropy -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_loss_and_gradients_equal_the_plain_ones(chunk):
    torch.manual_seed(1)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    y = torch.randint(0, 300, (50,))
    ref = F.cross_entropy(F.linear(h, w), y)
    gh, gw = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, y, chunk=chunk)
    ch, cw = torch.autograd.grad(out, (h, w))
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(ch, gh, atol=1e-6) and torch.allclose(cw, gw, atol=1e-6)


def test_chunked_loss_scales_with_the_upstream_gradient_and_skips_a_frozen_head():
    torch.manual_seed(2)
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(40, 8)  # frozen: no gradient is computed or returned for it
    y = torch.randint(0, 40, (10,))
    (g,) = torch.autograd.grad(3.0 * linear_cross_entropy(h, w, y, chunk=3), (h,))
    (ref,) = torch.autograd.grad(3.0 * F.cross_entropy(h @ w.t(), y), (h,))
    assert torch.allclose(g, ref, atol=1e-6)


# ---- padding-free packing --------------------------------------------------------------------------------

def test_pack_rows_first_fit_decreasing_within_the_longest_length():
    rows = pack_rows([10, 3, 7, 4, 6, 2])
    assert sorted(sum(rows, [])) == [0, 1, 2, 3, 4, 5]
    assert all(sum([10, 3, 7, 4, 6, 2][j] for j in row) <= 10 for row in rows)
    assert len(rows) == 4  # 10 | 7+3 | 6+4 | 2: as few rows as first-fit decreasing finds
    assert rows[0] == [0]


def test_packed_batch_holds_the_same_tokens_and_labels_with_restarting_positions():
    data = TrainData([[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]], [2, 1, 1], pad_id=0)
    b = collate_packed(data, [0, 1, 2])
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [13, 14, 15, 11, 12, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]]  # the pad continues the last one
    assert b["labels"].tolist() == [[-100, -100, 7, 8, 9, 10], [-100, 14, 15, -100, 12, -100]]
    assert int(b["num_tokens"]) == 11 and "attention_mask" not in b
    # nothing to pack (each example fills its own row): no position ids, so the model's mask builder does
    # not inspect them on the device every forward pass; the batch is then the plain causal one
    alone = collate_packed(TrainData([[5, 6, 7], [8, 9, 10], [11, 12]], [1, 1, 1], pad_id=0), [0, 1, 2])
    assert "position_ids" not in alone and alone["input_ids"].tolist() == [[5, 6, 7], [8, 9, 10], [11, 12, 0]]
    assert alone["labels"].tolist() == [[-100, 6, 7], [-100, 9, 10], [-100, 12, -100]]


def test_no_attention_across_packed_examples():
    """Each example's logits in a packed row equal its logits alone: nothing leaks across the boundary."""
    model = _tiny().eval()
    data = _data(6, seed=3)
    packed = collate_packed(data, list(range(6)))
    rows = pack_rows([len(q) for q in data.input_ids])
    assert len(rows) < 6 and max(len(r) for r in rows) >= 2  # something was packed behind something else
    checked = 0
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        for r, row in enumerate(rows):
            off = 0
            for j in row:
                seq = torch.tensor([data.input_ids[j]])
                assert packed["input_ids"][r, off:off + seq.shape[1]].tolist() == seq[0].tolist()
                alone = model(input_ids=seq, use_cache=False).logits[0]
                assert torch.allclose(logits[r, off:off + seq.shape[1]], alone, atol=1e-5)
                off += seq.shape[1]
                checked += 1
    assert checked == 6


@pytest.mark.parametrize("chunked", [False, True])
def test_packed_and_chunked_loss_and_gradients_equal_the_padded_plain_ones(chunked):
    model = _tiny()
    data = _data(8, seed=4)
    idx = list(range(8))
    ref = answer_loss(model, collate(data, idx), naive=True)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    packed = collate_packed(data, idx)
    out = answer_loss(model, packed, chunked=chunked)
    grads = torch.autograd.grad(out, list(model.parameters()))
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
    # the labelled positions found on the host (what the loop passes: no sync on the device) select the same
    located = answer_loss(model, {**packed, **batching.label_positions(packed["labels"])}, chunked=chunked)
    assert located.item() == out.item()
    for g, r in zip(torch.autograd.grad(located, list(model.parameters())), grads, strict=True):
        assert torch.equal(g, r)


def test_the_chunked_loss_makes_no_tensor_from_a_host_number(monkeypatch):
    """``torch.tensor(x, device=gpu)`` copies from the host and waits for everything queued on the GPU: made in
    the loss, right after the forward pass was queued, it serialised every step of the fast loop (H200, third
    pass: ~10 ms a step behind compiled blocks alone). The chunked loss builds its constants on the device."""
    made = []
    real = torch.tensor

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", spy)
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    y = torch.randint(0, 30, (10,))
    linear_cross_entropy(h, w, y, chunk=4).backward()
    assert made == []
    assert h.grad is not None and w.grad is not None


def _sync_sites_of_a_step(naive: bool, chunked: bool) -> list[str]:
    """Where forward, loss and backward of one packed batch wait for the GPU, in torch's sync-debug mode:
    the ``file:line`` of each synchronising call."""
    import warnings

    model = _tiny().to("cuda")
    data = _data(8, seed=4, lo=20, hi=21)
    packed = collate_packed(data, list(range(8)))
    batch = {k: v.to("cuda", non_blocking=True) for k, v in
             {**packed, **batching.label_positions(packed["labels"])}.items() if k != "num_tokens"}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = answer_loss(model, batch, chunked=chunked, naive=naive)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(loss.item())
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchronizing CUDA operation" in str(w.message)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the device machine)")
@pytest.mark.parametrize("chunked", [False, True])
def test_a_fast_step_does_not_sync_the_device_between_its_batch_and_its_loss(chunked):
    """From the moved batch to the gradients, the fast loop's own code (the loss, the label positions) queues
    work without waiting for the GPU. One sync is left, in transformers: as the forward starts, its attention
    mask code checks on the device whether the rows are packed (or padded) to choose SDPA's causal path
    (masking_utils; measured on the H200 2026-11-30 in every variant, naive included). It waits only for the
    previous step, which the loop's once-per-step loss read has already waited for. The naive loop's own
    syncs (boolean-mask indexing of the labels, and its backward) are the control: the check sees them."""
    fast = _sync_sites_of_a_step(naive=False, chunked=chunked)
    assert not [s for s in fast if "peftbench" in s or "autograd" in s], fast
    assert len(fast) <= 1 and all("masking_utils" in s for s in fast), fast
    naive = _sync_sites_of_a_step(naive=True, chunked=False)
    assert any("peftbench" in s and "loss.py" in s for s in naive), naive


def test_label_positions_index_the_hidden_states_that_predict_a_label():
    labels = torch.tensor([[-100, 7, 8, -100], [-100, -100, 5, 6]])
    pos = batching.label_positions(labels)
    assert pos["label_index"].tolist() == [0, 1, 5, 6]  # row * 4 + t, where labels[row, t + 1] is set
    assert pos["label_targets"].tolist() == [7, 8, 5, 6]


# ---- the loop as a whole ---------------------------------------------------------------------------------

def _run(cfg, model=None, data=None):
    model = model or _tiny()
    data = data or _data(32, seed=5)
    return train(model, list(model.parameters()), data, cfg, seed=0, device="cpu"), model


def _eager_and_compiled(steps):
    """The same weights trained ``steps`` steps uncompiled and with compile=on: (eager result, compiled result,
    the compiled run's model)."""
    base = _tiny()
    ref, _ = _run(TrainConfig(steps=steps, batch_size=8, lr=3e-3), copy.deepcopy(base))
    res, model = _run(TrainConfig(steps=steps, batch_size=8, lr=3e-3, compile="on"), copy.deepcopy(base))
    return ref, res, model


def test_fast_loop_follows_the_naive_loop_step_for_step():
    base = _tiny()
    naive, _ = _run(TrainConfig(steps=12, batch_size=8, lr=3e-3, loop="naive"), copy.deepcopy(base))
    fast, _ = _run(TrainConfig(steps=12, batch_size=8, lr=3e-3), copy.deepcopy(base))
    assert naive.loop["padding_free"] is False and naive.loop["chunked_loss"] is False
    assert fast.loop["padding_free"] is True and fast.loop["chunked_loss"] is True
    assert fast.loop["compile"] == "off"  # auto: off on CPU
    for (s1, a), (s2, b) in zip(naive.losses, fast.losses, strict=True):
        assert s1 == s2 and b == pytest.approx(a, rel=1e-4)
    assert fast.tokens == naive.tokens  # real tokens; the padding is not counted
    assert 0 < naive.loop["padding_fraction"] and fast.loop["padding_fraction"] < naive.loop["padding_fraction"]


def test_gradient_accumulation_and_checkpointing_keep_the_loss_curve():
    base = _tiny()
    ref, _ = _run(TrainConfig(steps=6, batch_size=8, lr=3e-3), copy.deepcopy(base))
    ckpt, model = _run(TrainConfig(steps=6, batch_size=8, lr=3e-3, gradient_checkpointing=True), copy.deepcopy(base))
    assert ckpt.loop["gradient_checkpointing"] is True
    assert [b for _, b in ckpt.losses] == pytest.approx([a for _, a in ref.losses], rel=1e-5)
    assert not training._is_checkpointing(model)  # switched off again after training
    accum, _ = _run(TrainConfig(steps=3, batch_size=4, grad_accum=2, lr=3e-3), copy.deepcopy(base))
    assert accum.steps == 3 and accum.examples == 24


def test_compiled_blocks_train_like_eager_ones_and_are_uncompiled_after(monkeypatch):
    monkeypatch.setattr(compiling, "COMPILE_BACKEND", "aot_eager")  # dynamo + autograd capture, no C++ build
    ref, comp, model = _eager_and_compiled(4)
    assert comp.loop["compile"].startswith("blocks x")
    assert [b for _, b in comp.losses] == pytest.approx([a for _, a in ref.losses], rel=1e-4)
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


def test_a_block_that_fails_to_compile_is_recorded_and_trained_uncompiled(monkeypatch):
    def broken(blocks, dynamic=False, mode="default"):
        for block in blocks:
            block._compiled_call_impl = _raise

    def _raise(*a, **k):
        raise RuntimeError("inductor: no kernel for this op")

    monkeypatch.setattr(compiling, "compile_blocks", broken)
    ref, res, _ = _eager_and_compiled(3)
    assert res.loop["compile"].startswith("failed at step 1, off: RuntimeError: inductor")
    assert [b for _, b in res.losses] == pytest.approx([a for _, a in ref.losses], rel=1e-5)


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw"])
def test_bitsandbytes_optimizers_train(name):
    res, _ = _run(TrainConfig(steps=20, batch_size=8, lr=3e-3, optimizer=name))
    assert res.loop["optimizer"].startswith("bitsandbytes")
    assert res.losses[-1][1] < 0.8 * res.losses[0][1]


@pytest.mark.parametrize("key,value,match", [
    ("loop", "fastest", "'loop' must be one of fast, naive"),
    ("compile", "yes", "'compile' must be one of auto, on, off"),
    ("optimizer", "adam8bit", "Did you mean 'adamw_8bit'"),
    ("compile_mode", "reduce_overhead", "Did you mean 'reduce-overhead'"),
])
def test_bad_loop_options_are_clear_errors(key, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{key: value})


def test_a_model_whose_attention_ignores_packing_trains_padded(monkeypatch):
    """An architecture that builds its own (plain causal) mask would let packed examples see each other: the
    loop checks the model itself and falls back to padded batches, saying why."""
    model = _tiny()
    assert plan.packing_leak(model, model.model) is None  # the llama mask honours packed position ids
    from transformers import masking_utils

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    assert "change by" in plan.packing_leak(model, model.model)
    res, _ = _run(TrainConfig(steps=2, batch_size=8, lr=3e-3), model)
    assert res.loop["padding_free"] is False
    assert any("does not honour packed position ids" in n for n in res.loop["notes"])


def test_compile_auto_compiles_only_runs_long_enough_to_pay_it_back():
    model = _tiny()
    short = plan.plan_loop(model, TrainConfig(bucketing="off"), "cuda", steps=plan.COMPILE_MIN_STEPS - 1)
    assert short["compile"] == "off" and short["_blocks"] is None
    assert any(f"this one plans {plan.COMPILE_MIN_STEPS - 1}" in n for n in short["notes"])
    long = plan.plan_loop(model, TrainConfig(bucketing="off"), "cuda", steps=plan.COMPILE_MIN_STEPS)
    assert long["compile"] == "blocks x2" and not long["notes"]
    forced = plan.plan_loop(model, TrainConfig(compile="on"), "cuda", steps=10)
    assert forced["compile"] == "blocks x2"
    assert plan.plan_loop(model, TrainConfig(), "cpu", steps=10_000)["compile"] == "off"  # auto: CUDA only


def test_kernels_that_round_by_token_count_are_not_a_packing_leak():
    """4-bit matmuls round differently for different numbers of tokens: a sequence packed behind another then
    differs from the same sequence alone by more than any fixed tolerance on a deep random model, without
    any attention across examples. The check compares two packed rows of one shape instead."""
    model = _tiny()

    def by_length(module, args, output):  # an MLP whose rounding depends on how many tokens it sees
        return output * (1.0 + 3.0 * math.sin(output.shape[1]))

    handle = model.model.layers[0].mlp.register_forward_hook(by_length)
    try:
        assert plan.packing_leak(model, model.model) is None
    finally:
        handle.remove()


def test_compiled_blocks_round_like_eager_kernels(monkeypatch):
    """Compilation runs with inductor's emulate_precision_casts on: bf16 intermediates are rounded where eager
    rounds them, so a compiled loop follows the eager loop's loss curve (without it, LoRA's first steps in
    bf16 diverged visibly)."""
    import torch._inductor.config as inductor_config

    seen = []

    def backend(gm, example_inputs):
        seen.append(inductor_config.emulate_precision_casts)
        return gm.forward

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", backend)
    assert inductor_config.emulate_precision_casts is False
    res, _ = _run(TrainConfig(steps=2, batch_size=8, lr=3e-3, compile="on"))
    assert seen and all(seen)
    assert res.loop["compile_rounding"].startswith("eager")
    assert inductor_config.emulate_precision_casts is False  # restored after training


def test_varying_lengths_compile_for_dynamic_shapes_once(monkeypatch):
    """Examples of varying length give batches of varying shape: the blocks are compiled for symbolic sizes
    from the start (fewer compilations than a static graph then a recompilation), fixed lengths stay static."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", backend)
    res, _ = _run(TrainConfig(steps=12, batch_size=8, lr=1e-3, compile="on", chunked_loss=False),  # blocks only
                  data=_data(96, seed=1, lo=4, hi=60))
    assert res.loop["compile"].endswith("dynamic shapes")
    assert len(graphs) <= 2  # packed rows (a mask) and, at most, unpacked ones (no mask)
    graphs.clear()
    fixed = TrainData([[5 + (i + k) % 80 for k in range(16)] for i in range(32)], [1] * 32, pad_id=0)
    res, _ = _run(TrainConfig(steps=3, batch_size=8, lr=1e-3, compile="on", chunked_loss=False), data=fixed)
    assert res.loop["compile"].endswith("static shapes") and len(graphs) == 1


def test_cuda_graphs_are_asked_for_only_where_they_can_work(monkeypatch):
    """compile_mode=reduce-overhead compiles the blocks with CUDA graphs; with batches of varying shape (a graph
    per shape) or off CUDA it is not used, and the run's notes say why."""
    asked = []
    monkeypatch.setattr(compiling, "compile_blocks", lambda blocks, dynamic=False, mode="default": asked.append(mode))
    fixed = TrainData([[5 + (i + k) % 80 for k in range(16)] for i in range(32)], [1] * 32, pad_id=0)
    res, _ = _run(TrainConfig(steps=2, batch_size=8, compile="on", compile_mode="reduce-overhead"), data=fixed)
    assert asked == ["default"] and "CUDA graphs need a CUDA device" in " ".join(res.loop["notes"])
    assert "CUDA graphs" not in res.loop["compile"]
    asked.clear()
    res, _ = _run(TrainConfig(steps=2, batch_size=8, compile="on", compile_mode="reduce-overhead"),
                  data=_data(32, seed=1, lo=4, hi=60))
    assert asked == ["default"] and "batches vary in shape" in " ".join(res.loop["notes"])

    class Block(torch.nn.Linear):
        def compile(self, **kwargs):
            asked.append(kwargs)

    asked.clear()
    monkeypatch.undo()
    compiling.compile_blocks(torch.nn.ModuleList([Block(2, 2), Block(2, 2)]), mode="reduce-overhead")
    assert [a.get("mode") for a in asked] == ["reduce-overhead"] * 2
    asked.clear()
    compiling.compile_blocks(torch.nn.ModuleList([Block(2, 2)]))
    assert "mode" not in asked[0]  # torch's own default


def test_the_fused_loss_kernel_compiles_once_for_every_token_count(monkeypatch):
    """Each step has another number of labelled tokens: the fused loss kernel takes 1/n as a tensor, so one
    graph serves every step (with 1/n a Python float the compiler made it a constant and compiled again per
    step, up to its recompile limit, then ran the kernel eagerly: seconds per step on a GPU)."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs, aot_eager = [], lookup_backend("aot_eager")  # (a float becomes a constant in AOT's capture)

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", backend)
    res, _ = _run(TrainConfig(steps=12, batch_size=8, lr=1e-3, compile="on"), data=_data(96, seed=1, lo=4, hi=60))
    assert res.loop["chunked_loss_kernel"] == "fused"
    loss_graphs = [g for g in graphs if "logsumexp" in g.code]
    assert len(loss_graphs) == 1 and len(graphs) <= 4  # and the blocks: packed rows and unpacked ones


@pytest.mark.parametrize("attr,value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625)])
def test_models_that_transform_their_logits_use_their_own_forward(attr, value):
    """Gemma 2 soft-caps and Cohere scales the logits after the head: the head-only paths would compute another
    loss, so such models train through their own forward (and say so)."""
    model = _tiny()
    setattr(model.config, attr, value)
    assert decoder_and_head(model) is None
    res, _ = _run(TrainConfig(steps=2, batch_size=8, lr=1e-3), model)
    assert res.loop["padding_free"] is False and res.loop["chunked_loss"] is False
    assert any("need the model's decoder and head apart" in n for n in res.loop["notes"])


def test_a_compile_failure_at_a_later_step_redoes_that_step_uncompiled(monkeypatch):
    """A recompilation for a new shape can fail mid-run: the step is redone eagerly from zeroed gradients and
    the run goes on, with the same losses as a run that was never compiled."""
    calls = [0]

    def flaky(blocks, dynamic=False, mode="default"):
        def impl(block):
            def call(*a, **k):
                calls[0] += 1
                if calls[0] > 2 * len(blocks):  # fine for two forward passes, then the "recompile" fails
                    raise RuntimeError("inductor: recompilation failed")
                return block.forward(*a, **k)
            return call
        for block in blocks:
            block._compiled_call_impl = impl(block)

    monkeypatch.setattr(compiling, "compile_blocks", flaky)
    ref, res, model = _eager_and_compiled(4)
    assert res.loop["compile"].startswith("failed at step 3, off: RuntimeError: inductor: recompilation")
    assert [b for _, b in res.losses] == pytest.approx([a for _, a in ref.losses], rel=1e-5)
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


def test_fused_chunk_kernel_equals_the_eager_one_and_falls_back(monkeypatch):
    """With compiled blocks the chunks' softmax and gradient run as one compiled kernel: the same loss and
    gradients; a kernel that fails to compile leaves the eager one in place and says why."""
    from peftbench.train import loss as loss_mod

    torch.manual_seed(3)
    h = torch.randn(40, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    y = torch.randint(0, 300, (40,))
    ref = linear_cross_entropy(h, w, y, chunk=16)
    ref_g = torch.autograd.grad(ref, (h, w))
    with loss_mod.fused_chunks("aot_eager") as fused:
        out = linear_cross_entropy(h, w, y, chunk=16)
        out_g = torch.autograd.grad(out, (h, w))
    assert fused.status == "fused" and loss_mod._Fused.fn is None  # off again after the context
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out_g, ref_g, strict=True))

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("inductor: no kernel")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with loss_mod.fused_chunks("inductor") as fused:
        again = linear_cross_entropy(h, w, y, chunk=16)
    assert fused.status.startswith("fused failed, eager: RuntimeError: inductor: no kernel")
    assert again.item() == pytest.approx(ref.item(), rel=1e-6)


def test_compiled_loop_records_the_fused_loss_kernel(monkeypatch):
    monkeypatch.setattr(compiling, "COMPILE_BACKEND", "aot_eager")
    ref, comp, _ = _eager_and_compiled(3)
    assert ref.loop["chunked_loss_kernel"] == "eager" and comp.loop["chunked_loss_kernel"] == "fused"
    assert [b for _, b in comp.losses] == pytest.approx([a for _, a in ref.losses], rel=1e-4)


def test_the_fast_loop_freezes_the_collector_after_its_first_steps_and_unfreezes_after():
    """Objects alive after steps 1 and 3 move to the permanent generation (full collections inside
    CUDA-graph steps took 0.7-0.9 s on an H200); training ends with the collector as it found it. The naive
    loop leaves the collector alone. Objects frozen before training (the GPU machine's Python starts with 375)
    do not stop the freeze, and are unfrozen with the loop's own at the end: left frozen, the trained model's
    reference cycles would never be collected."""
    import gc

    seen: dict[str, list[int]] = {}

    def watch(name):
        seen[name] = []
        return lambda step, info: seen[name].append(gc.get_freeze_count())

    model, data = _tiny(), _data(32, seed=5)
    params = list(model.parameters())
    assert gc.get_freeze_count() == 0
    fast = train(model, params, data, TrainConfig(steps=5, batch_size=4), seed=0, device="cpu",
                 on_step=watch("fast"))
    assert gc.get_freeze_count() == 0 and fast.loop["gc"] == "frozen after steps 1 and 3"
    counts = seen["fast"]
    assert len(counts) == 5 and min(counts) > 1000   # frozen from step 1 on (objects freed since leave it)
    naive = train(model, params, data, TrainConfig(steps=3, batch_size=4, loop="naive"), seed=0, device="cpu",
                  on_step=watch("naive"))
    assert seen["naive"] == [0, 0, 0] and "gc" not in naive.loop
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        mine = train(model, params, data, TrainConfig(steps=3, batch_size=4), seed=0, device="cpu",
                     on_step=watch("mine"))
        import re

        m = re.fullmatch(r"frozen after steps 1 and 3 \((\d+) objects frozen before training, unfrozen with them "
                         r"at the end\)", mine.loop["gc"])
        assert m and before // 2 < int(m[1]) <= before   # (frozen objects freed since count no more)
        assert min(seen["mine"]) > before and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
