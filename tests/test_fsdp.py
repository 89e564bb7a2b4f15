"""FSDP2 training (peftbench.train.distributed): each rank's share of a micro-batch gives the one-process
gradient, and tiny:llama trained by two gloo processes under torchrun follows the one-process loop's loss
curve and ends with its weights; a rank that raises is reported with its rank and traceback, the other
does not hang, and the next run trains on a new process group.

fp32 on the CPU: the sharded runs differ from the one-process loop only by the order of float sums (the
chunked loss, packing a share's examples into other rows, gradients reduced over ranks), so curves agree
to LOSS_TOL. The torchrun launches are the slow part (~15-40 s each on 2 cores): one for 2 processes
running every scenario in turn, one for a single process.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from peftbench.errors import ConfigError
from peftbench.train.batching import TrainData, batches, label_positions, real_tokens
from peftbench.train.distributed import (
    ShardPolicy,
    World,
    check_split,
    rank_batches,
    rank_share,
    run_together,
    shard_model,
)
from peftbench.train.distributed_check import SEED, RunSpec, probe_ids, reference_setup
from peftbench.train.loop import train
from peftbench.train.loss import answer_loss

LOSS_TOL = 1e-5    # absolute, on losses near 5 after 6 AdamW steps (recorded to 6 decimals; seen: 1e-6)
LOGITS_TOL = 1e-5  # absolute, on the trained model's logits, |logits| ~ 1 (seen: 2e-7 to 7e-7)
RUNS = ("full", "lora", "qlora", "lora:fail=1@3", "lora:fail=0@0", "adapter:ckpt,offload")
FAIL_TIMEOUT_S = 5  # the collective timeout in the failure scenario: how long the surviving rank waits


def toy_data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, starts = [], []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids.append(torch.randint(3, 250, (length,), generator=g).tolist())
        starts.append(int(torch.randint(1, length, (1,), generator=g)))
    return TrainData(ids, starts, 2)


def examples_of(batch):
    """The examples of a padded micro-batch, as a sorted list of token tuples."""
    return sorted(tuple(r[:int(m.sum())]) for r, m in zip(batch["input_ids"].tolist(), batch["attention_mask"],
                                                          strict=True))


@pytest.mark.parametrize("padding_free", [False, True])
def test_one_rank_draws_the_loops_micro_batches(padding_free):
    data = toy_data()
    mine, loops = rank_batches(data, 4, SEED, World(), padding_free), batches(data, 4, SEED, padding_free)
    for _ in range(6):  # past the end of an epoch (10 examples: 2 micro-batches each)
        got, (_, want) = next(mine), next(loops)
        assert float(got.pop("loss_weight")) == 1.0
        assert int(got.pop("global_tokens")) == real_tokens(want)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("size", [2, 3])
def test_rank_shares_split_each_micro_batch_and_weigh_to_the_world_size(size, padding_free):
    data = toy_data()
    whole = batches(data, 6, SEED)
    streams = [rank_batches(data, 6, SEED, World(rank=r, size=size), padding_free) for r in range(size)]
    padded = [rank_batches(data, 6, SEED, World(rank=r, size=size)) for r in range(size)]
    for _ in range(3):
        _, batch = next(whole)
        shares, padded_shares = [next(s) for s in streams], [next(s) for s in padded]
        assert sorted(ex for s in padded_shares for ex in examples_of(s)) == examples_of(batch)
        assert all(len(examples_of(s)) in (6 // size, 6 // size + 1) for s in padded_shares)
        assert sum(float(s["loss_weight"]) for s in shares) == pytest.approx(size, abs=1e-6)
        answers = [int((s["labels"][:, 1:] != -100).sum()) for s in shares]
        assert [float(s["loss_weight"]) for s in shares] == pytest.approx([size * a / sum(answers) for a in answers])
        assert all(int(s["global_tokens"]) == int(batch["attention_mask"].sum()) for s in shares)


def test_weighted_shares_give_the_one_process_gradient():
    """The core of the design, without processes: the micro-batch's mean loss and the sum over ranks of
    weight / world x the share's mean loss have the same gradient (FSDP then averages over the ranks)."""
    method, model, data, _ = reference_setup(RunSpec("full"))
    idx = list(range(5))
    whole = rank_share(data, idx, World(), padding_free=True)
    params = [p for _, p in method.trainable_parameters(model)]

    def grads(batch, scale):
        model.zero_grad(set_to_none=True)
        batch = {k: v for k, v in batch.items() if k not in ("loss_weight", "global_tokens")}
        (answer_loss(model, {**batch, **label_positions(batch["labels"])}) * scale).backward()
        return [p.grad.clone() for p in params]

    expected = grads(whole, 1.0)
    size = 2
    got = [torch.zeros_like(g) for g in expected]
    for r in range(size):
        share = rank_share(data, idx, World(rank=r, size=size), padding_free=True)
        for acc, g in zip(got, grads(share, float(share["loss_weight"]) / size), strict=True):
            acc += g
    worst = max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))
    assert worst < 1e-6


def test_a_micro_batch_smaller_than_the_world_is_a_clear_error():
    with pytest.raises(ConfigError, match="batch_size=2.*3 processes"):
        check_split(2, 100, World(rank=0, size=3))


def test_bf16_sharding_refuses_to_cast_a_4bit_storage():
    method, model, _, _ = reference_setup(RunSpec("qlora"))
    with pytest.raises(ConfigError, match="uint8 storage of a quantized base.*quant_storage"):
        shard_model(model, method.trainable_parameters(model), World(), ShardPolicy(precision="bf16"))


