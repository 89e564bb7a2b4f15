"""The peer benchmark (benchmarks/peer_trainer.py: transformers' Trainer + peft) trains on exactly the data
peftbench's loop trains on: the same examples in the same batches, padded the same way, the same real-token
counts; and train_throughput.py reports the ratios to it."""

import gc
import sys
import weakref
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from peer_trainer import (  # noqa: E402
    LORA,
    OrderedExamples,
    PeerUnavailable,
    batch_order,
    build_model,
    padding_collator,
    run_peer,
)
from train_throughput import PEER, compare, markdown, random_data, run_variant, variant_options  # noqa: E402

from peftbench.models.sources import resolve_model  # noqa: E402
from peftbench.train.batching import batches  # noqa: E402
from peftbench.train.config import TrainConfig  # noqa: E402
from peftbench.train.loop import train  # noqa: E402

BATCH, STEPS = 4, 5


@pytest.fixture(scope="module")
def tiny():
    resolved = resolve_model("tiny:llama")
    vocab = resolved.load("cpu")[0].config.vocab_size
    # 14 rows of 3..24 tokens: batches of different widths, padding in most, and a second epoch after 3 steps
    return resolved, random_data(vocab, 14, 24, seed=3, lengths=(3, 24))


def test_the_peer_pads_peftbench_batches_token_for_token(tiny):
    _, data = tiny
    order = batch_order(len(data), BATCH, seed=0, steps=STEPS)
    examples, collate = OrderedExamples(data, order), padding_collator(data.pad_id)
    ours = batches(data, BATCH, seed=0)  # the naive loop's padded batches
    for step, idx in enumerate(order):
        peer = collate([examples[step * BATCH + k] for k in range(BATCH)])
        _, mine = next(ours)
        assert sorted(peer) == ["attention_mask", "input_ids", "labels"]
        for key in peer:
            assert torch.equal(peer[key], mine[key]), (step, key)
        assert int(peer["attention_mask"].sum()) == sum(len(data.input_ids[i]) for i in idx)
    assert len({i for batch in order[:3] for i in batch}) == 12  # first epoch: 3 batches of distinct examples
    assert any(int(b.sum()) < b.numel() for b in [collate([examples[k] for k in range(4)])["attention_mask"]])


def test_trainer_and_peftbench_train_the_same_tokens_and_losses(tiny):
    resolved, data = tiny
    seen = []
    peer = run_peer("full", resolved, data, device="cpu", dtype=torch.float32, autocast="auto", batch_size=BATCH,
                    steps=STEPS, lr=1e-3, count_tokens=True, on_batch=seen.append)
    model, _ = resolved.load("cpu", torch.float32)
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, lr=1e-3, warmup_ratio=0.0, max_length=24, loop="naive")
    ours = train(model, list(model.parameters()), data, cfg, seed=0, device="cpu")

    per_step = peer["tokens_per_step"]
    assert len(per_step) == STEPS and len(peer["marks"]) == STEPS
    assert peer["trainer_tokens_seen"] == sum(per_step) == ours.tokens  # Trainer's own non-padding count
    assert [tokens for _, tokens in peer["marks"]] == [sum(per_step[:k + 1]) for k in range(STEPS)]
    assert len(seen) == STEPS and sum(int(b["attention_mask"].sum()) for b in seen) == ours.tokens
    # same weights, batches, padding, loss normalisation, AdamW and schedule: the same curve (Trainer logs 4 digits)
    assert peer["losses"] == pytest.approx([loss for _, loss in ours.losses], rel=2e-4, abs=1e-4)
    assert peer["trainable"] == sum(p.numel() for p in model.parameters())
    # nothing of Trainer's keeps the trained model (on a GPU: its weights, gradients, optimizer state) alive
    gone = weakref.ref(peer.pop("model"))
    gc.collect()
    assert gone() is None


def test_the_peer_lora_is_peftbench_lora_default():
    from peftbench_plugins.lora.config import LoraConfig

    ours = LoraConfig()
    assert LORA == {"r": ours.r, "lora_alpha": ours.alpha, "lora_dropout": ours.dropout,
                    "target_modules": "all-linear", "bias": ours.bias}
    assert ours.target_modules == ["all-linear"]


