"""Chance and majority-class baselines, uninformative tasks, claims kept apart per model, timings without a
record of their neighbours, and the latency sanity rule (issue 21, parts 4 and 5)."""

import json
from pathlib import Path

import pytest

from peftbench.latency.summary import sanity_failures, sanity_holds
from peftbench.report.baselines import informative, lower_bound, with_baselines
from peftbench.report.claims import check, check_models
from peftbench.report.doubts import NOT_RECORDED, contention, runs_timing_doubts, timing_doubts
from peftbench.tasks.baselines import label_baselines, prepared_baselines

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"gpu_others_bytes": 0, "host_others_cores": 0.0}  # a timing recorded alone on the machine


def yes_no(labels):
    return [{"question": f"q{i}", "choices": ["no", "yes"], "label": y} for i, y in enumerate(labels)]


# ---- baselines of the scored test records ----------------------------------------------------------------
def test_label_baselines_of_a_label_set_task_respect_the_limit():
    records = yes_no([1, 1, 0, 1, 0, 0, 0, 0])   # 3 of 8 'yes', 5 'no'
    out = label_baselines(records)
    assert out == {"chance": 0.5, "majority": 0.625, "majority_label": "no", "majority_index": 0, "n": 8,
                   "limit": None}
    first = label_baselines(records, limit=4)        # lm-eval scores the first 4: 3 'yes', 1 'no'
    assert first["majority"] == 0.75 and first["majority_label"] == "yes" and first["n"] == 4
    assert label_baselines(records, limit=0) == out  # 0: every example
    with pytest.raises(ValueError):
        label_baselines([])


def test_label_baselines_of_rows_with_their_own_options():
    records = [{"question": "a", "choices": ["w", "x", "y"], "label": 2},
               {"question": "b", "choices": ["w", "x", "y", "z"], "label": 2},
               {"question": "c", "choices": ["w", "x", "y", "z"], "label": 0},
               {"question": "d", "choices": ["v", "w"], "label": 1}]
    out = label_baselines(records)
    assert out["chance"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 4 + 1 / 2) / 4)
    assert out["majority"] == 0.5 and out["majority_index"] == 2 and out["majority_label"] == "option 3"
    tie = label_baselines(records[2:])   # positions 0 and 1 once each: the first wins
    assert tie["majority"] == 0.5 and tie["majority_index"] == 0


def test_prepared_baselines_read_the_test_split(tmp_path):
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in yes_no([1, 1, 1, 0])) + "\n\n")
    (tmp_path / "train.jsonl").write_text(json.dumps(yes_no([0])[0]) + "\n")
    assert prepared_baselines(tmp_path)["majority"] == 0.75
    assert prepared_baselines(tmp_path, limit=1)["majority"] == 1.0


# ---- informative tasks ----------------------------------------------------------------------------------
BOOLQ = {"chance": 0.5, "majority": 0.622, "majority_label": "yes", "majority_index": 1, "n": 3270, "limit": None}


def row(method, score, ci=None, se=None):
    return {"method": method, "score": score, "score_ci": ci, "stderr": se}


def test_a_task_whose_methods_sit_at_the_majority_class_is_uninformative():
    at_majority = [row("base", 0.90, se=0.001),            # the base row does not count, however high
                   row("lora", 0.629, [0.619, 0.640]), row("full", 0.626, [0.621, 0.631])]
    ok, why = informative(at_majority, BOOLQ)
    assert ok is False and why == "no method's 95 % CI clears the majority class (0.622)"
    clears = [*at_majority, row("qlora", 0.70, [0.69, 0.71])]
    assert informative(clears, BOOLQ) == (True, "qlora's 95 % CI clears the majority class (0.622)")
    # a tight CI over seeds is not enough: the test examples' standard error widens the bound
    assert lower_bound(row("x", 0.627, [0.624, 0.630], se=0.0085)) == pytest.approx(0.627 - 1.959964 * 0.0085)
    assert informative([row("x", 0.627, [0.624, 0.630], se=0.0085)], BOOLQ)[0] is False
    assert informative([row("x", 0.627, [0.624, 0.630])], BOOLQ)[0] is True
    # chance above the majority (options of varying number): chance is the bar
    arc = {**BOOLQ, "chance": 0.30, "majority": 0.27}
    assert informative([row("lora", 0.31, [0.28, 0.34])], arc) == (
        False, "no method's 95 % CI clears chance (0.300)")
    # unknown baselines: shown as such, never marked uninformative
    assert informative(at_majority, None) == (True, "baselines not recorded")


