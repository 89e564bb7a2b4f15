import json

import pytest
from fakes import fake_cells

from peftbench.testing import run_cli

TINY = ["--model", "tiny:llama", "--device", "cpu"]


@pytest.mark.parametrize("argv,needles", [
    (["run", "--methods", "lorra", *TINY], ["Unknown method 'lorra'", "Did you mean 'lora'", "--methods"]),
    (["run", "--methods", "lora", "--tasks", "quikstart", *TINY], ["Unknown task 'quikstart'", "Did you mean 'quickstart'"]),
    (["run", "--methods", "lora", "--set", "stepz=3", *TINY], ["unknown training option 'stepz'", "Did you mean 'steps'"]),
    (["run", "--methods", "lora", "--set", "steps=many", *TINY], ["'steps'", "expected an integer", "many"]),
    (["run", "--methods", "lora", "--set", "lora.rank=4", *TINY], ["Unknown option 'rank'", "method 'lora'"]),
    (["run", "--methods", "lora", "--set", "lora.r=0", *TINY], ["'r'", "positive integer"]),
    (["run", "--methods", "lora", "--set", "adapter.r=4", *TINY], ["adapter", "--methods does not run"]),
    (["run", "--methods", "lora", "--seeds", "0,one", *TINY], ["--seeds", "integers"]),
    (["run", "--methods", "lora", "--model", "/nonexistent/model/dir", "--device", "cpu"], ["/nonexistent/model/dir"]),
    (["run", "--methods", "adapter@pf.x", *TINY], ["variant 'adapter@pf.x'", "letters, digits", "--methods"]),
    (["run", "--methods", "adaptr@pf", *TINY], ["Unknown method 'adaptr'", "Did you mean 'adapter'"]),
    (["run", "--methods", "adapter,bottleneck@pf,adapter@pf", *TINY], ["names a method twice"]),
    (["run", "--methods", "adapter", "--set", "adapter@pf.placement=pfeiffer", *TINY],
     ["adapter@pf", "--methods does not run"]),
    (["run", "--methods", "adapter@pf", "--set", "adapter@pf.placement=sideways", *TINY], ["placement", "sideways"]),
])
def test_bad_input_exits_2_with_a_clear_message(argv, needles, capsys, tmp_path):
    code, out, err = run_cli([*argv, "--output", str(tmp_path / "o")], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_variants_of_a_method_run_side_by_side_with_their_own_options(capsys, tmp_path):
    """NAME@LABEL runs method NAME as a separate row with its own options: here the series adapter in both
    placements, Houlsby (after attention and MLP) and Pfeiffer (after the MLP only: half the adapters)."""
    out = tmp_path / "variants"
    code, _, err = run_cli(["run", "--methods", "adapter,bottleneck@pfeiffer", *TINY, "--no-base", "--output", str(out),
                            "--set", "steps=2", "--set", "evaluate=off", "--set", "latency_rounds=0",
                            "--set", "adapter@pfeiffer.placement=pfeiffer"], capsys)
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    houlsby, pfeiffer = runs["adapter--quickstart--seed0"], runs["adapter@pfeiffer--quickstart--seed0"]
    assert houlsby["status"] == pfeiffer["status"] == "ok" and pfeiffer["method"] == "adapter@pfeiffer"
    assert houlsby["config"]["method"]["placement"] == "houlsby"
    assert pfeiffer["config"]["method"]["placement"] == "pfeiffer"
    assert pfeiffer["params"]["trainable"] * 2 == houlsby["params"]["trainable"]
    assert pfeiffer["config"]["train"]["lr"] == houlsby["config"]["train"]["lr"]  # the method's default lr
    code, board, err = run_cli(["report", str(out), "--markdown"], capsys)
    assert code == 0 and "| adapter@pfeiffer |" in board, err


def test_a_gguf_that_is_not_one(capsys, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not really")
    code, _, err = run_cli(["run", "--methods", "lora", "--model", str(fake), "--device", "cpu",
                            "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and str(fake) in err and "GGUF" in err


def test_task_yaml_with_a_missing_field(capsys, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "task.yaml").write_text("name: broken\nversion: 1\n")
    code, _, err = run_cli(["run", "--methods", "lora", "--tasks", "broken", "--tasks-dir", str(tmp_path), *TINY,
                            "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing required field" in err and "description" in err and "task.yaml" in err


def test_output_holding_another_session_needs_resume(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "session.json").write_text(json.dumps({"session_id": "x", "config": {"model": "tiny:llama"}}))
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "--resume" in err and "another session" in err


def test_methods_lists_the_builtins_as_json(capsys):
    code, out, _ = run_cli(["methods", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"lora", "qlora", "adapter", "full"} <= set(rows)
    assert rows["lora"]["capabilities"]["mergeable"] is True and rows["adapter"]["capabilities"]["mergeable"] is False
    assert rows["full"]["aliases"] == ["full-ft", "fft"]
    assert all(o["help"] for r in rows.values() for o in r["options"])


def test_tasks_and_plugins_json(capsys):
    code, out, _ = run_cli(["tasks", "--json"], capsys)
    assert code == 0 and "quickstart" in [t["name"] for t in json.loads(out)]
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["peftbench_plugins.lora"]["methods"] == ["lora"]
    assert "register_methods" in rows["peftbench_plugins.lora"]["hooks"]


@pytest.mark.slow
def test_end_to_end_four_methods_on_tiny_llama_with_real_lm_eval(capsys, tmp_path):
    out = tmp_path / "session"
    code, stdout, err = run_cli(["run", "--methods", "lora,qlora,adapter,full", *TINY, "--tasks", "quickstart",
                                 "--output", str(out), "--set", "steps=4", "--set", "limit=40",
                                 "--set", "latency_rounds=2", "--set", "latency_new_tokens=4",
                                 "--set", "latency_prompt_lengths=8", "--set", "latency_stack=2",
                                 "--set", "merge_precisions=on"], capsys)  # off on CPU by default
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {f"{m}--quickstart--seed0" for m in ("base", "lora", "qlora", "adapter", "full")}
    for key, r in runs.items():
        assert r["status"] == "ok", (key, r.get("error"))
        lm = r["eval"]["lm_eval"]
        assert lm["results"]["peftbench_quickstart"]["sample_len"] == 40  # real lm-eval scored 40 documents
        assert 0.0 <= r["eval"]["metrics"]["acc"] <= 1.0 and r["eval"]["stderr"]["acc"] > 0
        if key.startswith("base"):
            continue
        assert r["train"]["steps"] == 4 and r["train"]["tokens"] > 0 and r["train"]["peak_memory_bytes"] > 0
        loop = r["train"]["loop"]  # the fast loop, recorded as it ran (compile: off on CPU by default)
        assert (loop["loop"], loop["padding_free"], loop["chunked_loss"], loop["compile"]) == ("fast", True, True, "off")
        assert r["artifact"]["bytes"] > 0 and r["reload"]["ok"] is True
        shape = r["latency"]["regimes"]["eager"][0]
        assert (shape["batch_size"], shape["prompt_tokens"], shape["new_tokens"]) == (1, 8, 4)
        assert shape["modes"]["unmerged"]["decode_ms_per_token"]["median"] > 0
        assert len(shape["modes"]["base"]["samples"]["decode"]) == 2  # latency_rounds
        method = key.split("--")[0]
        expected = {"unmerged"} | ({"merged"} if method in ("lora", "qlora") else set()) | (
            {"stack2"} if method != "full" else set())
        assert set(shape["overhead"]) == expected, key
        assert r["latency"]["summary"]["overhead"].keys() == expected
    p = {k.split("--")[0]: runs[k]["params"] for k in runs}
    assert p["full"]["trainable"] == p["full"]["total"]
    assert 0 < p["adapter"]["trainable"] < p["lora"]["trainable"] < p["full"]["trainable"]
    for m in ("lora", "qlora"):  # merged logits match unmerged; unmerge restores them
        merge = runs[f"{m}--quickstart--seed0"]["merge"]
        assert merge["ok"] and merge["unmerge_ok"]
        # merged vs the unmerged model after unmerging (the same base weights): within fp32 rounding
        same = merge["same_base"]
        assert same["ok"] and same["greedy_agreement"] == 1.0 and same["max_rel_logit_diff"] <= 1e-4
        assert merge["eval"]["reference"] == runs[f"{m}--quickstart--seed0"]["eval"]["metrics"]["acc"]
        assert merge["eval"]["delta"] == pytest.approx(merge["eval"]["score"] - merge["eval"]["reference"])
        prec = merge["precision"]
        for variant in ("merge_fp32_then_cast", "merge_in_bf16"):
            assert 0.5 <= prec[variant]["greedy_agreement"] <= 1.0
            assert prec[variant]["eval"]["reference"] == prec["unmerged"]["score"]
            # per-example values beside each score, on the same 40 documents, agreeing with the score
            s, ref = prec[variant]["eval"]["samples"], prec["unmerged"]["samples"]
            assert sorted(s["doc_id"]) == sorted(ref["doc_id"]) and len(s["doc_id"]) == 40
            assert sum(s["acc"]) / 40 == pytest.approx(prec[variant]["eval"]["score"])
        assert len(merge["eval"]["samples"]["acc"]) == 40
    assert runs["qlora--quickstart--seed0"]["merge"]["lossy"]
    full_bytes = runs["full--quickstart--seed0"]["artifact"]["bytes"]
    assert full_bytes >= 4 * p["full"]["total"] * 0.95  # the whole model in fp32
    for m in ("lora", "adapter"):  # fp32 trainable weights plus small metadata (config, safetensors header)
        art = runs[f"{m}--quickstart--seed0"]["artifact"]["bytes"]
        assert 4 * p[m]["trainable"] <= art <= 4 * p[m]["trainable"] + 64 * 1024, (m, art)
    session = json.loads((out / "session.json").read_text())
    assert session["status"] == "finished" and set(session["run_files"]) == {f"{k}.json" for k in runs}
    assert "quickstart" in stdout and "lora" in stdout  # the leaderboard was printed
    assert "random weights: scores carry no accuracy" in stdout  # tiny:llama is labelled as such

    # --resume (with the same plan: a changed one is refused) skips finished cells; a second render reproduces
    # the tables
    code, _, err = run_cli(["run", "--methods", "lora,qlora,adapter,full", *TINY, "--output", str(out), "--resume",
                            "--set", "steps=4", "--set", "limit=40", "--set", "latency_rounds=2",
                            "--set", "latency_new_tokens=4", "--set", "latency_prompt_lengths=8",
                            "--set", "latency_stack=2", "--set", "merge_precisions=on"], capsys)
    assert code == 0 and err.count("kept from the earlier run") == 5
    code, md, _ = run_cli(["report", str(out), "--markdown"], capsys)
    assert code == 0 and "| method |" in md and "base (zero-shot)" in md


def test_naive_flag_trains_with_the_plain_loop_and_records_it(capsys, tmp_path):
    out = tmp_path / "naive"
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(out), "--naive", "--no-base",
                            "--set", "steps=2", "--set", "limit=8", "--set", "latency_rounds=0",
                            "--set", "merge_eval=false", "--set", "merge_precisions=false"], capsys)
    assert code == 0, err
    run = json.loads((out / "runs" / "lora--quickstart--seed0.json").read_text())
    loop = run["train"]["loop"]
    assert (loop["loop"], loop["padding_free"], loop["chunked_loss"], loop["compile"]) == ("naive", False, False, "off")
    assert run["config"]["train"]["loop"] == "naive" and loop["padding_fraction"] > 0


def test_evaluate_off_is_a_cost_only_run(capsys, tmp_path):
    """evaluate=off (and, by default, any shape: model) trains, saves, checks merge and reload and times, but
    scores nothing: no lm-eval number for random weights."""
    out = tmp_path / "cost"
    code, stdout, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(out), "--set", "steps=2",
                                 "--set", "evaluate=off", "--set", "merge_precisions=on", "--set", "latency_rounds=1",
                                 "--set", "latency_new_tokens=2",
                                 "--set", "latency_prompt_lengths=4"], capsys)
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    base, lora = runs["base--quickstart--seed0"], runs["lora--quickstart--seed0"]
    assert base["status"] == "skipped" and "evaluation off" in base["reason"]
    assert lora["status"] == "ok" and lora["eval"] is None and "evaluation off" in lora["reason"]
    assert lora["train"]["steps"] == 2 and lora["artifact"]["bytes"] > 0 and lora["reload"]["ok"]
    assert lora["merge"]["ok"] and "eval" not in lora["merge"]
    assert lora["merge"]["precision"]["unmerged"] is None
    assert lora["merge"]["precision"]["merge_in_bf16"]["eval"] is None
    assert lora["merge"]["precision"]["merge_in_bf16"]["greedy_agreement"] > 0.5
    assert lora["latency"]["regimes"]["eager"][0]["overhead"]["unmerged"]["ratio"] is not None


@pytest.mark.parametrize("once", [True, False])
def test_latency_is_timed_once_per_method_and_reused_marked(capsys, tmp_path, once):
    """Latency depends on a method's shapes, not its trained values: by default the first cell of a method
    is timed and the others reuse its figures, naming that cell; latency_once=false times every cell."""
    out = tmp_path / "once"
    code, _, err = run_cli(["run", "--methods", "lora,adapter", *TINY, "--seeds", "0,1", "--no-base",
                            "--output", str(out), "--set", "steps=2", "--set", "evaluate=off",
                            "--set", "merge_precisions=false", "--set", "latency_rounds=1",
                            "--set", "latency_new_tokens=2", "--set", "latency_prompt_lengths=4",
                            "--set", f"latency_once={str(once).lower()}"], capsys)
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    for m in ("lora", "adapter"):
        first, second = runs[f"{m}--quickstart--seed0"], runs[f"{m}--quickstart--seed1"]
        assert "measured_in" not in first["latency"] and "latency" in first["timings"]
        if once:
            assert second["latency"]["measured_in"] == f"{m}--quickstart--seed0"
            assert second["latency"]["regimes"] == first["latency"]["regimes"]
            assert "latency" not in second["timings"]  # not timed again
        else:
            assert "measured_in" not in second["latency"] and "latency" in second["timings"]
    # the report's latency table shows a reused timing once, on the row of the cell that measured it
    code, report, err = run_cli(["report", str(out), "--markdown"], capsys)
    assert code == 0, err
    rows = [line.split("|")[1].strip() for line in report.splitlines()
            if line.startswith(("| lora", "| adapter")) and "(seed" in line]
    if once:
        assert sorted(rows) == ["adapter (seed 0; also seed 1)", "lora (seed 0; also seed 1)"]
    else:
        assert sorted(rows) == ["adapter (seed 0)", "adapter (seed 1)", "lora (seed 0)", "lora (seed 1)"]
    # one round cannot judge merged against base: the sanity column says so rather than "ok"
    assert "not judged (too few rounds)" in report


def test_shape_models_are_not_scored_by_default():
    from types import SimpleNamespace

    from peftbench.evaluate.config import EvalConfig
    from peftbench.session.scores import scoring

    def session(kind):  # scoring() takes the model's kind
        return kind

    def run(**kw):
        return SimpleNamespace(eval_config=EvalConfig(**kw))

    assert scoring(session("shape"), run()) is False and scoring(session("shape"), run(evaluate="on")) is True
    assert scoring(session("tiny"), run()) is True and scoring(session("hub"), run(evaluate="off")) is False


@pytest.mark.skipif(not (__import__("shutil").which("g++") or __import__("shutil").which("cc")),
                    reason="inductor on CPU needs a C++ compiler")
def test_real_compiled_training_end_to_end(capsys, tmp_path):
    """compile=on with the real inductor backend (what CUDA runs get by default), through peftbench run: the blocks
    and the loss kernel compile, training runs, and scoring, merging and reloading use the uncompiled model."""
    out = tmp_path / "compiled"
    code, _, err = run_cli(["run", "--methods", "lora,qlora", *TINY, "--output", str(out), "--no-base",
                            "--set", "steps=2", "--set", "limit=8", "--set", "compile=on", "--set", "latency_rounds=0",
                            "--set", "merge_eval=false", "--set", "merge_precisions=false"], capsys)
    assert code == 0, err
    for m in ("lora", "qlora"):
        run = json.loads((out / "runs" / f"{m}--quickstart--seed0.json").read_text())
        loop = run["train"]["loop"]
        assert run["status"] == "ok", run.get("error")
        assert loop["compile"].startswith("blocks x2"), loop  # compiled, not fallen back
        assert loop["chunked_loss_kernel"] == "fused"
        assert run["merge"]["ok"] and run["reload"]["ok"]


def test_a_resumed_session_reuses_the_latency_its_kept_cells_measured(capsys, tmp_path):
    """With latency_once, a session continued with --resume (a command's time limit) reuses the timing of
    each method's kept cell instead of timing the method again in every command; a variant keeps its own."""
    out = tmp_path / "resumed"
    args = ["run", "--methods", "lora,adapter,adapter@pf", "--set", "adapter@pf.placement=pfeiffer", *TINY,
            "--seeds", "0,1", "--no-base", "--output", str(out), "--set", "steps=2", "--set", "evaluate=off",
            "--set", "merge_precisions=false", "--set", "latency_rounds=1", "--set", "latency_new_tokens=2",
            "--set", "latency_prompt_lengths=4"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    for m in ("lora", "adapter", "adapter@pf"):   # as if the command had stopped before the seed-1 cells
        (out / "runs" / f"{m}--quickstart--seed1.json").unlink()
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    for m in ("lora", "adapter", "adapter@pf"):
        first = json.loads((out / "runs" / f"{m}--quickstart--seed0.json").read_text())
        second = json.loads((out / "runs" / f"{m}--quickstart--seed1.json").read_text())
        assert second["status"] == "ok" and "latency" not in second["timings"]   # not timed again
        assert second["latency"]["measured_in"] == f"{m}--quickstart--seed0"
        assert second["latency"]["regimes"] == first["latency"]["regimes"]


def test_time_budget_starts_only_cells_that_fit_and_resume_runs_the_rest(tmp_path, monkeypatch, capsys):
    """--time-budget on a fake clock: each cell 'takes' its method's seconds. A cell whose estimate (the same
    method's cells, else the longest so far) with its margin exceeds what is left is not started; a shorter one
    after it still is; the left one is written as cancelled with the reason, and --resume runs it."""
    from peftbench.session.cell import blank_record
    from peftbench.session.runner import Session, SessionConfig

    now = [1000.0]
    took = {"base": 5.0, "lora": 40.0, "full": 20.0}
    ran = []

    def fake_cell(plan, spec, cache, env):
        now[0] += took[spec.method]
        ran.append(spec.key)
        result = blank_record(plan, spec, "ok")
        result.timings = {"train": took[spec.method] - 1, "evaluate": 1.0}
        return result

    monkeypatch.setattr(Session, "clock", staticmethod(lambda: now[0]))
    monkeypatch.setattr(Session, "run_cell", staticmethod(fake_cell))

    def session(resume=False):
        config = SessionConfig(methods=["lora", "full"], seeds=[0, 1], model="tiny:llama", device="cpu",
                               output=tmp_path / "s", cache_dir=tmp_path / "c", resume=resume, time_budget_s=100)
        return Session(config).run()

    results = {r["key"]: r for r in session()}
    # base 5 s (t=5); lora s0: no lora yet, the longest so far is 5 s -> runs (t=45); full s0: estimated at the
    # longest, 40 s: 49 <= 55 left -> runs (t=65); lora s1: 40 * 1.1 + 5 = 49 > 35 left -> left; full s1: 27 -> runs
    assert ran == ["base--quickstart--seed0", "lora--quickstart--seed0", "full--quickstart--seed0",
                   "full--quickstart--seed1"]
    left = results["lora--quickstart--seed1"]
    assert left["status"] == "cancelled"
    assert left["reason"] == "time budget: about 40 s needed, 35 s of --time-budget left; --resume runs it"
    saved = json.loads((tmp_path / "s/runs/lora--quickstart--seed1.json").read_text())
    assert saved["status"] == "cancelled" and saved["reason"] == left["reason"]
    assert json.loads((tmp_path / "s/session.json").read_text())["status"] == "interrupted"

    ran.clear()   # resumed: a new budget; the kept cells' timings estimate lora at 40 s, which fits
    results = {r["key"]: r for r in session(resume=True)}
    assert ran == ["lora--quickstart--seed1"] and all(r["status"] == "ok" for r in results.values())
    assert json.loads((tmp_path / "s/session.json").read_text())["status"] == "finished"
    capsys.readouterr()


def test_time_budget_is_a_duration(capsys, tmp_path):
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(tmp_path / "o"),
                            "--time-budget", "ten minutes"], capsys)
    assert code == 2 and "--time-budget 'ten minutes': not a duration" in err and "1h30m" in err


def _shard_session(tmp_path, shard):
    from peftbench.session.runner import Session, SessionConfig

    return Session(SessionConfig(methods=["lora", "full"], seeds=[0, 1, 2], model="tiny:llama", device="cpu",
                                 output=tmp_path / "s", cache_dir=tmp_path / "c", shard=shard))


def test_shards_fill_one_session_folder_between_them(tmp_path, monkeypatch):
    from peftbench.results.store import load_session, verify_run_files

    ran = fake_cells(monkeypatch)
    plan = ["base--quickstart--seed0"] + [f"{m}--quickstart--seed{s}" for s in range(3) for m in ("lora", "full")]
    first = [r["key"] for r in _shard_session(tmp_path, (0, 2)).run()]
    assert first == plan[0::2] == ran                      # cells 1, 3, 5, 7 of the plan (K = 1 of 2)
    session = load_session(tmp_path / "s")
    assert session["status"] == "interrupted" and session["plan"] == plan[1:]   # the other half is not done yet
    second = [r["key"] for r in _shard_session(tmp_path, (1, 2)).run()]
    assert second == plan[1::2] and sorted(ran) == sorted(plan)   # each cell exactly once
    session = load_session(tmp_path / "s")
    assert session["status"] == "finished" and set(session["run_files"]) == {f"{k}.json" for k in plan}
    verify_run_files(tmp_path / "s", session)              # every file's hash as the last shard recorded it
    ran.clear()   # a shard again: nothing left to do, the ok cells are kept
    assert {r["status"] for r in _shard_session(tmp_path, (0, 2)).run()} == {"ok"} and ran == []


def test_shards_running_at_the_same_time_leave_a_consistent_folder(tmp_path, monkeypatch):
    import threading

    from peftbench.results.store import load_session, verify_run_files

    ran = fake_cells(monkeypatch, seconds=0.02)
    sessions = [_shard_session(tmp_path, (k, 3)) for k in range(3)]
    for s in sessions:
        s.plan()
    threads = [threading.Thread(target=s.run) for s in sessions]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 7
    session = load_session(tmp_path / "s")
    assert session["status"] == "finished" and len(session["run_files"]) == 7
    verify_run_files(tmp_path / "s", session)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--shard", "3/2"], "--shard '3/2': K must be 1 to N"),
    (["--shard", "half"], "--shard 'half': give K/N"),
])
def test_shard_is_k_of_n(argv, needle, capsys, tmp_path):
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and needle in err