def test_peer_models_train_what_the_method_trains(tiny):
    resolved, _ = tiny
    lora, what = build_model("lora", resolved, "cpu", torch.float32)
    assert "peft" in what and sum(p.numel() for p in lora.parameters() if p.requires_grad) > 0
    adapter, what = build_model("adapter", resolved, "cpu", torch.float32)
    assert "peft has no bottleneck adapter" in what
    with pytest.raises(PeerUnavailable, match="CUDA only"):
        build_model("qlora", resolved, "cpu", torch.float32)
    with pytest.raises(PeerUnavailable, match="no Trainer"):
        build_model("ia3", resolved, "cpu", torch.float32)


def test_ratios_to_the_peer_and_its_column():
    row = {"method": "lora", "variants": {
        "naive": {"status": "ok", "tokens_per_s": 100.0, "peak_memory_bytes": 10, "losses": [2.0]},
        "fast": {"status": "ok", "tokens_per_s": 300.0, "peak_memory_bytes": 5, "losses": [2.0]},
        PEER: {"status": "ok", "tokens_per_s": 150.0, "peak_memory_bytes": 20, "losses": [2.2]}}}
    compare(row)
    v = row["variants"]
    assert v["fast"]["vs_peer"] == pytest.approx(2.0) and v["naive"]["vs_peer"] == pytest.approx(100 / 150)
    assert v[PEER]["speedup"] == pytest.approx(1.5) and "vs_peer" not in v[PEER]
    assert v[PEER]["max_loss_dev"] == pytest.approx(0.1)
    for x in v.values():
        x.update(step_s_median=0.1, mfu=None, first_step_s=1.0)
    doc = {"env": {"device": "cpu"}, "results": [row], "settings": {
        "model": "tiny:llama", "batch_size": 4, "seq_len": 8, "weights_dtype": "fp32", "steps": 3, "warmup": 1}}
    table = markdown(doc)
    assert "| x Trainer+peft |" in table and "| lora | fast | 300 | 3.00 | 2.00 | 100.0 |" in table
    del row["variants"][PEER]
    assert "Trainer+peft" not in markdown(doc)  # files without the peer render as before


def test_bucketing_variants_use_the_option_or_say_it_is_missing(tiny):
    resolved, data = tiny
    args = SimpleNamespace(device="cpu", compile=None)
    field = next((f for f in fields(TrainConfig) if f.name == "bucketing"), None)
    if field is None:
        out = run_variant(None, resolved, data, "fast+buckets+graphs", args)
        assert out == {"status": "unavailable",
                       "error": "not available in this checkout: TrainConfig has no bucketing option"}
    else:
        options = variant_options("fast+buckets+graphs", args)
        assert options["compile_mode"] == "reduce-overhead" and options["compile"] == "off"  # CPU default
        assert options["bucketing"] in ("on", True)
        TrainConfig(**options)  # a valid configuration


def test_task_data_cache_is_read_back_only_for_the_same_settings(tmp_path, monkeypatch):
    import train_throughput

    from peftbench.train.batching import TrainData

    calls = []

    def tokenize(task, model, data_dir, max_length):
        calls.append(max_length)
        return TrainData(input_ids=[[5, 6, 7][:max_length], [8, 9]], answer_start=[1, 1], pad_id=0)

    monkeypatch.setattr(train_throughput, "task_data", tokenize)
    cache = tmp_path / "sst2.json"
    first = train_throughput.cached_task_data("sst2", "m.gguf", tmp_path, 3, cache)
    again = train_throughput.cached_task_data("sst2", "m.gguf", tmp_path, 3, cache)
    assert calls == [3] and again == first and again.input_ids == [[5, 6, 7], [8, 9]]
    other = train_throughput.cached_task_data("sst2", "m.gguf", tmp_path, 2, cache)  # another max_length
    assert calls == [3, 2] and other.input_ids == [[5, 6], [8, 9]]