def _runs_at(scores, model="m", task="t", **extra):
    """Run files of ``scores`` (method -> [acc per seed]) with standard errors 0.01."""
    out = []
    for method, accs in scores.items():
        for seed, acc in enumerate(accs):
            out.append({"key": f"{method}--{task}--seed{seed}", "method": method, "task": task, "seed": seed,
                        "model": model, "status": "ok", "eval": {"metrics": {"acc": acc}, "stderr": {"acc": 0.01}},
                        "config": {}, "train": {}, "latency": {}, "merge": {}, "env": {},
                        "params": {"trainable_pct": 100.0 if method == "full" else 1.0},
                        "artifact": {"bytes": 1000 if method == "full" else 5}, **QUIET, **extra})
    return out


def test_score_claims_on_an_uninformative_task_are_excluded_and_costs_still_judged():
    runs = _runs_at({"base": [0.38], "full": [0.626, 0.627, 0.625], "lora": [0.629, 0.628, 0.630],
                     "qlora": [0.627, 0.626, 0.628]})
    tasks = {"t": {"metric": "acc", "baselines": BOOLQ}}
    out = {c["id"]: c for c in check(runs, {}, tasks=tasks)}
    reason = "uninformative: no method's 95 % CI clears the majority class (0.622)"
    for claim in ("lora_share_of_full_gain", "lora_share_of_full_score", "qlora_near_lora"):
        assert out[claim]["verdict"] == f"excluded ({reason})", claim
        assert out[claim]["value"] is not None   # still measured and shown, only not judged
    assert out["lora_artifact_hundreds_smaller"]["verdict"] == "holds (no CI)"   # 200x: not a score claim
    # the same runs without baselines, or clear of them, are judged
    assert not check(runs, {}, tasks={"t": {"metric": "acc"}})[0]["verdict"].startswith("excluded")
    easy = {"t": {"metric": "acc", "baselines": {**BOOLQ, "majority": 0.55}}}
    assert not any(c["verdict"].startswith("excluded") for c in check(runs, {}, tasks=easy))


def test_the_leaderboard_shows_the_baselines_and_marks_an_uninformative_task():
    from peftbench.report.leaderboard_table import leaderboard_tables
    from peftbench.report.markdown import render_markdown

    runs = _runs_at({"base": [0.38], "lora": [0.629, 0.628, 0.630]})
    runs[1]["tuning"] = {"role": "final", "values": {"lr": 3e-4, "r": 16}, "chosen_by": "acc on validation, seed 0",
                         "on_edge": ["lr"]}
    session = {"model": {"source": "m"}, "tasks": {"t": {"metric": "acc", "baselines": BOOLQ}}}
    text = render_markdown(leaderboard_tables(session, runs))
    assert "— uninformative: no method's 95 % CI clears the majority class (0.622); it decides no claim**" in text
    assert "| chance (uniform guess) | 0.500 |" in text and "| majority class ('yes') | 0.622 |" in text
    assert "baseline, n = 3,270 |" in text
    session["tasks"]["t"].pop("baselines")
    text = render_markdown(leaderboard_tables(session, runs))
    assert "— baselines not recorded**" in text and "uninformative" not in text and "chance" not in text


def test_the_method_cell_names_the_tuned_values():
    from peftbench.report.leaderboard_table import _method_text

    tuned = {"method": "lora", "tuning": {"values": {"lr": 3e-4, "r": 16}, "chosen_by": "acc on validation, seed 0",
                                           "on_edge": ["lr"]}}
    assert _method_text(tuned) == "lora (lr 3e-4, r 16; tuned: acc on validation, seed 0; lr on grid edge)"
    assert _method_text({"method": "lora", "tuning": {"values": {"lr": 0.05}}}) == "lora (lr 0.05; tuned)"
    assert _method_text({"method": "lora"}) == "lora" and _method_text({"method": "base"}) == "base (zero-shot)"


