"""benchmarks/render_results.py: docs/results.md and the README headline rendered from a reference folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from peftbench.testing import run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks/render_results.py"


def _render(tmp_path, *extra):
    args = [sys.executable, str(SCRIPT), "--reference", str(tmp_path / "ref"), "--doc", str(tmp_path / "docs/results.md"),
            "--plots", str(tmp_path / "docs/results/plots"), "--readme", str(tmp_path / "README.md"), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_reference_results_render_reproducibly_with_every_section(capsys, tmp_path):
    ref = tmp_path / "ref"
    code, _, err = run_cli(["run", "--methods", "lora,full", "--model", "tiny:llama", "--device", "cpu", "--seeds", "0,1",
                            "--output", str(ref / "quickstart"), "--set", "steps=2", "--set", "latency_rounds=3",
                            "--set", "latency_new_tokens=2", "--set", "latency_prompt_lengths=4",
                            "--set", "merge_precisions=false", "--retention", "none"], capsys)
    assert code == 0, err
    shape = ref / "8b-shape"
    shape.mkdir()
    shutil.copy(ROOT / "results/throughput-gpu/8b-all.json", shape / "throughput.json")
    capped = json.loads((ROOT / "results/throughput-gpu/8b-all.json").read_text())  # as if full did not fit 79 GiB
    full = next(r for r in capped["results"] if r["method"] == "full")
    full["variants"]["fast"] = {"status": "oom", "peak_memory_bytes": 78 * 2**30, "error": "CUDA out of memory"}
    (shape / "throughput-h100.json").write_text(json.dumps(capped))
    shutil.copytree(ROOT / "results/throughput-gpu/8b-latency.partial", shape, dirs_exist_ok=True)
    (tmp_path / "README.md").write_text("# x\n\n<!-- results:headline -->\nstale\n<!-- /results:headline -->\nend\n")

    assert _render(tmp_path, "--check").returncode == 1  # nothing rendered yet
    done = _render(tmp_path)
    assert done.returncode == 0, done.stderr
    doc = (tmp_path / "docs/results.md").read_text()
    for heading in ("## What was run", "## Cells", "## Leaderboards", "## Merge fidelity", "## Latency",
                    "## Pareto plots", "## Claims",
                    "## Cost at 8B scale", "## What these numbers do and do not show"):
        assert heading in doc, heading
    assert "5 cells: 5 ok." in doc  # lora and full x 2 seeds, and the base row
    assert "carry no accuracy" in doc and "Training, without activation checkpointing" in doc
    summary = doc.split("| method | trainable | artifact |")[1].split("\n\n")[0]
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines()[2:]}
    assert "| yes / not measured |" in rows["lora"]
    assert "| **no** (**out of memory** at 78.0 GiB) / not measured |" in rows["full"]
    assert "| 15.0 GiB |" in rows["full"]  # the artifact comes from the uncapped run
    assert "with activation checkpointing" not in doc.replace("without activation checkpointing", "")  # not given
    plots = sorted((tmp_path / "docs/results/plots").glob("*.png"))
    assert plots and all(f"results/plots/{p.name}" in doc for p in plots)
    readme = (tmp_path / "README.md").read_text()
    assert "stale" not in readme and "| base (zero-shot) |" in readme and readme.endswith("end\n")
    head = readme.split("<!-- results:headline -->\n")[1].split("<!-- /results:headline -->")[0]
    assert head.splitlines()[0] == "| method | quickstart | trainable | peak memory (quickstart) | tokens/s (quickstart) |"
    assert {line.split("|")[1].strip() for line in head.splitlines()[2:] if line.startswith("|")} == \
        {"base (zero-shot)", "lora", "full"}
    assert "| quickstart | lora | 0, 1 |" in doc.split("## Merge fidelity")[1]   # both seeds' merges, one row

    # the same files give the same text: --check passes; a hand edit or a changed result file makes it fail
    assert _render(tmp_path, "--check").returncode == 0
    (tmp_path / "docs/results.md").write_text(doc.replace("## Cells", "## Cells (edited)"))
    assert _render(tmp_path, "--check").returncode == 1
    assert _render(tmp_path).returncode == 0 and _render(tmp_path, "--check").returncode == 0
    run = next((ref / "quickstart/runs").glob("lora--*seed1.json"))
    data = json.loads(run.read_text())
    data["eval"]["metrics"]["acc"] = 1.0
    run.write_text(json.dumps(data))  # a result edited after its session wrote it is refused, not rendered
    done = _render(tmp_path)
    assert done.returncode == 2 and "changed or truncated" in done.stderr and "Traceback" not in done.stderr


def test_cells_that_are_not_ok_are_listed_with_their_reason():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_results import cells_section

    runs = [{"key": "lora--t--seed0", "status": "ok"}, {"key": "full--t--seed0", "status": "oom",
                                                        "error": {"message": "CUDA out of memory at 79.1 GiB"}},
            {"key": "qlora--t--seed0", "status": "skipped", "reason": "needs a CUDA device"}]
    assert cells_section(runs) == ("3 cells: 1 ok, 1 oom, 1 skipped.\n\n| cell | status | reason |\n|---|---|---|\n"
                                   "| full--t--seed0 | oom | CUDA out of memory at 79.1 GiB |\n"
                                   "| qlora--t--seed0 | skipped | needs a CUDA device |")


def test_the_headline_takes_every_methods_cost_from_one_task():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_results import headline

    def rec(method, task, mem):
        return {"method": method, "task": task, "score": 0.5, "trainable": 1e6, "peak_memory_bytes": mem * 2**30,
                "tokens_per_s": 100.0}

    # 'a' lacks full; 'b' has both: the cost columns come from 'b' for both methods, not 'a' for lora
    records = [rec("lora", "a", 9), rec("lora", "b", 1), rec("full", "b", 2)]
    lines = headline(records, ["a", "b"]).splitlines()
    assert lines[0].endswith("| peak memory (b) | tokens/s (b) |")
    assert "| 1.0 GiB |" in lines[2] and "| 2.0 GiB |" in lines[3]
    # no task where every method finished: each method's first task, and the header says so
    lines = headline([rec("lora", "a", 9), rec("full", "b", 2)], ["a", "b"]).splitlines()
    assert "peak memory (each method's first task)" in lines[0] and "| 9.0 GiB |" in lines[2]


def test_the_headline_says_when_it_is_partial_or_its_cost_was_shared():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_results import headline_note

    alone = [{"key": f"lora--t--seed{s}", "status": "ok", "gpu_others_bytes": 0, "host_others_cores": 0.1}
             for s in range(3)]
    assert headline_note(alone) == ""
    pending = alone[:2] + [{"key": "lora--t--seed2", "status": "cancelled"}]
    assert headline_note(pending).startswith("**Partial**: 2 of 3 cells are done so far")
    shared = [dict(alone[0], gpu_others_bytes=8 * 2**30), dict(alone[1], host_others_cores=3.0)]
    note = headline_note(shared)
    assert "Partial" not in note and "'GPU shared' / 'host busy'" in note
    why = "no method's 95 % CI clears the majority class (0.622)"
    note = headline_note(alone, {"boolq": why})
    assert note.startswith(f"**Uninformative**: boolq separate no method from guessing (boolq: {why})")


def test_the_claims_section_names_the_interval_and_each_excluded_task():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_results import claims_intro

    why = "no method's 95 % CI clears the majority class (0.622)"
    verdicts = [{"task": "boolq", "verdict": f"excluded (uninformative: {why})"},
                {"task": "sst2", "verdict": "inconclusive"}, {"task": "boolq", "verdict": "does not hold (no CI)"}]
    tasks = {"boolq": {"description": "Yes/no questions asked without their passage: tests what it knows. Train 9"}}
    text = claims_intro(verdicts, tasks)
    assert "hierarchical bootstrap" in text and "[statistics.md](statistics.md)" in text
    assert "`boolq` is uninformative on this model" in text and "sst2`" not in text
    assert text.endswith(f"\n- `boolq` (Yes/no questions asked without their passage): {why}.")
    assert "uninformative" not in claims_intro(verdicts[1:], tasks)


def test_the_committed_results_doc_is_what_results_reference_gives():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}: python benchmarks/render_results.py"


def test_an_empty_reference_says_not_run_yet(tmp_path):
    (tmp_path / "README.md").write_text("# x\n")
    done = _render(tmp_path)
    assert done.returncode == 0, done.stderr
    doc = (tmp_path / "docs/results.md").read_text()
    assert doc.count("Not run yet.") == 2 and (tmp_path / "README.md").read_text() == "# x\n"


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lossy_merges_beyond_tolerance_are_explained_from_the_unmerge_check():
    note = _module().lossy_merge_note

    def run(task, seed, rel, unmerge, ok, delta=0.001):
        return {"status": "ok", "method": "qlora", "task": task, "seed": seed,
                "merge": {"lossy": True, "ok": ok, "tolerance_rel": 0.02, "max_rel_logit_diff": rel,
                          "unmerge_max_rel_logit_diff": unmerge, "eval": {"delta": delta}}}

    lora = {"status": "ok", "method": "lora", "task": "sst2", "seed": 0,
            "merge": {"lossy": False, "ok": False, "tolerance_rel": 0.02, "max_rel_logit_diff": 0.5}}
    assert note([run("sst2", 0, 0.01, 0.01, True), lora]) == ""   # nothing lossy flagged (lora is not lossy)
    runs = [run("sst2", 1, 0.031, 0.0311, False, 0.0015), run("boolq", 2, 0.022, 0.022, False, -0.002),
            run("sst2", 0, 0.010, 0.010, True)]
    text = note(runs)
    assert text.startswith("- **Lossy merges flagged.** 2 of 3 qlora merges differ") and text.endswith("\n")
    assert "boolq seed 2 (2.2 %), sst2 seed 1 (3.1 %)" in text and "2 % logit tolerance" in text
    assert "In all 3 cells the model after unmerging" in text and "-0.20 to +0.15 points" in text
    runs[2]["merge"]["unmerge_max_rel_logit_diff"] = 0.002   # unmerging restores one cell: not the dequantization
    assert "after unmerging" not in note(runs)
    for r, rel in zip(runs[:2], (1e-5, 3e-6), strict=True):   # newer files compare on the same base directly
        r["merge"]["same_base"] = {"max_rel_logit_diff": rel, "ok": True}
    newer = note(runs)
    assert "(`merge.same_base`) every one is within it (at most 0.001 %)" in newer
    assert "marks them 'dequantization > tol'" in newer and "marks them 'merge mismatch'" in text