def test_one_process_failure_is_reported_with_rank_and_traceback():
    def boom():
        raise ValueError("bad step")

    done = run_together(World(), boom)
    assert not done.ok and done.error() == "rank 0: ValueError: bad step"
    assert "ValueError: bad step" in done.failures[0].traceback and "boom" in done.failures[0].traceback


# ---- under torchrun ---------------------------------------------------------------------------------------

def launch(tmp_path, nproc, *args, timeout=240):
    """``python -m torch.distributed.run --standalone`` running distributed_check; its output folder."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "peftbench.train.distributed_check", *args]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def reference(text):
    """The same run trained by the one-process loop: its loss curve, tokens and probe logits."""
    spec = RunSpec.parse(text)
    method, model, data, cfg = reference_setup(spec)
    result = train(model, [p for _, p in method.trainable_parameters(model)], data, cfg, SEED, "cpu")
    with torch.inference_mode():
        probe = method.inference_model(model)(input_ids=probe_ids()).logits.float().flatten()
    return result, probe


def assert_same_run(run, text):
    result, probe = reference(text)
    assert run["ok"], run["error"]
    assert [s for s, _ in run["losses"]] == [s for s, _ in result.losses]
    worst = max(abs(a - b) for (_, a), (_, b) in zip(run["losses"], result.losses, strict=True))
    assert worst < LOSS_TOL, (run["losses"], result.losses)
    assert result.losses[-1][1] < result.losses[0][1] - 0.2  # it learnt: the comparison is not of flat curves
    assert run["tokens"] == result.tokens
    assert float((torch.tensor(run["probe"]) - probe).abs().max()) < LOGITS_TOL


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Two gloo processes, one run after the other: full FT, LoRA, QLoRA, LoRA with rank 1 raising before
    step 3, LoRA with rank 0 raising while rank 1 waits for it to build its model, then the adapter with
    activation checkpointing and CPU offload."""
    out = launch(tmp_path_factory.mktemp("fsdp2"), 2, "--timeout", str(FAIL_TIMEOUT_S), "curves.json",
                 *RUNS)
    return out, json.loads((out / "curves.json").read_text())


def test_two_ranks_write_one_result_file(two_ranks):
    out, curves = two_ranks
    assert [p.name for p in out.iterdir()] == ["curves.json"]
    assert curves["world"] == {"world_size": 2, "backend": "gloo"}
    assert all(r["ranks_trained"] == [0, 1] for r in curves["runs"] if r["ok"])


@pytest.mark.parametrize("i", [0, 1, 2])
def test_two_ranks_follow_the_one_process_loss_curve(two_ranks, i):
    run = two_ranks[1]["runs"][i]
    assert run["run"] == RUNS[i] and run["shard"]["units"] == ["blocks x2", "decoder (embeddings, norm)", "head", "root"]
    assert run["shard"]["quantized_layers"] == (14 if RUNS[i] == "qlora" else 0)  # 7 linears a block, 2 blocks
    assert_same_run(run, RUNS[i])


def test_a_rank_failing_mid_training_is_reported_with_its_traceback(two_ranks):
    failed = two_ranks[1]["runs"][3]
    assert not failed["ok"]
    assert failed["error"].startswith("rank 1: InjectedFailure: injected failure on rank 1 before step 3")
    first, second = failed["failures"]
    assert (first["rank"], first["order"], second["rank"]) == (1, 1, 0)
    assert "raise InjectedFailure" in first["traceback"]
    assert "Timed out" in second["traceback"]  # rank 0 waited on rank 1 in a collective: until the timeout, not forever


def test_a_rank_failing_while_the_others_wait_on_the_store_stops_them_at_once(two_ranks):
    failed = two_ranks[1]["runs"][4]
    assert failed["error"] == ("rank 0: InjectedFailure: injected failure on rank 0 while building the model "
                               "(stopped rank 1)")
    assert "PeerFailed" in failed["failures"][1]["traceback"]


def test_the_run_after_failures_trains_on_a_new_group(two_ranks):
    after = two_ranks[1]["runs"][5]
    assert after["shard"]["cpu_offload"]
    assert_same_run(after, RUNS[5])  # the same as on one process again


def test_one_rank_under_torchrun_is_the_one_process_loop(tmp_path):
    out = launch(tmp_path, 1, "curves.json", "lora:padded")
    run = json.loads((out / "curves.json").read_text())["runs"][0]
    assert run["shard"]["world_size"] == 1
    assert_same_run(run, "lora:padded")


def test_qlora_stores_its_4bit_bytes_as_bf16_under_a_process_group_and_shards_in_bf16():
    """FSDP's bf16 mixed precision would cast uint8 bytes; under a process group (torchrun) the qlora method
    stores the same bits as bf16 elements, which it leaves alone: the same logits as the uint8 layers."""
    import torch.distributed as dist

    spec = RunSpec("qlora")
    method, model, _, _ = reference_setup(spec)
    with torch.inference_mode():
        want = model(input_ids=probe_ids()).logits
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        method, sharded, _, _ = reference_setup(spec)
        stored = {p.dtype for n, p in sharded.named_parameters() if "base_layer" in n and p.dim() == 2
                  and p.shape[1] == 1}
        assert stored == {torch.bfloat16}
        with torch.inference_mode():
            got = sharded(input_ids=probe_ids()).logits
        assert torch.equal(got, want)
        _, record = shard_model(sharded, method.trainable_parameters(sharded),
                                World(backend="gloo", device="cpu"), ShardPolicy(precision="bf16"))
        assert record["quantized_layers"] == 14 and record["precision"].startswith("bf16 compute")
    finally:
        dist.destroy_process_group()
