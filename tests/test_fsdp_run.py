"""``peftbench run`` with each cell sharded over two gloo processes (FSDP2, docs/distributed.md): one set of
result files, written by rank 0, whose training and scores are the one-process run's; a rank that raises
mid-training is recorded in its cell, with its rank and traceback, and the next cells still train.

Three sessions of tiny:llama (3 optimizer steps, 8 scored examples): one process; ``--nproc 2`` (torchrun
started by peftbench); torchrun started by hand with a plugin that makes rank 1 raise. fp32 on the CPU: the
sharded runs differ from one process only by the order of float sums (and, for full fine-tuning, whose
sharded head trains, by the loss computing the head in one piece), so losses agree to LOSS_TOL. LoRA's dropout is 0:
each rank would draw its own masks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
LOSS_TOL = 1e-5    # absolute, on losses near 5 recorded to 6 decimals (seen: identical)
WEIGHT_TOL = 1e-5  # absolute, on the saved artifacts' weights, |w| ~ 0.1-1 (seen: 3e-6)
TIMEOUT_S = 5      # --dist-timeout of the failure session: how long rank 0 waits for the failed rank 1
ARGS = ["--model", "tiny:llama", "--device", "cpu", "--methods", "lora,full", "--tasks", "quickstart",
        "--set", "steps=3", "--set", "batch_size=4", "--set", "lr=5e-3", "--set", "lora.dropout=0",
        "--set", "latency_rounds=0", "--set", "merge_eval=off", "--limit", "8", "--retention", "none",
        "--no-base", "--keep-artifacts", "--json"]


def peftbench(out, *args, launcher=(), env=None, expect=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get(
        "PYTHONPATH", "")]), **(env or {})}
    cmd = [sys.executable, *launcher, "-m", "peftbench", "run", *ARGS, "--output", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr[-4000:]
    return proc


def runs(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def weights(out, key):
    from safetensors.torch import load_file

    files = sorted((out / "artifacts" / key).rglob("*.safetensors"))
    assert files, list((out / "artifacts" / key).rglob("*"))
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_run")
    peftbench(root / "one", "--seeds", "0")
    two = peftbench(root / "two", "--seeds", "0", "--nproc", "2")
    return root, two


def test_two_processes_write_one_set_of_result_files(sessions):
    root, two = sessions
    def listing(out):
        return sorted(str(p.relative_to(out)) for p in out.rglob("*") if "lm_eval_tasks" not in p.parts)

    assert listing(root / "two") == listing(root / "one")  # the same files as one process writes, once
    assert sorted(runs(root / "two")) == ["full--quickstart--seed0", "lora--quickstart--seed0"]
    shown = json.loads(two.stdout)  # one JSON document: rank 0 alone shows the results
    assert len(shown["runs"]) == 2
    session = json.loads((root / "two" / "session.json").read_text())
    assert sorted(session["run_files"]) == ["full--quickstart--seed0.json", "lora--quickstart--seed0.json"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_train_and_score_as_one(sessions, method):
    root, _ = sessions
    key = f"{method}--quickstart--seed0"
    one, two = runs(root / "one")[key], runs(root / "two")[key]
    assert two["status"] == "ok", two.get("error")
    dist = two["train"]["distributed"]
    assert (dist["world_size"], dist["backend"], dist["fsdp"]) == (2, "gloo", "fully_shard (FSDP2)")
    assert dist["units"] == ["blocks x2", "decoder (embeddings, norm)", "head", "root"]
    assert one["train"].get("distributed") is None
    # the chunked loss gathers a frozen sharded head itself; a trained one (full FT) is computed in one piece
    assert two["train"]["loop"]["chunked_loss"] is (method == "lora")
    assert any("whose LM head trains" in n for n in two["train"]["loop"]["notes"]) is (method == "full")
    assert [s for s, _ in two["train"]["losses"]] == [1, 2, 3]
    worst = max(abs(a - b) for (_, a), (_, b) in zip(one["train"]["losses"], two["train"]["losses"], strict=True))
    assert worst < LOSS_TOL, (one["train"]["losses"], two["train"]["losses"])
    assert one["train"]["losses"][-1][1] < one["train"]["losses"][0][1] - 0.2  # it learnt: not flat curves
    assert two["train"]["tokens"] == one["train"]["tokens"]
    assert two["eval"]["metrics"] == one["eval"]["metrics"] and two["eval"]["n_samples"] == 8
    a, b = weights(root / "one", key), weights(root / "two", key)  # the saved artifact: the trained weights
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < WEIGHT_TOL
    assert two["reload"]["ok"]


def test_a_rank_raising_is_recorded_in_its_cell_and_the_next_cells_train(tmp_path):
    out = tmp_path / "fail"
    proc = peftbench(out, "--seeds", "0,1", "--dist-timeout", str(TIMEOUT_S),
                     launcher=["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"],
                     env={"PEFTBENCH_PLUGINS": "fsdp_fail_plugin", "PEFTBENCH_TEST_FAIL": "lora:1:1@2"}, expect=1)
    got = runs(out)
    assert sorted(got) == ["full--quickstart--seed0", "full--quickstart--seed1", "lora--quickstart--seed0",
                           "lora--quickstart--seed1"]
    failed = got.pop("lora--quickstart--seed1")
    assert failed["status"] == "error"
    assert failed["error"]["message"].startswith("rank 1: InjectedFailure: injected on rank 1 after step 2 "
                                                 "(stopped rank 0)")
    tb = failed["error"]["traceback"]
    assert "--- rank 1 (failed first) ---" in tb and "raise InjectedFailure" in tb
    assert "--- rank 0 (then) ---" in tb  # rank 0 stopped at the collective's timeout, not never
    assert all(r["status"] == "ok" and r["train"]["distributed"]["world_size"] == 2 for r in got.values()), \
        {k: r.get("error") for k, r in got.items()}
    assert "1 cell(s) failed" in proc.stderr


def test_nproc_is_left_out_of_the_relaunched_command():
    from peftbench.cli.launch import without_nproc

    assert without_nproc(["run", "--nproc", "2", "--seeds", "0"]) == ["run", "--seeds", "0"]
    assert without_nproc(["run", "--nproc=2", "--json"]) == ["run", "--json"]


@pytest.mark.parametrize("argv,needle", [
    (["--nproc", "0"], "--nproc 0: give a number of processes"),
    (["--dist-timeout", "0"], "--dist-timeout 0: must be more than 0"),
])
def test_bad_nproc_or_timeout_exits_2(argv, needle, tmp_path, capsys):
    from peftbench.testing import run_cli

    code, _, err = run_cli(["run", *ARGS[:4], "--output", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and needle in err and "Traceback" not in err
