"""Bucketed micro-batches (``bucketing``): the padded loop's examples and loss, in a few fixed shapes."""

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

from peftbench.train import buckets, compiling, plan
from peftbench.train.batching import TrainData, batches
from peftbench.train.buckets import Buckets, collate_rows, plan_buckets
from peftbench.train.config import TrainConfig
from peftbench.train.loop import train


def _tiny():
    from peftbench.models.sources import load_model

    torch.manual_seed(0)
    return load_model("tiny:llama", device="cpu")[0]


def _data(n=96, seed=1, lo=4, hi=60):
    g = torch.Generator().manual_seed(seed)
    seqs, starts = [], []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        seqs.append(torch.randint(3, 90, (length,), generator=g).tolist())
        starts.append(int(torch.randint(1, length, (1,), generator=g)))
    return TrainData(seqs, starts, pad_id=0)


def _run(cfg, data=None, model=None):
    model = model or _tiny()
    return train(model, list(model.parameters()), data or _data(), cfg, seed=0, device="cpu")


def _examples(batch):
    """The examples of a micro-batch as token tuples: padded rows by their mask; bucketed ones split where the
    position ids restart (each padding token is a one-token segment; examples have two tokens or more)."""
    ids = batch["input_ids"]
    if "attention_mask" in batch:
        return sorted(tuple(row[m.bool()].tolist()) for row, m in zip(ids, batch["attention_mask"], strict=True))
    pos = batch.get("position_ids", torch.arange(ids.shape[1]).expand_as(ids))
    out = []
    for row, p in zip(ids.tolist(), pos.tolist(), strict=True):
        starts = [t for t in range(len(p)) if p[t] == 0] + [len(p)]
        out += [tuple(row[a:b]) for a, b in itertools.pairwise(starts) if b - a >= 2]
    return sorted(out)


def _token_losses(model, batch):
    """Each labelled token's cross-entropy, keyed by (row, position)."""
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()  # (a cache turns packing detection off)
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    return {(r, t): float(losses[r, t]) for r, t in (labels != -100).nonzero().tolist()}


# ---- the layout ---------------------------------------------------------------------------------------------

def test_each_micro_batch_holds_the_padded_loops_examples():
    data = _data(200, seed=2)
    layout = plan_buckets(data, batch_size=8, seed=5, micro_batches=40)
    padded = batches(data, 8, seed=5)
    bucketed = batches(data, 8, seed=5, layout=layout)
    for (e1, a), (e2, b) in itertools.islice(zip(padded, bucketed, strict=True), 60):  # past the planned 40
        assert e1 == e2 and _examples(a) == _examples(b)
        assert int(b["num_tokens"]) == int(a["attention_mask"].sum())
        assert int((b["labels"] != -100).sum()) == int((a["labels"] != -100).sum())


def test_rows_are_fixed_and_shapes_few():
    data = _data(3000, seed=3, lo=4, hi=200)
    layout = plan_buckets(data, batch_size=16, seed=0, micro_batches=300)
    assert len(layout.widths) <= buckets.MAX_WIDTHS and layout.shapes <= buckets.MAX_WIDTHS + 1
    longest = max(len(x) for x in data.input_ids)
    assert layout.widths[-1] <= buckets.WIDTH_CAP * longest and layout.fallback == (16, longest)
    assert all(w % buckets.ALIGN == 0 or w == longest for w in layout.widths)
    shapes = {tuple(b["input_ids"].shape) for _, b in itertools.islice(batches(data, 16, 0, layout=layout), 300)}
    assert shapes <= {(layout.rows, w) for w in layout.widths}  # every planned micro-batch fits a bucket
    assert layout.record()["fallback_micro_batches"] == 0 and sum(layout.used.values()) == 300
    assert 1 < len(shapes) and layout.rows < 16  # it does pack: fewer rows than examples
    # fewer positions than one row per example at the batch's longest (the padded loop)
    padded = sum(b["input_ids"].numel() for _, b in itertools.islice(batches(data, 16, 0), 300))
    assert sum(b["input_ids"].numel() for _, b in itertools.islice(batches(data, 16, 0, layout=layout), 300)) < padded