def test_a_folders_baselines_file_is_used_only_for_the_data_it_was_computed_from(tmp_path):
    source = {"kind": "local", "splits": {"test": [{"file": "t.jsonl", "sha256": "aa"}]}}
    session = {"tasks": {"t": {"version": 1, "data_source": source}, "u": {"version": 1, "data_source": source}}}
    (tmp_path / "baselines.json").write_text(json.dumps({"tasks": {
        "t": {"baselines": BOOLQ, "data_source": {"test": ["aa"]}},
        "u": {"baselines": BOOLQ, "data_source": {"test": ["bb"]}}}}))
    tasks = with_baselines(tmp_path, session)["tasks"]
    assert tasks["t"]["baselines"] == BOOLQ
    assert "baselines" not in tasks["u"] and "other data" in tasks["u"]["baselines_note"]
    own = {"tasks": {"t": {**session["tasks"]["t"], "baselines": {**BOOLQ, "majority": 0.7}}}}
    assert with_baselines(tmp_path, own)["tasks"]["t"]["baselines"]["majority"] == 0.7   # session.json first


# ---- timings: neighbours not recorded, sanity -----------------------------------------------------------
def test_a_timing_without_a_record_of_its_neighbours_counts_as_contended():
    assert contention(QUIET) == []
    assert contention({"gpu_others_bytes": None, "host_others_cores": None}) == []   # looked at, not measurable
    assert contention({}) == [f"{NOT_RECORDED} (gpu_others_bytes, host_others_cores absent)"]
    assert contention({"gpu_others_bytes": 0}) == [f"{NOT_RECORDED} (host_others_cores absent)"]
    assert contention({"gpu_others_bytes": 5 * 2**30, "host_others_cores": 0.0}) == ["GPU shared"]
    assert runs_timing_doubts([QUIET, {"host_others_cores": 2.0}, {}]) == [
        "host busy", f"{NOT_RECORDED} (gpu_others_bytes absent)",
        f"{NOT_RECORDED} (gpu_others_bytes, host_others_cores absent)"]
    lat = _latency(0.001)
    assert timing_doubts(lat, "static") == []
    lat.pop("host_others_cores")
    assert timing_doubts(lat, "static") == [f"{NOT_RECORDED} (host_others_cores absent)"]
    verdict = {c["id"]: c for c in check([], {"lora": lat})}["merged_lora_zero_latency"]
    assert verdict["verdict"] == "inconclusive (timing suspect)" and verdict["how"].endswith("absent)")


def test_the_sanity_check_fails_on_the_point_estimate_whatever_the_ci():
    # full fine-tuning on boolq, eager: -37.7 % with a CI spanning 0, stored as ok by the earlier rule
    stored = {"regime": "eager", "mode": "unmerged", "overhead": -0.3766, "ci95": [-0.4104, 0.0997],
              "tolerance": 0.03, "ok": True}
    assert sanity_holds(stored) is False
    assert sanity_holds({**stored, "overhead": 0.029}) is True and sanity_holds({**stored, "overhead": -0.03}) is True
    assert sanity_holds({**stored, "ok": None, "note": "fewer than 3 rounds: not judged"}) is None
    lat = {**_latency(0.001), "sanity": [stored, {**stored, "regime": "static", "overhead": 0.017}]}
    assert sanity_failures(lat) == [stored] and sanity_failures(lat, "static") == []
    assert "its sanity check failed" in timing_doubts(lat, "eager") and timing_doubts(lat, "static") == []


def test_a_new_sanity_entry_fails_when_the_point_is_beyond_the_tolerance():
    from peftbench.latency.config import LatencyPlan
    from peftbench.latency.shape import _sanity_entry

    plan = LatencyPlan(rounds=5, tolerance=0.03)
    wide = {"ratio": -0.377, "ci95": [-0.41, 0.10]}
    assert _sanity_entry({"regime": "eager"}, "unmerged", wide, plan, rounds=5)["ok"] is False
    assert _sanity_entry({"regime": "eager"}, "merged", {"ratio": 0.02, "ci95": [0.01, 0.03]}, plan,
                         rounds=5)["ok"] is True
    few = _sanity_entry({"regime": "eager"}, "merged", wide, plan, rounds=2)  # the rounds the shape took
    assert few["ok"] is None and "not judged" in few["note"]


