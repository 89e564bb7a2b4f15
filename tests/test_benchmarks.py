"""The benchmark scripts run (smoke, CPU, tiny model) and compute their figures consistently; their real
numbers come from the GPU and are committed under results/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_train_throughput_smoke(tmp_path):
    out = tmp_path / "tp.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--model", "tiny:llama",
                           "--device", "cpu", "--methods", "full,lora", "--steps", "2", "--warmup", "1",
                           "--batch-size", "2", "--seq-len", "16", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["env"]["batch_size"] == 2 and data["env"]["seq_len"] == 16
    for r in data["results"]:
        for loop in ("naive", "peftbench"):
            assert r[loop]["tokens_per_s"] == pytest.approx(2 * 16 / r[loop]["step_s_median"])
            assert len(r[loop]["losses"]) == 3 and r[loop]["mfu"] is None  # no peak FLOPs known on CPU
        assert r["speedup"] == pytest.approx(r["peftbench"]["tokens_per_s"] / r["naive"]["tokens_per_s"])
    assert [r["method"] for r in data["results"]] == ["full", "lora"]
    assert "speedup" in done.stdout


def test_flops_per_token():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import flops_per_token

    assert flops_per_token(100, True, 2, 8, 16) == 600 + 12 * 2 * 8 * 16
    assert flops_per_token(100, False, 2, 8, 16) == 400 + 12 * 2 * 8 * 16