def test_a_micro_batch_that_fits_no_bucket_takes_the_fallback():
    data = TrainData([[5] * 6, [6] * 6, [7] * 20, [8] * 3], [1, 1, 1, 1], pad_id=0)
    layout = Buckets(rows=2, widths=(8, 16), fallback=(4, 20))
    assert layout.shapes == 3
    short = layout(data, [0, 1, 3])  # 6, 6 and 3 need three rows of 8, so the 16-wide bucket
    assert tuple(short["input_ids"].shape) == (2, 16)
    long = layout(data, [0, 2, 3])  # 20 tokens fit no bucket
    assert tuple(long["input_ids"].shape) == (4, 20) and _examples(long) == sorted([(5,) * 6, (7,) * 20, (8,) * 3])
    assert layout.record()["fallback_micro_batches"] == 1 and layout.record()["shapes_used"] == {"2x16": 1, "4x20": 1}
    # planned from one micro-batch, the fallback still holds any micro-batch of the data
    data = _data(64, seed=4, lo=2, hi=40)
    layout = plan_buckets(data, batch_size=8, seed=0, micro_batches=1)
    assert layout.fallback == (8, max(len(x) for x in data.input_ids))
    for _, b in itertools.islice(batches(data, 8, 0, layout=layout), 40):
        assert tuple(b["input_ids"].shape) in {(layout.rows, w) for w in layout.widths} | {layout.fallback}


def test_padding_sits_at_position_zero_and_carries_no_label():
    data = TrainData([[5, 6, 7], [8, 9]], [1, 1], pad_id=0)
    b = collate_rows(data, [0, 1], [[0, 1], []], rows=2, width=8)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0], [0] * 8]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 0], [0] * 8]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100], [-100] * 8]
    full = collate_rows(TrainData([[5, 6], [7, 8]], [1, 1], 0), [0, 1], [[0], [1]], rows=2, width=2)
    assert "position_ids" not in full  # one example filling each row: the model's own positions


# ---- what the model computes ---------------------------------------------------------------------------------

def test_no_attention_across_examples_or_to_padding():
    model = _tiny().eval()
    data = _data(8, seed=6, lo=5, hi=20)
    placed = [[0, 1, 2], [3, 4], [5, 6, 7], []]  # three packed rows and an all-padding one
    width = max(sum(len(data.input_ids[j]) for j in row) for row in placed) + 5  # trailing padding in each row
    batch = collate_rows(data, list(range(8)), placed, rows=4, width=width)
    before = _token_losses(model, batch)
    changed = TrainData([list(x) for x in data.input_ids], data.answer_start, 0)
    changed.input_ids[1] = [(t + 7) % 80 + 3 for t in changed.input_ids[1]]  # same length: same layout
    after = _token_losses(model, collate_rows(changed, list(range(8)), placed, rows=4, width=width))
    n0 = len(data.input_ids[0])
    mine = {k for k in before if k[0] == 0 and n0 <= k[1] < n0 + len(data.input_ids[1])}  # example 1's tokens
    assert mine and max(abs(before[k] - after[k]) for k in mine) > 1e-3  # the change shows where it should
    assert max(abs(before[k] - after[k]) for k in before if k not in mine) < 1e-5  # and nowhere else
    pad = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    for r, row in enumerate(placed):
        pad[r, :sum(len(data.input_ids[j]) for j in row)] = False
    noisy = torch.where(pad, torch.randint(3, 90, pad.shape, generator=torch.Generator().manual_seed(0)),
                        batch["input_ids"])
    again = _token_losses(model, {**batch, "input_ids": noisy})
    assert max(abs(before[k] - again[k]) for k in before) < 1e-5  # what the padding holds is seen by no one


def test_the_loss_is_the_padded_loops():
    cfg = dict(steps=4, batch_size=8, grad_accum=2, lr=3e-3, dtype="fp32")  # two micro-batches per step
    padded = _run(TrainConfig(**cfg, loop="naive"))
    bucketed = _run(TrainConfig(**cfg, bucketing="on"))
    assert bucketed.examples == padded.examples and bucketed.tokens == padded.tokens
    assert bucketed.loop["padding_fraction"] < padded.loop["padding_fraction"]
    for (s1, a), (s2, b) in zip(padded.losses, bucketed.losses, strict=True):
        assert s1 == s2 and b == pytest.approx(a, rel=1e-5)


# ---- the options ---------------------------------------------------------------------------------------------

def test_auto_buckets_where_blocks_compile_on_cuda():
    model = _tiny()
    cpu = plan.plan_loop(model, TrainConfig(compile="on"), "cpu", steps=10)
    assert cpu["bucketing"] is False and cpu["compile"] == "blocks x2"  # auto: off on CPU
    assert plan.plan_loop(model, TrainConfig(bucketing="on"), "cpu", steps=10)["bucketing"] is True
    cuda = plan.plan_loop(model, TrainConfig(), "cuda", steps=plan.COMPILE_MIN_STEPS_BUCKETED)
    assert cuda["bucketing"] is True and cuda["compile"] == "blocks x2"
    short = plan.plan_loop(model, TrainConfig(), "cuda", steps=plan.COMPILE_MIN_STEPS_BUCKETED - 1)
    assert short["bucketing"] is False and short["compile"] == "off"
    unbucketed = plan.plan_loop(model, TrainConfig(bucketing="off"), "cuda", steps=plan.COMPILE_MIN_STEPS - 1)
    assert unbucketed["bucketing"] is False and unbucketed["compile"] == "off"  # dynamic shapes: 500+ steps
    packed_off = plan.plan_loop(model, TrainConfig(bucketing="on", padding_free=False), "cpu", steps=10)
    assert packed_off["bucketing"] is False and any("bucketing: builds on padding-free" in n for n in packed_off["notes"])
    with pytest.raises(Exception, match="'bucketing' must be one of auto, on, off"):
        TrainConfig(bucketing="yes")