def test_the_latency_table_rejudges_a_stored_lenient_sanity_entry():
    from peftbench.report.latency_table import latency_tables
    from peftbench.report.markdown import render_markdown

    lat = _latency(-0.3766, regime="eager")
    lat["sanity"] = [{"regime": "eager", "batch_size": 1, "prompt_tokens": 8, "mode": "unmerged",
                      "overhead": -0.3766, "ci95": [-0.41, 0.0997], "tolerance": 0.03, "ok": True}]
    assert "unmerged -37.7% ≠ base" in render_markdown(latency_tables({"full": lat}))


# ---- claims per model ----------------------------------------------------------------------------------
def _latency(merged, regime="static", **extra):
    return {"plan": {"rounds": 5}, "modes": ["base", "merged"], "sanity": [], **QUIET, **extra,
            "regimes": {regime: [{"batch_size": 1, "prompt_tokens": 8, "new_tokens": 4,
                                  "modes": {"base": {}, "merged": {}},
                                  "overhead": {"merged": {"ratio": merged, "ci95": [merged - 0.004, merged + 0.004]},
                                               "unmerged": {"ratio": 0.5, "ci95": [0.45, 0.55]}}}]}}


def test_check_models_keeps_each_models_figures_apart():
    small = _runs_at({"base": [0.5], "full": [0.9], "lora": [0.89]}, model="small")
    big = _runs_at({"base": [0.5], "full": [0.8], "lora": [0.6]}, model="big")
    latency = {"small": {"lora": _latency(0.001)}, "big": {"lora": _latency(0.10)}, "other": {"lora": _latency(0.0)}}
    out = check_models(small + big, latency)
    assert list(dict.fromkeys(c["model"] for c in out)) == ["small", "big", "other"]
    merged = {c["model"]: c for c in out if c["id"] == "merged_lora_zero_latency"}
    assert merged["small"]["value"] == 0.001 and merged["big"]["value"] == 0.10 and merged["other"]["value"] == 0.0
    assert merged["small"]["verdict"] == "holds" and merged["big"]["verdict"] == "does not hold"
    raw = {c["model"]: c["value"] for c in out if c["id"] == "lora_share_of_full_score"}
    assert raw == {"small": pytest.approx(0.89 / 0.9), "big": pytest.approx(0.6 / 0.8)}
    with pytest.raises(ValueError, match="2 models"):
        check(small + big, {})


def _run_folder(root, name, model, scores):
    folder = root / name
    (folder / "runs").mkdir(parents=True)
    runs = _runs_at(scores, model=model)
    for r in runs:
        (folder / "runs" / f"{r['key']}.json").write_text(json.dumps({**r, "schema_version": 1}))
    from peftbench.results.store import sha256

    session = {"schema_version": 1, "session_id": name, "status": "finished", "command": ["peftbench"],
               "config": {}, "plan": [r["key"] for r in runs], "env": {}, "model": {"source": model},
               "tasks": {"t": {"metric": "acc", "version": 1, "baselines": {**BOOLQ, "majority": 0.55}}},
               "run_files": {p.name: sha256(p) for p in sorted((folder / "runs").glob("*.json"))}}
    (folder / "session.json").write_text(json.dumps(session))
    return folder


def _latency_folder(root, name, model, merged):
    folder = root / name
    (folder / "latency").mkdir(parents=True)
    (folder / "session.json").write_text(json.dumps({"kind": "latency", "status": "finished",
                                                     "model": {"source": model}}))
    (folder / "latency" / "lora.json").write_text(json.dumps({"method": "lora", "status": "ok",
                                                              "latency": _latency(merged)}))
    return folder


