"""Statistics on synthetic results with known answers; the claims' verdict logic at its boundaries; every
export format; merging sessions (and refusing incompatible ones)."""

import csv
import io
import json
import math
import re

import pytest

from peftbench.errors import UsageError
from peftbench.report import stats
from peftbench.report.claims import check, load_claims, verdict
from peftbench.report.export import export_rows, to_csv, to_latex
from peftbench.report.folders import load_folders


# ---- statistics ---------------------------------------------------------------------------------------------
def test_mean_ci_matches_the_t_interval():
    out = stats.mean_ci([1.0, 2.0, 3.0])
    assert out["mean"] == 2.0 and out["sd"] == 1.0 and out["n"] == 3
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, df=2) = 4.303
    assert out["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert stats.mean_ci([0.5])["ci95"] is None
    assert stats.t95(100) == pytest.approx(1.96, abs=1e-3)


def run(method, task="t", seed=0, acc=0.5, se=0.01, samples=None, **extra):
    r = {"schema_version": 1, "key": f"{method}--{task}--seed{seed}", "method": method, "task": task, "seed": seed,
         "status": "ok", "eval": {"metrics": {"acc": acc}, "stderr": {"acc": se}}, "config": {}, "params": {},
         "train": {}, "latency": {}, "artifact": {}, "merge": {}, "env": {}}
    if samples is not None:
        r["eval"]["samples"] = {"doc_id": list(range(len(samples))), "acc": samples}
    r.update(extra)
    return r


def test_compare_runs_picks_the_right_interval():
    # no per-example results, 3 seeds, differences 0.02, 0.04, 0.06: t over seeds, 0.04 +- 4.303 * 0.02 / sqrt(3);
    # seed 3 of b has no partner in a and is left out
    a = [run("a", seed=s, acc=v) for s, v in enumerate((0.82, 0.84, 0.86))]
    b = [run("b", seed=s, acc=v) for s, v in enumerate((0.80, 0.80, 0.80, 0.9))]
    seeds = stats.compare_runs(a, b, "acc")
    half = 4.303 * 0.02 / math.sqrt(3)
    assert seeds["how"].startswith("t over 3 seeds") and "seeds all have" in seeds["how"]
    assert seeds["diff"] == pytest.approx(0.04) and seeds["ci95"] == pytest.approx([0.04 - half, 0.04 + half], abs=1e-4)
    assert stats.separable(seeds) is False  # the CI reaches below 0: not separable
    # one seed each with per-example results: the bootstrap over examples (se of the mean difference 0.043)
    mixed = stats.compare_runs([run("a", samples=[1, 1, 0, 1] * 25)], [run("b", samples=[1, 0, 0, 1] * 25)], "acc")
    assert mixed["how"].startswith("paired bootstrap over 100 examples") and mixed["diff"] == pytest.approx(0.25)
    lo, hi = mixed["ci95"]
    assert 0.1 < lo < 0.25 < hi < 0.4 and stats.separable(mixed)
    assert mixed["mcnemar"] == [{"seed": 0, "a_only": 25, "b_only": 0, "p": pytest.approx(2 / 2 ** 25)}]
    same = stats.compare_runs([run("a", samples=[1, 0, 1, 0])], [run("b", samples=[1, 0, 1, 0])], "acc")
    assert same["diff"] == 0 and same["ci95"] == [0, 0]
    # one seed, standard errors only: normal and unpaired, 0.1 +- 1.96 * sqrt(0.03^2 + 0.04^2)
    normal = stats.compare_runs([run("a", acc=0.9, se=0.03)], [run("b", acc=0.8, se=0.04)], "acc")
    assert normal["how"].startswith("normal from the recorded standard errors") and normal["mcnemar"] == []
    assert normal["ci95"] == pytest.approx([0.1 - 1.959964 * 0.05, 0.1 + 1.959964 * 0.05], abs=1e-6)


def test_leaderboard_marks_ties_instead_of_ranking():
    from peftbench.report.leaderboard import rows_for_task

    runs = [run("base", acc=0.5), run("full", acc=0.90, se=0.01), run("lora", acc=0.89, se=0.01),
            run("adapter", acc=0.80, se=0.01)]
    rows = {r["method"]: r for r in rows_for_task(runs, "t")}
    assert rows["full"]["vs_best"]["method"] == "best"
    assert rows["lora"]["tied_with_best"] is True      # -1 pt, CI +-2.8 pts: a tie
    assert rows["adapter"]["tied_with_best"] is False  # -10 pts: separable
    assert rows["adapter"]["vs_best"]["diff"] == pytest.approx(-0.10)


# ---- claims ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,ci,expected", [
    (0.98, [0.97, 0.99], "holds"),                 # CI exactly on both bounds: inside
    (0.98, [0.969, 0.99], "inconclusive"),         # straddles the lower bound
    (0.95, [0.94, 0.9699], "does not hold"),       # entirely below
    (1.00, [0.9901, 1.01], "does not hold"),       # entirely above
    (0.98, None, "holds (no CI)"),
    (0.99, None, "holds (no CI)"),                 # the point on the bound
    (0.991, None, "does not hold (no CI)"),
    (None, None, "not measured"),
])
def test_verdict_boundaries(value, ci, expected):
    assert verdict(value, ci, [0.97, 0.99]) == expected