def test_cuda_graphs_with_bucketing(monkeypatch):
    """compile_mode=reduce-overhead works with bucketing (static shapes) on CUDA; 'auto' picks it there only."""
    def mode(compile_mode, device, shapes, data=None):
        blocks = compiling.CompiledBlocks(torch.nn.ModuleList(), data or _data(), compile_mode, device,
                                          record={"notes": []}, shapes=shapes)
        static = shapes is not None or len({len(x) for x in blocks.data.input_ids}) == 1
        return blocks._usable_mode(static), blocks.record["notes"]

    assert mode("reduce-overhead", "cuda", shapes=4) == ("reduce-overhead", [])
    assert mode("auto", "cuda", shapes=4) == ("reduce-overhead", [])
    assert mode("auto", "cuda", shapes=None) == ("default", [])  # varying shapes, no buckets
    assert mode("auto", "cpu", shapes=4) == ("default", [])
    used, notes = mode("reduce-overhead", "cuda", shapes=None)
    assert used == "default" and "bucketing=on gives a few fixed shapes" in notes[0]


# ---- compiled --------------------------------------------------------------------------------------------------

def test_compiled_with_buckets_matches_eager_and_is_reused(monkeypatch):
    """On CPU (aot_eager: the same graphs, without inductor's minutes of C++ builds): one static graph per
    shape, the eager loss, and the next run with the same blocks compiles nothing."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs, aot_eager = [], lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", backend)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/nonexistent-unused")
    cfg = dict(steps=4, batch_size=8, lr=3e-3, dtype="fp32", bucketing="on")
    eager = _run(TrainConfig(**cfg))
    compiled = _run(TrainConfig(**cfg, compile="on"))
    for (_, a), (_, b) in zip(eager.losses, compiled.losses, strict=True):
        assert b == pytest.approx(a, rel=1e-5)
    used = compiled.loop["bucketing"]["shapes_used"]
    stats = compiled.loop["compile_stats"]
    assert compiled.loop["compile"] == f"blocks x2, static shapes ({compiled.loop['bucketing']['max_shapes']} bucket shapes)"
    block_graphs = [g for g in graphs if "logsumexp" not in g.code]
    assert len(used) >= 2 and len(used) <= len(block_graphs) <= 2 * len(used)  # per shape, static: packed rows
    assert stats["graphs_compiled"] == len(graphs) and stats["steps_compiling"] >= 2  # and unpacked ones, if any
    assert stats["reused"].startswith("none") and stats["cache_dir"] == "/nonexistent-unused"
    graphs.clear()
    again = _run(TrainConfig(**cfg, compile="on"))  # a fresh model, same architecture: the graphs serve it
    assert again.loop["compile_stats"]["reused"].startswith("kept") and not graphs
    assert again.loop["compile_stats"]["graphs_compiled"] == 0 and again.losses == compiled.losses
    kept = compiling._Kept.kept
    assert kept and compiling._Kept.prepare(kept + "|other").startswith("none: the previous run")  # other blocks
    assert compiling._Kept.kept is None and not compiling._Kept.prepare(kept).startswith("kept")  # were dropped


def test_examples_of_one_length_keep_the_plain_layout():
    """Random-token benchmarks (every example one length): one example per row at that length, no position ids,
    the same micro-batch as the padding-free one, so fixed-shape runs lose nothing to bucketing."""

    data = TrainData([[5 + (i + k) % 80 for k in range(30)] for i in range(64)], [1] * 64, pad_id=0)
    layout = plan_buckets(data, batch_size=16, seed=0, micro_batches=4)
    assert (layout.rows, layout.widths, layout.shapes) == (16, (30,), 1)
    for (_, a), (_, b) in itertools.islice(zip(batches(data, 16, 0, padding_free=True),
                                               batches(data, 16, 0, layout=layout), strict=True), 4):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compile_caches_live_in_peftbenchs_cache_unless_the_user_chose(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "pc"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing inductor sets
    monkeypatch.setenv("TRITON_CACHE_DIR", default_cache_dir() + "/triton/0")  # what inductor sets at a launch
    assert compiling.use_compile_cache() == str(tmp_path / "pc" / "compile")
    assert "TRITON_CACHE_DIR" not in os.environ  # inductor puts it under the new folder
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    assert compiling.use_compile_cache() == str(tmp_path / "mine")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