def test_shard_needs_an_output_folder(capsys):
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--shard", "1/2"], capsys)
    assert code == 2 and "--shard needs --output" in err


def test_a_shard_reuses_the_latency_another_shard_measured(tmp_path):
    """latency_once across shards: before timing a method, a shard looks for a cell of the same method and grid
    that another shard timed meanwhile (run files in the folder), so the session times it once."""
    from peftbench.api.records import RunSpec
    from peftbench.results.store import run_json, write_run
    from peftbench.session.cache import CellCache
    from peftbench.session.cell import blank_record
    from peftbench.session.timing import latency_key_of_result

    plan = _shard_session(tmp_path, (1, 2)).plan()
    cache = CellCache(shared_folder=plan.output)   # what a shard's session gives its cells
    other = run_json(blank_record(plan, RunSpec("lora", "quickstart", 0), "ok"))
    other["latency"] = {"regimes": {"eager": [{"batch_size": 1}]}}
    write_run(plan.output, other["key"], other)   # as the other shard would
    reused = {**run_json(blank_record(plan, RunSpec("full", "quickstart", 1), "ok")),
              "latency": {"regimes": {"eager": [{}]}, "measured_in": "full--quickstart--seed0"}}
    write_run(plan.output, reused["key"], reused)  # reused timings are not a measurement to reuse again
    cache.timed_latency("not timed yet")
    assert list(cache.latency) == [latency_key_of_result(other)]
    assert cache.latency[latency_key_of_result(other)]["cell"] == "lora--quickstart--seed0"
    alone_plan = _shard_session(tmp_path / "alone", None).plan()
    alone = CellCache(shared_folder=None)   # without --shard nothing else writes the folder
    alone_plan.output.mkdir(parents=True, exist_ok=True)
    write_run(alone_plan.output, other["key"], other)
    alone.timed_latency("not timed yet")
    assert alone.latency == {}


def test_a_shard_ending_while_another_still_writes_says_so(tmp_path, monkeypatch, capsys):
    import peftbench.cli.run as run_command
    from peftbench.errors import UsageError

    fake_cells(monkeypatch)

    def busy(*_args, **_kwargs):
        raise UsageError("runs/full--quickstart--seed0.json: its sha256 differs from the one session.json recorded")

    monkeypatch.setattr(run_command, "show_folder", busy)
    code, _, err = run_cli(["run", "--methods", "lora,full", *TINY, "--output", str(tmp_path / "s"), "--shard", "1/2"],
                           capsys)
    assert code == 0 and "still being written by another shard" in " ".join(err.split())
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(tmp_path / "alone")], capsys)
    assert code == 2 and "sha256 differs" in err   # a single process: a real mismatch, reported as such


def test_methods_lists_option_names_and_names_show_each_options_help(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0 and "alpha" in out and "scaling numerator" not in out
    code, out, _ = run_cli(["methods", "--json", "lora", "peft:vera"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["lora", "peft-vera"]
    assert all(o["help"] for r in rows for o in r["options"])
    code, _, err = run_cli(["methods", "lorra"], capsys)
    assert code == 2 and "Did you mean 'lora'" in err