def test_verdict_open_ranges():
    assert verdict(150.0, None, [100, None]) == "holds (no CI)"
    assert verdict(99.9, None, [100, None]) == "does not hold (no CI)"
    assert verdict(-5.0, [-6.0, -4.0], [None, 0.0]) == "holds"


def test_every_shipped_claim_is_well_formed():
    claims = load_claims()
    assert len(claims) >= 8 and len({c["id"] for c in claims}) == len(claims)
    assert {"share_of_full", "relative_gap", "latency_overhead", "artifact_ratio", "trainable_pct",
            "ratio_to", "merge_score_change"} <= {c["quantity"] for c in claims}


def test_claims_on_synthetic_results_with_known_values():
    runs = [run("base", acc=0.5, se=0.0001), run("full", acc=0.9, se=0.0001), run("lora", acc=0.892, se=0.0001),
            run("qlora", acc=0.88, se=0.0001)]
    for r, mem, secs, art, pct in ((runs[1], 100, 10.0, 1000, 100.0), (runs[2], 40, 12.0, 5, 1.5)):
        r.update(train={"peak_memory_bytes": mem, "wall_time_s": secs}, artifact={"bytes": art},
                 params={"trainable_pct": pct}, gpu_others_bytes=0, host_others_cores=0.0)  # measured alone
    latency = {"lora": {"regimes": {"static": [{"batch_size": 1, "prompt_tokens": 8,
                                               "overhead": {"merged": {"ratio": 0.001, "ci95": [-0.004, 0.006]},
                                                            "unmerged": {"ratio": 0.5, "ci95": [0.45, 0.55]}}}]},
                        "gpu_others_bytes": None, "host_others_cores": None}}  # looked at, nothing to measure
    out = {(c["id"], c["task"]): c for c in check(runs, latency)}
    gain = out[("lora_share_of_full_gain", "t")]
    assert gain["value"] == pytest.approx(0.392 / 0.4) and gain["verdict"] == "holds"   # 98 %, tight CI
    raw = out[("lora_share_of_full_score", "t")]
    # 99.1 % with a tight CI: above the claimed 97-99 %, so the raw-score claim does not hold here
    assert raw["value"] == pytest.approx(0.892 / 0.9) and raw["verdict"] == "does not hold"
    gap = out[("qlora_near_lora", "t")]
    assert gap["value"] == pytest.approx((0.892 - 0.88) / 0.892) and gap["verdict"] == "holds"
    assert out[("merged_lora_zero_latency", "latency")]["verdict"] == "holds"
    assert out[("lora_artifact_hundreds_smaller", "t")]["value"] == pytest.approx(200.0)
    assert out[("lora_trainable_share", "t")]["verdict"] == "holds (no CI)"
    assert out[("lora_less_memory", "t")]["value"] == pytest.approx(0.4)
    assert out[("lora_trains_faster", "t")]["verdict"] == "does not hold (no CI)"      # 12 s vs 10 s
    # trained beside other processes: the time ratio decides nothing (memory, the process's own peak, still does)
    runs[2]["gpu_others_bytes"] = 8 * 2**30
    shared = {(c["id"], c["task"]): c for c in check(runs, latency)}
    assert shared[("lora_trains_faster", "t")]["verdict"] == "inconclusive (timing suspect)"
    assert shared[("lora_trains_faster", "t")]["how"].endswith("timing suspect: GPU shared")
    assert shared[("lora_less_memory", "t")]["verdict"] == out[("lora_less_memory", "t")]["verdict"]
    del runs[2]["gpu_others_bytes"]  # a file that does not record its neighbours counts as contended
    unrecorded = {(c["id"], c["task"]): c for c in check(runs, latency)}[("lora_trains_faster", "t")]
    assert unrecorded["verdict"] == "inconclusive (timing suspect)" and "neighbours not recorded" in unrecorded["how"]
    assert ("series_adapter_latency", "latency") not in out  # no adapter latency: not measured, not listed
    # a timing the harness doubts decides nothing: its own sanity check failed, or a shared GPU / busy host
    for doubt, why in (({"sanity": [{"regime": "static", "ok": False}]}, "its sanity check failed"),
                       ({"sanity": [{"regime": "eager", "ok": False}]}, None),   # another regime's flag
                       ({"host_others_cores": 2.5}, "host busy"), ({"gpu_others_bytes": 5 * 1024**3}, "GPU shared"),
                       ({"plan": {"rounds": 1}}, "1 timed round: too few for a CI"), ({"plan": {"rounds": 5}}, None)):
        merged = {c["id"]: c for c in check(runs, {"lora": {**latency["lora"], **doubt}})}["merged_lora_zero_latency"]
        if why is None:
            assert merged["verdict"] == "holds"
        else:
            assert merged["verdict"] == "inconclusive (timing suspect)" and merged["how"].endswith(why), merged


