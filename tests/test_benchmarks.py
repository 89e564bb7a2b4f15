"""The benchmark scripts run (smoke, CPU, tiny model) and compute their figures consistently; their real
numbers come from the GPU and are committed under results/."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def _throughput(tmp_path, *extra):
    out = tmp_path / "tp.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--model", "tiny:llama",
                           "--device", "cpu", "--json", str(out), *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_train_throughput_smoke_random_tokens(tmp_path):
    data, stdout = _throughput(tmp_path, "--methods", "full,lora", "--steps", "3", "--warmup", "1", "--artifact",
                               "--batch-size", "2", "--seq-len", "16", "--variants", "naive,fast,chunked_loss")
    assert data["settings"]["batch_size"] == 2 and data["settings"]["seq_len"] == 16
    assert data["env"]["source_sha256"] and data["env"]["torch"]
    for r in data["results"]:
        v = r["variants"]
        assert set(v) == {"naive", "fast", "chunked_loss"}
        for name, x in v.items():
            assert x["status"] == "ok", x
            # rows of exactly 16 tokens, nothing padded: tokens/s is 32 tokens per step over the timed steps
            steps = x["step_s"]
            assert len(steps) == 4 and x["step_s_median"] == pytest.approx(statistics.median(steps[1:]), abs=1e-5)
            assert x["tokens_per_s"] == pytest.approx(32 * 3 / sum(steps[1:]), rel=1e-3)
            assert x["steady_tokens_per_s"] == pytest.approx(32 / x["step_s_median"], rel=1e-6)
            assert len(x["losses"]) == 4 and x["mfu"] is None  # no peak FLOPs known on CPU
            assert x["loop"]["loop"] == ("naive" if name == "naive" else "fast")
            # diagnostics: nothing compiled on CPU (fast compiles on CUDA only), no CUDA allocator, host CPU measured
            assert x["compiled_graphs"] == 0 and x["allocator"] is None and x["syncs_in_step"] is None
            assert x["recompiles"] == []
            assert len(x["gc_s"]) == len(steps) and all(g >= 0 for g in x["gc_s"])
            assert len(x["step_cpu"]) == len(steps)
            assert x["host_others_cores"] is None or x["host_others_cores"] >= 0
        for name in ("fast", "chunked_loss"):
            assert v[name]["speedup"] == pytest.approx(v[name]["tokens_per_s"] / v["naive"]["tokens_per_s"])
            assert v[name]["max_loss_dev"] < 1e-4  # the same math on the same batches
        assert v["chunked_loss"]["loop"]["padding_free"] is False and v["chunked_loss"]["loop"]["chunked_loss"]
    assert [r["method"] for r in data["results"]] == ["full", "lora"]
    assert "x naive" in stdout and "fast" in stdout
    full, lora = (r["variants"]["chunked_loss"] for r in data["results"])  # the last variant saves the artifact
    assert full["artifact"]["bytes"] >= 4 * full["total_params"] * 0.95  # every weight, fp32 on CPU
    assert 4 * lora["trainable"] <= lora["artifact"]["bytes"] <= 4 * lora["trainable"] + 64 * 1024
    assert data["results"][0]["variants"]["naive"]["artifact"] is None


def test_throughput_diagnostics_name_busy_hosts_recompiles_and_allocator_churn():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import diagnostics

    results = [{"method": "full", "variants": {
        "naive": {"host_others_cores": 0.2, "compiled_graphs": 0, "allocator": None},
        "fast": {"host_others_cores": 3.46, "compiled_graphs": 2,
                 "allocator": {"num_device_alloc": 40, "num_device_free": 12, "num_alloc_retries": 1}}}}]
    results[0]["variants"]["naive"]["syncs_in_step"] = [{"where": "peftbench/training.py:380", "count": 1}]
    assert diagnostics(results)[0] == "full naive: device syncs in a step: peftbench/training.py:380 x1"
    del results[0]["variants"]["naive"]["syncs_in_step"]
    results[0]["variants"]["naive"].update(gc_s=[0.0, 0.12, 0.0], gc_full_collections=1, step_cpu=[0, 40, 40],
                                           cpu_packages={"0": 0, "40": 1})
    assert diagnostics(results)[0] == ("full naive: garbage collection 0.12 s in all (1 full), at most 120 ms in one "
                                       "step; steps ended on CPU packages 0: 1, 1: 2")
    for k in ("gc_s", "gc_full_collections", "step_cpu", "cpu_packages"):
        del results[0]["variants"]["naive"][k]
    assert diagnostics(results) == ["full fast: host busy: other processes kept 3.5 CPU cores busy; 2 graphs compiled; "
                                    "40 device mallocs, 12 frees, 1 retries"]
    results[0]["variants"]["fast"]["recompiles"] = [{"step": 12, "function": "forward (modeling_layers.py:89)",
                                                     "guard": "0/0: s0*s1 > 4096"}]
    assert diagnostics(results)[0] == ("full fast: host busy: other processes kept 3.5 CPU cores busy; recompiled "
                                       "forward (modeling_layers.py:89) at step 12: 0/0: s0*s1 > 4096; 2 graphs "
                                       "compiled; 40 device mallocs, 12 frees, 1 retries")


def test_gc_clock_times_collections_and_counts_full_ones():
    import gc

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import GcClock, cpu_packages, current_cpu

    junk = [[i] for i in range(200_000)]  # something for a full collection to walk
    with GcClock() as clock:
        gc.collect()
        gc.collect(0)
    assert clock.full == 1 and clock.take() > 0 and clock.take() == 0.0
    assert clock._hook not in gc.callbacks
    del junk
    cpu = current_cpu()
    if cpu is not None:  # Linux
        assert 0 <= cpu < 4096 and set(cpu_packages({cpu})) <= {str(cpu)}


def test_recompilations_are_read_as_the_steps_go(monkeypatch):
    """train() resets dynamo when it ends (which clears its guard failures), so the benchmark reads them after
    every step: each new one with the step it was seen after."""
    import collections

    from torch._dynamo import utils

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import guard_failures_seen, new_guard_failures

    def block(x):
        return x

    fake = collections.defaultdict(list)
    monkeypatch.setattr(utils, "guard_failures", fake)
    seen = guard_failures_seen()
    assert new_guard_failures(seen, 1) == []
    fake[block.__code__].append("[0/1] 0/0: args[0].size()[0]*args[0].size()[1] > 4096  # (cpp.py:2273)\nstack")
    (event,) = new_guard_failures(seen, 12)
    assert event["step"] == 12 and event["function"].startswith("block (test_benchmarks.py:")
    assert event["guard"] == "[0/1] 0/0: args[0].size()[0]*args[0].size()[1] > 4096 # (cpp.py:2273)"
    assert new_guard_failures(seen, 13) == []  # each failure reported once


def test_sync_sites_name_where_the_step_waited_for_the_device():
    import types

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import sync_sites

    def warn(path, line, text="called a synchronizing CUDA operation"):
        return types.SimpleNamespace(message=UserWarning(text), filename=path, lineno=line)

    caught = [warn("/opt/venv/lib/python3.12/site-packages/transformers/masking_utils.py", 120),
              warn("/work/main/peftbench/training.py", 380), warn("/work/main/peftbench/training.py", 380),
              warn("/opt/venv/lib/python3.12/site-packages/torch/_dynamo/x.py", 5, "something else")]
    assert sync_sites(caught) == [{"where": "peftbench/training.py:380", "count": 2},
                                  {"where": "transformers/masking_utils.py:120", "count": 1}]


def test_train_throughput_variable_lengths_pack_and_count_real_tokens(tmp_path):
    data, _ = _throughput(tmp_path, "--methods", "full", "--steps", "3", "--warmup", "1", "--batch-size", "4",
                          "--lengths", "4-24", "--variants", "naive,padding_free")
    v = data["results"][0]["variants"]
    assert data["settings"]["seq_len"] == 24 and data["settings"]["lengths"] == "4-24"
    assert v["naive"]["loop"]["padding_fraction"] > v["padding_free"]["loop"]["padding_fraction"]
    assert v["padding_free"]["max_loss_dev"] < 1e-4


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs the shared data folder")
def test_train_throughput_on_real_task_data_packs_and_keeps_the_loss_curve(tmp_path):
    data, _ = _throughput(tmp_path, "--methods", "lora", "--task", "sst2", "--data-dir", str(SHARED_DATA),
                          "--steps", "4", "--warmup", "1", "--batch-size", "8", "--variants", "naive,fast")
    v = data["results"][0]["variants"]
    assert v["naive"]["loop"]["padding_fraction"] > 0.1  # real examples differ in length
    assert v["fast"]["loop"]["padding_fraction"] < v["naive"]["loop"]["padding_fraction"]
    assert v["fast"]["max_loss_dev"] < 1e-4


def test_flops_per_token():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import flops_per_token

    assert flops_per_token(100, 5, True, 2, 8, 16) == 600 + 12 * 2 * 8 * 16
    assert flops_per_token(100, 5, False, 2, 8, 16) == 400 + 30 + 12 * 2 * 8 * 16


def test_matmul_params_count_the_head_once_and_not_the_input_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import matmul_params

    from peftbench.models.sources import load_model

    model = load_model("tiny:llama", device="cpu")[0]
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is emb
    assert matmul_params(model) == (total if tied else total - emb.numel())


def test_loss_speed_smoke():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/loss_speed.py"), "--device", "cpu", "--tokens", "64",
                           "--hidden", "16", "--vocab", "500", "--reps", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chunked / plain time:" in done.stdout and "plain" in done.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks" / "device").glob("*.sh")))
def test_device_scripts_parse(script):
    """The GPU scripts only run on the lent machine: at least check here that bash can parse them."""
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_loss_floor_compares_curves_across_files(tmp_path):
    def write(name, variant, losses):
        path = tmp_path / name
        path.write_text(json.dumps({"results": [
            {"method": m, "variants": {variant: {"status": "ok", "losses": ls}}} for m, ls in losses.items()]}))
        return f"{path}:{variant}"

    ref = write("a.json", "naive", {"lora": [2.0] * 20, "full": [4.0] * 20})
    other = write("b.json", "compile", {"lora": [2.0] * 9 + [2.2] + [2.0] * 10})  # one step 10 % high
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/loss_floor.py"), ref, other],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lora" in done.stdout and "full" not in done.stdout.split("reference")[1].split("\n", 1)[1]
    assert "max step 10.00%, max 10-step window 1.00%" in done.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks/loss_floor.py"), ref, f"{tmp_path}/a.json:fast"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no method has a finished variant 'fast'" in bad.stderr


def test_gc_cost_times_collections_with_a_model_loaded():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gc_cost.py"), "--repeat", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny:llama" in done.stdout and done.stdout.count(" s") >= 2


def test_latency_agreement_compares_recorded_or_fastest_round_ratios():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from latency_agreement import compare, ratio

    def shape(base, unmerged, recorded):
        return {"batch_size": 1, "prompt_tokens": 8, "overhead": {"unmerged": {"ratio": recorded}},
                "modes": {"base": {"samples": {"decode": base}}, "unmerged": {"samples": {"decode": unmerged}}}}

    a = shape([10.0, 20.0, 11.0], [15.0, 30.0, 16.0], 0.5)
    assert ratio(a, "unmerged", "median") == 0.5
    assert ratio(a, "unmerged", "min") == pytest.approx(15.0 / 10.0 - 1)
    b = shape([20.0, 21.0, 22.0], [31.0, 33.0, 40.0], 0.6)      # recorded +60 %; fastest rounds +55 %
    run = {"lora": {"latency": {"regimes": {"eager": [a]}}}}
    other = {"lora": {"latency": {"regimes": {"eager": [b]}}}}
    rows, bad = compare(run, other, 0.05)
    assert rows[0][-1] == pytest.approx(1.5 / 1.6 - 1) and len(bad) == 1      # -6.25 %: beyond 5 %
    rows, bad = compare(run, other, 0.05, "min")
    assert rows[0][-1] == pytest.approx(1.5 / 1.55 - 1) and bad == []          # -3.2 %
