"""The example plugin's tests: the method contract suite (one class), and the entry-point path end to end
through the installed distribution: discovery, `peftbench methods`, the plugin's task and command, a run."""

import json

from peftbench.testing import MethodContract, run_cli


class TestIA3(MethodContract):  # the whole contract suite, the same the built-in methods pass
    method_name = "ia3"


class TestIA3AttentionOnly(MethodContract):
    method_name = "ia3"
    method_options = {"target_modules": ["k_proj", "v_proj"], "feedforward_modules": []}


cli = run_cli  # peftbench.testing runs `peftbench ARGV` in-process


def test_found_through_its_entry_point(capsys):
    code, out, err = cli(["plugins", "--json"], capsys)
    assert code == 0, err
    ia3 = next(p for p in json.loads(out) if p["distribution"] == "peftbench-ia3")
    assert ia3["distribution"] == "peftbench-ia3" and ia3["version"] == "0.1.0"
    assert set(ia3["hooks"]) == {"register_methods", "register_tasks", "register_commands"}
    assert ia3["methods"] == ["ia3"]


def test_listed_with_its_options(capsys):
    code, out, err = cli(["methods", "--json"], capsys)
    assert code == 0, err
    ia3 = next(m for m in json.loads(out) if m["name"] == "ia3")
    assert ia3["available"] and ia3["capabilities"]["mergeable"] and not ia3["capabilities"]["can_stack"]
    assert {o["name"] for o in ia3["options"]} == {"target_modules", "feedforward_modules"}


def test_bad_option_is_a_clear_error(capsys):
    code, _, err = cli(["run", "--methods", "ia3", "--model", "tiny:llama", "--set",
                        "ia3.feedforward_modules=q_proj"], capsys)
    assert code == 2 and "feedforward_modules" in err and "Traceback" not in err


def test_its_task_and_command(capsys):
    code, out, err = cli(["tasks", "--json"], capsys)
    assert code == 0, err
    assert "bigger" in {t["name"] for t in json.loads(out)}
    code, out, err = cli(["ia3-targets", "--model", "tiny:llama"], capsys)
    assert code == 0, err
    # tiny:llama, 2 layers: k_proj and v_proj outputs (2 kv heads x 16 = 32 each), down_proj input (128)
    assert out.strip() == "ia3 on tiny:llama: scales down_proj, k_proj, v_proj; 384 trainable parameters"


def test_benchmarked_beside_lora(capsys, tmp_path):
    out_dir = tmp_path / "s"
    code, out, err = cli(["run", "--methods", "lora,ia3", "--model", "tiny:llama", "--tasks", "quickstart,bigger",
                          "--output", str(out_dir), "--set", "steps=3", "--set", "limit=16", "--set",
                          "latency_rounds=0", "--set", "merge_precisions=false"], capsys)
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out_dir / "runs").glob("*.json")}
    for task in ("quickstart", "bigger"):
        for method in ("lora", "ia3"):
            r = runs[f"{method}--{task}--seed0"]
            assert r["status"] == "ok", r.get("error")
            assert r["eval"]["n_samples"] == 16 and r["merge"]["ok"] and r["reload"]["ok"]
    assert runs["ia3--bigger--seed0"]["params"]["trainable"] == 384
    assert "ia3" in out and "bigger" in out  # the leaderboards