def _merged_run(method, seed, unmerged, in_bf16, fp32_cast, acc=0.8, lossy=False, ok=True):
    def ev(score, ref):
        return {"metric": "acc", "score": score, "stderr": 0.01, "reference": ref,
                "delta": None if ref is None else score - ref}

    return run(method, seed=seed, acc=acc, merge={
        "supported": True, "lossy": lossy, "ok": ok, "unmerge_ok": True, "max_abs_logit_diff": 1e-4 * (seed + 1),
        "greedy_agreement": 1.0, "eval": ev(acc, acc),
        "precision": {"dtype": "bf16", "unmerged": ev(unmerged, None),
                      "merge_fp32_then_cast": {"greedy_agreement": 0.97 - 0.01 * seed, "eval": ev(fp32_cast, unmerged)},
                      "merge_in_bf16": {"greedy_agreement": 0.95, "eval": ev(in_bf16, unmerged)}}})


def test_bf16_merge_claim_over_seeds_and_from_one_seed():
    # three seeds whose bf16 merge loses 0.6 %, 0.7 %, 0.65 % (relative): the t CI over seeds lies in the range
    runs = [_merged_run("lora", s, 0.800, 0.800 * (1 - d), 0.8) for s, d in enumerate((0.006, 0.007, 0.0065))]
    out = {c["id"]: c for c in check(runs, {})}["lora_bf16_merge_drop"]
    changes = [-0.006, -0.007, -0.0065]
    ci = stats.mean_ci(changes)["ci95"]
    assert out["value"] == pytest.approx(-0.0065) and out["ci95"] == pytest.approx(ci)
    assert out["verdict"] == "holds" and "3 seeds" in out["how"]
    # no loss at all, consistently: the claim does not hold
    flat = [_merged_run("lora", s, 0.8, 0.8 + 0.0001 * s, 0.8) for s in range(3)]
    assert {c["id"]: c for c in check(flat, {})}["lora_bf16_merge_drop"]["verdict"] == "does not hold"
    # one seed: a normal CI from the two standard errors (0.01 each): half-width 1.96 * sqrt(2) * 0.01 / 0.8
    one = {c["id"]: c for c in check([_merged_run("qlora", 0, 0.8, 0.796, 0.8, lossy=True)], {})}
    q = one["qlora_bf16_merge_drop"]
    half = stats.Z95 * (0.01 ** 2 / 0.8 ** 2 + (0.796 * 0.01 / 0.8 ** 2) ** 2) ** 0.5
    assert q["value"] == pytest.approx(-0.005) and q["ci95"] == pytest.approx([-0.005 - half, -0.005 + half])
    assert q["verdict"] == "inconclusive" and "one seed" in q["how"]
    assert "lora_bf16_merge_drop" not in one   # no LoRA runs: not measured, not listed