def test_claims_cli_prints_one_table_per_model(tmp_path, capsys):
    from peftbench.testing import run_cli

    folders = [_run_folder(tmp_path, "a", "small", {"base": [0.5], "full": [0.9], "lora": [0.89]}),
               _run_folder(tmp_path, "b", "big", {"base": [0.5], "full": [0.8], "lora": [0.6]}),
               _latency_folder(tmp_path, "c", "big", 0.10)]
    (tmp_path / "README.md").write_text("not a folder")
    code, out, err = run_cli(["claims", *map(str, folders), str(tmp_path / "README.md"), "--format", "markdown"],
                             capsys)
    assert code == 0, err
    assert "README.md: a file, not a results folder: skipped" in " ".join(err.split())
    titles = [line for line in out.splitlines() if line.startswith("**")]
    assert [t.split(" (")[0] for t in titles] == ["**small", "**big", "**by calculation"]  # the scale claims last
    code, out, err = run_cli(["claims", *map(str, folders), "--format", "json"], capsys)
    merged = {c["model"]: c["value"] for c in json.loads(out) if c["id"] == "merged_lora_zero_latency"}
    assert merged == {"big": 0.10}   # the big model's latency session; the small model timed none
    code, out, err = run_cli(["claims", str(tmp_path / "README.md")], capsys)
    assert code == 2 and "no results folder" in err


def test_claims_on_the_reference_results_exit_0_per_model(capsys):
    from peftbench.testing import run_cli

    ref = ROOT / "results" / "reference"
    code, out, err = run_cli(["claims", *map(str, sorted(ref.iterdir())), "--format", "json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert {c["model"] for c in results} == {"HuggingFaceTB/SmolLM2-135M-Instruct", "shape:llama-3.1-8b",
                                             "by calculation"}
    latency = {(c["model"], c["id"]): c for c in results if c["task"] == "latency"}
    # each model keeps its own latency: the 8B's static grid no longer stands in for the 135M's cells
    assert latency[("shape:llama-3.1-8b", "merged_lora_zero_latency")]["value"] == pytest.approx(-0.0022)
    assert latency[("HuggingFaceTB/SmolLM2-135M-Instruct", "merged_lora_zero_latency")]["value"] != pytest.approx(
        -0.0022)
    verdicts = {(c["task"], c["id"]): c["verdict"] for c in results}
    for task in ("boolq", "openbookqa"):   # every method at the majority class
        assert verdicts[(task, "lora_share_of_full_score")].startswith("excluded (uninformative")
    assert not verdicts[("arc_easy", "lora_share_of_full_score")].startswith("excluded")


def test_claims_on_the_reference_results_show_the_calculated_claims_in_their_units(capsys):
    """The scale claims by calculation follow the measured tables in a table of their own, each value and range
    in its unit (GPUs, GiB, a share in percent), whatever the folders hold: no reference folder ran a 70B."""
    from peftbench.testing import run_cli

    ref = ROOT / "results" / "reference"
    code, out, err = run_cli(["claims", *map(str, sorted(ref.iterdir())), "--format", "markdown"], capsys)
    assert code == 0, err
    measured, calculated = out.split("**by calculation (4 hold, 2 do not hold) — scale claims checked by calculation")
    assert "shape:llama-3.1-70b" not in measured and "(by calculation)" not in measured
    rows = {line.split(" | ")[0].lstrip("| "): line.strip(" |").split(" | ") for line in calculated.splitlines()
            if line.startswith("| ") and "(by calculation)" in line}
    assert rows["a 70B full fine-tune needs 8+ A100 80 GB GPUs"][1:] == [
        "shape:llama-3.1-70b", "14 GPUs", "—", ">= 8 GPUs", "holds (by calculation)"]
    assert rows["QLoRA fits a 70B model on one 48 GB GPU"][2:] == ["44.4 GiB", "—", "<= 48.0 GiB",
                                                                   "holds (by calculation)"]
    assert rows["full fine-tuning a 13B model needs ~80 GB (within ±15 %)"][2:] == [
        "194.7 GiB", "—", "68.0 GiB to 92.0 GiB", "does not hold (by calculation)"]
    lora = rows["LoRA cuts training memory by 60–80 % against full fine-tuning, in pure bf16 (as measured here)"]
    assert lora[2:] == ["37.8%", "—", "60.0% to 80.0%", "does not hold (by calculation)"]
    code, out, err = run_cli(["claims", *map(str, sorted(ref.iterdir())), "--format", "json"], capsys)
    by_calculation = [c for c in json.loads(out) if c["model"] == "by calculation"]
    assert [c["unit"] for c in by_calculation] == ["GPUs", "GiB", "GiB", "GiB", "share", "share"]
    assert by_calculation[0]["value"] == 14 and by_calculation[1]["value"] == pytest.approx(44.39, abs=0.01)