def test_bf16_merge_claim_is_paired_over_examples_when_they_are_logged():
    n = 2000
    ref = [1.0] * 1600 + [0.0] * 400                       # unmerged bf16: 0.8
    flipped = [0.0] * 20 + [1.0] * 1580 + [0.0] * 400       # the bf16 merge turns 20 right answers wrong
    run_ = _merged_run("lora", 0, 0.8, 0.79, 0.8)
    prec = run_["merge"]["precision"]
    prec["unmerged"]["samples"] = {"doc_id": list(range(n)), "acc": ref}
    prec["merge_in_bf16"]["eval"]["samples"] = {"doc_id": list(reversed(range(n))), "acc": list(reversed(flipped))}
    out = {c["id"]: c for c in check([run_], {})}["lora_bf16_merge_drop"]
    assert out["value"] == pytest.approx(-0.0125) and out["how"].startswith("paired bootstrap over 2000 examples")
    lo, hi = out["ci95"]
    # 20 discordant examples: the CI is about +-1.96 * sqrt(20) / 2000 / 0.8 = +-0.55 %, far narrower than the
    # unpaired one from two standard errors of 0.01 (+-3.5 %)
    assert lo < -0.0125 < hi and 0.008 < hi - lo < 0.015
    # the bf16 merge changed no answer: the paired CI is exactly zero and the claimed loss does not hold
    prec["merge_in_bf16"]["eval"].update(score=0.8, delta=0.0, samples={"doc_id": list(range(n)), "acc": ref})
    same = {c["id"]: c for c in check([run_], {})}["lora_bf16_merge_drop"]
    assert same["ci95"] == [0.0, 0.0] and same["verdict"] == "does not hold"


def test_merge_fidelity_table(capsys):
    from peftbench.report.markdown import render_markdown
    from peftbench.report.merge_table import merge_tables

    runs = [_merged_run("lora", s, 0.80, 0.80 - 0.002 * s, 0.80 + 0.001 * s) for s in range(3)]
    runs += [_merged_run("qlora", 0, 0.79, 0.78, 0.79, lossy=True, ok=False),
             run("adapter", merge={"supported": False}), run("lora", seed=9, status="failed")]
    md = render_markdown(merge_tables(runs))
    rows = {line.split(" | ")[1]: line.split(" | ") for line in md.splitlines() if line.startswith("| t |")}
    assert set(rows) == {"lora", "qlora"}          # the adapter cannot merge; a failed cell adds nothing
    lora = rows["lora"]
    assert lora[2] == "0, 1, 2" and lora[3] == "0.0003"       # the largest logit difference over seeds
    assert lora[5] == "+0.00 (+0.00..+0.00)"
    assert lora[6] == "+0.10 (+0.00..+0.20)" and lora[7] == "0.950"   # fp32 merge: mean and range; lowest greedy
    assert lora[8] == "-0.20 (-0.40..+0.00)" and lora[9] == "0.950"  # merged in bf16
    assert "lossy" in rows["qlora"][-1] and "merge mismatch" in rows["qlora"][-1]
    assert rows["qlora"][8] == "-1.00"
    assert merge_tables([run("full", merge={"supported": False})]) == []
    # the same QLoRA merge within the tolerance of the unmerged model on its dequantized base: the gap is the
    # dequantization (unmerging keeps that base, so its check differs the same way and is not flagged apart)
    q = runs[3]["merge"]
    q.update(unmerge_ok=False, same_base={"max_abs_logit_diff": 1e-5, "max_rel_logit_diff": 1e-6,
                                          "greedy_agreement": 1.0, "ok": True})
    status = [line.split(" | ")[-1] for line in render_markdown(merge_tables(runs)).splitlines()
              if line.startswith("| t | qlora")]
    assert status == ["lossy dequantization > tol |"]
    q["same_base"]["ok"] = False   # the merge itself off too: flagged as before
    status = [line.split(" | ")[-1] for line in render_markdown(merge_tables(runs)).splitlines()
              if line.startswith("| t | qlora")]
    assert status == ["lossy merge mismatch unmerge mismatch |"]


# ---- exports --------------------------------------------------------------------------------------------------
SESSION = {"schema_version": 1, "session_id": "x", "status": "finished", "command": ["peftbench"], "config": {},
           "plan": [], "env": {}, "run_files": {}, "tasks": {"t": {"metric": "acc", "version": 1}},
           "model": {"source": "m"}}


def rows():
    return [run("base", acc=0.5), run("full", acc=0.9, params={"trainable": 100, "trainable_pct": 100.0},
                                      train={"peak_memory_bytes": 2**30, "wall_time_s": 3.0, "tokens_per_s": 10.0},
                                      artifact={"bytes": 2**20}),
            run("lo_ra&co", acc=0.85)]


def test_csv_round_trips():
    records = export_rows(SESSION, rows())
    back = list(csv.DictReader(io.StringIO(to_csv(records))))
    assert [r["method"] for r in back] == ["base", "full", "lo_ra&co"]
    for rec, got in zip(records, back, strict=True):
        for k, v in rec.items():
            assert got[k] == ("" if v is None else str(v)), k


def test_latex_is_a_booktabs_table():
    tex = to_latex(export_rows(SESSION, rows()), "m")
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}{lrrrrrr}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3
    for line in body:  # 7 columns, each row ended by \\ and every & inside a cell escaped
        assert line.endswith(r"\\")
        assert len(re.split(r"(?<!\\)&", line)) == 7
    assert r"lo\_ra\&co" in tex and "best" in body[1]


def test_json_export_and_report_cli(tmp_path, capsys):
    from peftbench.testing import run_cli

    folder = tmp_path / "s"
    (folder / "runs").mkdir(parents=True)
    (folder / "session.json").write_text(json.dumps(SESSION))
    for r in rows():
        (folder / "runs" / f"{r['key']}.json").write_text(json.dumps({**r, "schema_version": 1}))
    _seal(folder)
    code, out, err = run_cli(["report", str(folder), "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert {r["method"] for r in data["rows"]} == {"base", "full", "lo_ra&co"} and data["model"] == "m"
    code, out, err = run_cli(["report", str(folder), "--format", "csv", "--methods", "full"], capsys)
    assert code == 0 and [r["method"] for r in csv.DictReader(io.StringIO(out))] == ["base", "full"]


def _session(tmp_path, name, model="m", version=1, method="lora", seed=0):
    folder = tmp_path / name
    (folder / "runs").mkdir(parents=True)
    (folder / "session.json").write_text(json.dumps({**SESSION, "tasks": {"t": {"metric": "acc", "version": version}},
                                                     "model": {"source": model}}))
    r = run(method, seed=seed)
    (folder / "runs" / f"{r['key']}.json").write_text(json.dumps(r))
    return _seal(folder)


def _seal(folder):
    """Record every run file's sha256 in session.json, as a session does when it ends (an unlisted file
    is refused by report)."""
    from peftbench.results.store import sha256

    session = json.loads((folder / "session.json").read_text())
    session["run_files"] = {p.name: sha256(p) for p in sorted((folder / "runs").glob("*.json"))}
    (folder / "session.json").write_text(json.dumps(session))
    return folder


def test_merging_sessions_and_refusing_incompatible_ones(tmp_path):
    a, b = _session(tmp_path, "a"), _session(tmp_path, "b", method="full")
    merged = load_folders([a, b])
    assert sorted(r["method"] for r in merged["runs"]) == ["full", "lora"]
    other_model = _session(tmp_path, "c", model="other", method="adapter")
    with pytest.raises(UsageError, match="different base models .*--allow-mixed"):
        load_folders([a, other_model])
    assert len(load_folders([a, other_model], allow_mixed=True)["runs"]) == 2
    other_version = _session(tmp_path, "d", version=2, method="qlora")
    with pytest.raises(UsageError, match=r"different versions of task\(s\) t \(1, 2\)"):
        load_folders([a, other_version])
    again = _session(tmp_path, "e")  # the same cell twice
    with pytest.raises(UsageError, match="lora--t--seed0 is also in an earlier folder"):
        load_folders([a, again])


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete"])
def test_a_tampered_or_truncated_run_file_is_named(tmp_path, capsys, damage):
    from peftbench.results.store import sha256
    from peftbench.testing import run_cli

    folder = _session(tmp_path, "s")
    path = folder / "runs" / "lora--t--seed0.json"
    session = json.loads((folder / "session.json").read_text())
    session["run_files"] = {path.name: sha256(path)}
    (folder / "session.json").write_text(json.dumps(session))
    code, _, err = run_cli(["report", str(folder), "--format", "csv"], capsys)
    assert code == 0, err
    if damage == "edit":
        path.write_text(path.read_text().replace('"acc": 0.5', '"acc": 0.99'))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.unlink()
    code, _, err = run_cli(["report", str(folder), "--format", "csv"], capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err
    assert ("missing" in err) if damage == "delete" else ("sha256 differs" in err)


def test_pareto_frontier():
    from peftbench.report.plots import frontier

    # (cost, score): b is dominated by a (cheaper and better); d ties c's score at a higher cost
    pts = [(10.0, 0.8), (20.0, 0.7), (30.0, 0.9), (40.0, 0.9), (1.0, 0.5)]
    assert frontier(pts) == [(1.0, 0.5), (10.0, 0.8), (30.0, 0.9)]
    assert frontier([]) == []


def test_report_writes_pareto_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from peftbench.testing import run_cli

    folder = tmp_path / "s"
    (folder / "runs").mkdir(parents=True)
    (folder / "session.json").write_text(json.dumps(SESSION))
    for r in [run("base", acc=0.5), run("full", acc=0.9, params={"trainable": 1000}, train={"peak_memory_bytes": 2**31}),
              run("lora", acc=0.85, params={"trainable": 10}, train={"peak_memory_bytes": 2**30})]:
        (folder / "runs" / f"{r['key']}.json").write_text(json.dumps(r))
    _seal(folder)
    code, _, err = run_cli(["report", str(folder), "--format", "csv", "--plots", str(tmp_path / "p")], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["t-memory.png", "t-memory.svg", "t-params.png", "t-params.svg"]  # no time/latency data
    assert (tmp_path / "p" / "t-params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "p" / "t-params.svg").read_text()
    assert "<svg" in svg and "Pareto frontier" in svg


def test_schemas_validate_and_name_the_field(tmp_path, capsys):
    from peftbench.results.store import schema_errors
    from peftbench.testing import run_cli

    good = run("lora")
    assert schema_errors(good, "run") == [] and schema_errors(SESSION, "session") == []
    bad = {**good, "seed": "zero", "status": "done"}
    errors = schema_errors(bad, "run")
    assert any(e.startswith("$.seed:") for e in errors) and any(e.startswith("$.status:") for e in errors)
    assert any(e.startswith("$.run_files[") for e in schema_errors({**SESSION, "run_files": {"a.json": "xyz"}}, "session"))
    folder = _session(tmp_path, "s")
    path = folder / "runs" / "lora--t--seed0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": "zero"}))
    _seal(folder)   # as the session wrote it (write_run keeps an invalid file): reading names the field
    code, _, err = run_cli(["report", str(folder), "--format", "csv"], capsys)
    assert code == 2 and str(path) in err and "$.seed" in err and "schema" in err


def test_write_run_keeps_an_invalid_file_and_warns(tmp_path, capsys):
    from peftbench.results.store import write_run

    path = write_run(tmp_path, "lora--t--seed0", {**run("lora"), "seed": "zero"})
    assert json.loads(path.read_text())["seed"] == "zero"  # the results are kept
    assert "does not match the run-file schema" in capsys.readouterr().err


def test_without_jsonschema_a_run_file_is_still_written_and_reading_says_what_to_install(tmp_path, capsys,
                                                                                        monkeypatch):
    """On 2026-11-30 a GPU machine lacked jsonschema: the session died at its first cell with an ImportError."""
    import builtins

    from peftbench.cli.main import main
    from peftbench.results.store import write_run

    real_import = builtins.__import__

    def no_jsonschema(name, *args, **kwargs):
        if name == "jsonschema":
            raise ModuleNotFoundError("No module named 'jsonschema'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jsonschema)
    path = write_run(tmp_path / "s", "lora--t--seed0", run("lora"))
    assert json.loads(path.read_text())["method"] == "lora"  # the cell's results are kept
    err = capsys.readouterr().err
    assert "was written, but" in err and "pip install 'jsonschema>=4.18'" in err
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(_session(tmp_path, "other"))])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "pip install 'jsonschema>=4.18'" in err and "Traceback" not in err


def test_report_metric_and_columns_options(tmp_path, capsys):
    from peftbench.testing import run_cli

    folder = _session(tmp_path, "s")
    path = folder / "runs" / "lora--t--seed0.json"
    r = json.loads(path.read_text())
    r["eval"]["metrics"]["acc_norm"] = 0.7
    path.write_text(json.dumps(r))
    _seal(folder)
    code, out, err = run_cli(["report", str(folder), "--format", "csv", "--metric", "acc_norm", "--columns",
                              "method,metric,score"], capsys)
    assert code == 0, err
    assert out.splitlines() == ["method,metric,score", "lora,acc_norm,0.7"]
    code, _, err = run_cli(["report", str(folder), "--metric", "f1"], capsys)
    assert code == 2 and "these runs record acc, acc_norm" in err
    code, _, err = run_cli(["report", str(folder), "--format", "csv", "--columns", "nope"], capsys)
    assert code == 2 and "no column nope" in err


def test_seeds_aggregate_to_mean_sd_and_ci():
    runs = [run("base", acc=0.5)] + [run("lora", seed=s, acc=a) for s, a in enumerate([0.80, 0.82, 0.84])]
    (lora,) = [r for r in export_rows(SESSION, runs) if r["method"] == "lora"]
    half = 4.303 * 0.02 / math.sqrt(3)
    assert lora["seeds"] == 3 and lora["score"] == pytest.approx(0.82) and lora["score_sd"] == pytest.approx(0.02)
    assert [lora["score_ci_low"], lora["score_ci_high"]] == pytest.approx([0.82 - half, 0.82 + half])


def test_leaderboard_flags_methods_trained_in_different_loops():
    from peftbench.report.leaderboard_table import leaderboard_tables, loop_signature, mixed_loops

    fast = {"loop": "fast", "padding_free": True, "chunked_loss": True, "compile": "blocks x30, static shapes",
            "optimizer": "torch AdamW (fused)"}
    failed = {**fast, "compile": "failed, off: RuntimeError: no kernel"}
    assert loop_signature({"train": {"loop": fast}}) == "fast, packed, chunked loss, compiled, torch AdamW (fused)"
    assert loop_signature({"train": {}}) is None  # older run files: nothing to compare
    same = [run("lora", train={"loop": fast}), run("full", train={"loop": fast}), run("base")]
    assert mixed_loops(same) is None
    mixed = [run("lora", train={"loop": fast}), run("full", train={"loop": failed}), run("base")]
    assert mixed_loops(mixed) == {"full": "fast, packed, chunked loss, compile failed, torch AdamW (fused)",
                                  "lora": "fast, packed, chunked loss, compiled, torch AdamW (fused)"}
    session = {"tasks": {"t": {"metric": "acc"}}, "model": {"source": "m"}, "env": {"device": "cuda"}}
    (table,) = leaderboard_tables(session, mixed)
    assert "training loops differ between methods" in str(table.title) and "full: fast" in str(table.title)
    (table,) = leaderboard_tables(session, same)
    assert "differ" not in str(table.title)


def _leaderboard_status(runs):
    """The rendered leaderboard, and each method's status column in it."""
    from peftbench.report.leaderboard_table import leaderboard_tables
    from peftbench.report.markdown import render_markdown

    board = render_markdown(leaderboard_tables({}, runs))
    return board, {line.split("|")[1].strip(): line.rsplit("|", 2)[-2].strip() for line in board.splitlines()
                   if line.startswith("| ") and not line.startswith("| method")}


def _latency_sanity(extra):
    """The sanity column of a one-cell latency table whose section also holds ``extra``."""
    from peftbench.report.latency_table import latency_tables
    from peftbench.report.markdown import render_markdown

    lat = {"regimes": {"eager": [{"batch_size": 1, "prompt_tokens": 4, "new_tokens": 2, "modes": {"base": {}},
                                  "overhead": {}}]}, **extra}
    (row,) = [line for line in render_markdown(latency_tables({"lora": lat})).splitlines() if line.startswith("| lora")]
    return row.rstrip(" |")


def _phase_session():
    """What ``phases.phase`` needs of a session: a progress display."""
    import types

    return types.SimpleNamespace(progress=types.SimpleNamespace(phase=lambda name: None))


def _timed(record, name, session):
    """Run an empty phase ``name`` into ``record``; return the record as its run file's JSON."""
    from peftbench.results.store import run_json
    from peftbench.session.phases import phase

    with phase(record, name, session.progress):
        pass
    return run_json(record)


def _record():
    from peftbench.results.record import RunRecord

    return RunRecord(key="k", status="ok", method="lora", task="t", seed=0, model=None, config={},
                     capabilities=None, data=None, limit=None)


def _neighbour_run(method, **neighbours):
    """An ok run on task t (acc 0.5) with the given gpu_others_bytes / host_others_cores."""
    return {"task": "t", "method": method, "seed": 0, "status": "ok", "eval": {"metrics": {"acc": 0.5}},
            **neighbours}


def test_cells_timed_on_a_shared_gpu_are_flagged(monkeypatch):
    """Each phase samples the device memory in use outside this process's allocator; a cell that saw more
    than another process's worth is marked 'GPU shared' on the leaderboard (its times are not its own)."""

    from peftbench.report.leaderboard import rows_for_task
    from peftbench.system import memory

    seen = iter([1 * 1024**3, 5 * 1024**3])
    monkeypatch.setattr(memory, "gpu_others_bytes", lambda: next(seen))
    session = _phase_session()
    result = _timed(_record(), "train", session)
    assert result["gpu_others_bytes"] == 5 * 1024**3 and "train" in result["timings"]
    monkeypatch.setattr(memory, "gpu_others_bytes", lambda: None)  # CPU: nothing recorded
    cpu = _timed(_record(), "train", session)
    assert "gpu_others_bytes" not in cpu

    runs = [_neighbour_run("base", gpu_others_bytes=None),
            _neighbour_run("lora", gpu_others_bytes=result["gpu_others_bytes"]),
            _neighbour_run("full", gpu_others_bytes=1 * 1024**3)]
    assert {r["method"]: r["gpu_shared"] for r in rows_for_task(runs, "t")} == {
        "base": False, "lora": True, "full": False}
    board, status = _leaderboard_status(runs)
    assert status["lora"] == "ok GPU shared" and status["full"] == "ok"
    assert "other processes used the GPU" in board

    # the latency table says so too (its section carries the sample of its own timing)

    assert _latency_sanity({"gpu_others_bytes": 5 * 1024**3}).endswith("ok GPU shared")


def test_host_cpu_used_by_other_processes_is_measured():
    """host_others_cores counts CPU used outside this process's tree: a spinning child process (like a compile
    worker) is this process's own work; the same spin in a process that is not a descendant is another's."""
    import subprocess
    import sys
    import time

    from peftbench.system import memory

    if memory.cpu_sample() is None:
        pytest.skip("needs Linux /proc")
    spin = "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass"

    def measure() -> float:
        time.sleep(0.3)  # let the spinner start
        a = memory.cpu_sample()
        time.sleep(1.2)
        return memory.host_others_cores(a, memory.cpu_sample())

    child = subprocess.Popen([sys.executable, "-c", spin])
    own = measure()
    child.wait()
    # `sh -c 'cmd &'`: the shell exits at once, the spinner is re-parented away from this process's tree
    subprocess.run(["sh", "-c", f"'{sys.executable}' -c '{spin}' >/dev/null 2>&1 &"], check=True)
    foreign = measure()
    assert foreign >= 0.7, foreign           # one core kept busy by someone else (~1.0)
    assert foreign - own >= 0.5, (own, foreign)


def test_cells_timed_on_a_busy_host_are_flagged(monkeypatch):
    """A phase records the most CPU other processes used during it; above HOST_BUSY_CORES the leaderboard and
    the latency table mark the cell 'host busy'."""

    from peftbench.report.leaderboard import rows_for_task
    from peftbench.system import memory

    # (wall s, host busy CPU s, own tree CPU s): 10 s in which the host spent 25 CPU s, this process 5
    samples = iter([(0.0, 100.0, 10.0), (10.0, 125.0, 15.0), (20.0, 125.0, 15.0), (30.0, 131.0, 20.0)])
    monkeypatch.setattr(memory, "cpu_sample", lambda: next(samples))
    monkeypatch.setattr(memory, "gpu_others_bytes", lambda: None)
    session = _phase_session()
    record = _record()
    result = _timed(record, "train", session)
    assert result["host_others_cores"] == pytest.approx(2.0)   # (25 - 5) / 10
    result = _timed(record, "evaluate", session)
    assert result["host_others_cores"] == pytest.approx(2.0)   # the later, quieter phase (0.1) keeps the max
    monkeypatch.setattr(memory, "cpu_sample", lambda: None)    # not Linux: nothing recorded
    other = _timed(_record(), "train", session)
    assert "host_others_cores" not in other

    runs = [_neighbour_run("base", host_others_cores=None), _neighbour_run("lora", host_others_cores=2.0),
            _neighbour_run("full", host_others_cores=0.4)]
    assert {r["method"]: r["host_busy"] for r in rows_for_task(runs, "t")} == {
        "base": False, "lora": True, "full": False}
    board, status = _leaderboard_status(runs)
    assert status["lora"] == "ok host busy" and status["full"] == "ok"
    assert "kept over 1 CPU core busy" in board
    assert _latency_sanity({"host_others_cores": 3.5}).endswith("ok host busy")
