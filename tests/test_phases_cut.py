"""The phases after training, cut to what the device needs: the merge-precision study only where bf16 is
served (and sharing the trained model with the merge checks), scoring batch sizes per device, latency rounds
that stop once their interval is narrow enough, scoring quiet outside a git checkout."""

import json

import pytest

from peftbench.evaluate.config import CPU_BATCH, CUDA_BATCH, EvalConfig
from peftbench.testing import run_cli

TINY = ["--model", "tiny:llama", "--device", "cpu"]
QUICK = ["--set", "steps=2", "--set", "evaluate=off", "--set", "latency_rounds=0"]


def _runs(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


# ---- the merge-precision study: 'auto' = on CUDA only -----------------------------------------------------
@pytest.mark.parametrize("value,device,earlier,resolved", [
    ("auto", "cpu", None, False), ("auto", "cuda", None, True),
    ("auto", "cpu", {"merge_precisions": True}, True),     # a folder written when the default was true
    ("auto", "cuda", {"merge_precisions": False}, False),
    (True, "cpu", None, True), (False, "cuda", {"merge_precisions": True}, False),  # asked for: as asked
])
def test_merge_precisions_auto_resolves_for_the_device_or_the_folder(value, device, earlier, resolved):
    cfg = EvalConfig(merge_precisions=value)
    cfg.resolve(device, earlier)
    assert cfg.merge_precisions is resolved


def test_a_bad_merge_precisions_value_names_the_valid_ones(capsys):
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--set", "merge_precisions=maybe"], capsys)
    assert code == 2 and "merge_precisions" in err and "auto" in err and "Traceback" not in err


def test_cpu_skips_the_study_by_default_and_says_why(capsys, tmp_path):
    out = tmp_path / "s"
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--no-base", "--output", str(out), *QUICK], capsys)
    assert code == 0, err
    run = _runs(out)["lora--quickstart--seed0"]
    assert run["config"]["train"]["merge_precisions"] is False  # resolved at plan time: what was done
    assert run["config"]["train"]["eval_batch_size"] == CPU_BATCH
    assert "precision" not in run["merge"] and run["merge"]["ok"]
    assert run["merge"]["precision_skipped"].startswith("skipped on cpu (bf16 serving needs a GPU")
    assert "merge_precision" not in run["timings"]
    assert {"data", "load", "prepare", "train", "probe", "save", "merge", "reload"} <= set(run["timings"])
    code, table, _ = run_cli(["report", str(out)], capsys)
    assert code == 0 and "Not measured: merge-precision study: skipped on cpu" in " ".join(table.split())


def test_resuming_a_folder_recorded_with_the_old_boolean_default_keeps_it(capsys, tmp_path):
    """Folders written when merge_precisions defaulted to true recorded ``true``; resumed under the 'auto'
    default they keep it (the plan does not change), and the cells added run the study as the earlier did."""
    out = tmp_path / "old"
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--no-base", "--output", str(out), *QUICK], capsys)
    assert code == 0, err
    session = json.loads((out / "session.json").read_text())  # rewrite it as the old default recorded it
    for opts in session["train_configs"].values():
        opts["merge_precisions"], opts["eval_batch_size"] = True, 32
    (out / "session.json").write_text(json.dumps(session))
    run_file = out / "runs" / "lora--quickstart--seed0.json"
    run_file.unlink()  # and run its cell again under --resume, with a second seed added
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--no-base", "--seeds", "0,1", "--output", str(out),
                            "--resume", *QUICK], capsys)
    assert code == 0, err
    for seed in (0, 1):
        run = _runs(out)[f"lora--quickstart--seed{seed}"]
        assert run["config"]["train"]["merge_precisions"] is True and "precision_skipped" not in run["merge"]
        assert run["config"]["train"]["eval_batch_size"] == 32
        assert run["merge"]["precision"]["merge_in_bf16"]["greedy_agreement"] > 0.5


# ---- scoring batch sizes per device ---------------------------------------------------------------------
@pytest.mark.parametrize("value,device,earlier,resolved", [
    ("auto", "cpu", None, CPU_BATCH), ("auto", "cuda", None, CUDA_BATCH),
    ("auto", "cpu", {"eval_batch_size": 32}, 32),  # a folder written when the default was 32 keeps it
    (16, "cuda", {"eval_batch_size": 32}, 16),
])
def test_eval_batch_size_auto_resolves_for_the_device_or_the_folder(value, device, earlier, resolved):
    cfg = EvalConfig(eval_batch_size=value)
    cfg.resolve(device, earlier)
    assert cfg.eval_batch_size == resolved and cfg.batch_size("cuda") == resolved  # a number from now on


def test_a_bad_eval_batch_size_is_a_usage_error(capsys):
    for bad in ("big", "0"):
        code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--set", f"eval_batch_size={bad}"], capsys)
        assert code == 2 and "eval_batch_size" in err and "Traceback" not in err


# ---- the study shares the trained model with the merge checks ---------------------------------------------
def test_the_study_from_the_model_in_hand_matches_fresh_copies_with_fewer_loads(peftbench_host):
    """Merging the trained model in hand (as unmerging restored it) in fp32 gives the figures a fresh copy of
    the artifact gives, and the study loads one copy instead of three."""
    import dataclasses
    import tempfile
    from pathlib import Path

    import torch

    from peftbench.api.registry import collect_methods
    from peftbench.session.checks import merge_precision_study
    from peftbench.session.defaults import load_artifact, merge_adapter
    from peftbench.testing import tiny_llama, train_steps

    method = collect_methods(peftbench_host).get("lora")
    config = method.make_config({})
    torch.manual_seed(0)
    base, tokenizer = tiny_llama()
    trained = method.prepare(base, config)
    train_steps(method, trained, tokenizer, steps=3)

    class Hook:
        def merge_adapter(self, run, prepared):
            return merge_adapter(run, prepared)

        def load_artifact(self, run, directory, base_model):
            return load_artifact(run, directory, base_model)

    @dataclasses.dataclass
    class Run:
        method: object
        method_config: object
        hook: object = dataclasses.field(default_factory=Hook)
        device: str = "cpu"

    run = Run(method, config)
    probes = [tokenizer("Sentence: the cat sat\nTag:")["input_ids"], tokenizer("Hello world")["input_ids"]]
    with tempfile.TemporaryDirectory() as d:
        method.save(trained, Path(d), config)
        loads = []

        def load_trained():
            loads.append(1)
            return load_artifact(run, d, tiny_llama()[0])

        fresh = merge_precision_study(run, load_trained, None, probes, tokenizer, scored=False)
        fresh_loads, loads[:] = len(loads), []
        shared = merge_precision_study(run, load_trained, trained, probes, tokenizer, scored=False)
    assert (fresh_loads, len(loads)) == (2, 1)
    for name in ("merge_fp32_then_cast", "merge_in_bf16"):
        a, b = getattr(fresh, name), getattr(shared, name)
        assert a.max_abs_logit_diff == pytest.approx(b.max_abs_logit_diff, rel=0.05, abs=1e-3)
        assert a.greedy_agreement == pytest.approx(b.greedy_agreement, abs=0.05)
        assert 0 < a.max_rel_logit_diff < 0.05  # bf16 rounding: not zero, not a broken merge


# ---- latency rounds stop once the medians are tight -------------------------------------------------------
def _fake_clock_measure(monkeypatch, config, spread):
    """``measure`` over three modes whose decode times come from a fake clock: 10 ms per token times a
    deterministic jitter of +-``spread``."""
    import contextlib
    import itertools

    import peftbench.latency.timer as timer

    jitter = itertools.cycle([0.0, 1.0, -1.0, 0.5, -0.5, 0.8, -0.8])
    calls = []

    def fake_round(model, ids, new_tokens, clock):
        calls.append(model)
        ms = 10.0 * (1 + spread * next(jitter))
        return ms * 4, ms, ms

    monkeypatch.setitem(timer.ROUNDS, "eager", fake_round)
    modes = {n: (lambda n=n: contextlib.nullcontext(n)) for n in ("base", "unmerged", "merged")}
    return timer.measure(modes, config.grid(), "cpu", 100, stop=config.stop_rule()), calls


def _plan(**kw):
    """The LatencyConfig of a one-shape grid (``measure`` gets its grid and its stop rule)."""
    from peftbench.latency.config import LatencyConfig

    return LatencyConfig(**{"batch_sizes": [1], "prompt_lengths": [4], "new_tokens": 2, **kw})


def test_rounds_stop_early_on_a_quiet_clock(monkeypatch):
    plan = _plan(rounds=10, min_rounds=3, target_rel_ci=0.05)
    out, calls = _fake_clock_measure(monkeypatch, plan, spread=0.01)  # +-1 %: tight after the minimum
    cell = out["regimes"]["eager"][0]
    assert cell["rounds"] == 3 and len(calls) == 3 * (plan.grid().warmup + 3)
    for mode in ("base", "unmerged", "merged"):
        decode = cell["modes"][mode]["samples"]["decode"]
        assert len(decode) == 3
        assert cell["modes"][mode]["decode_rel_ci"] == pytest.approx((max(decode) - min(decode)) / 2 / 10.0, abs=2e-4)
        assert 0 < cell["modes"][mode]["decode_rel_ci"] <= 0.01
    assert out["stop"] == {"min_rounds": 3, "target_rel_ci": 0.05}
    assert "min_rounds" not in out["plan"]  # plans compare as before (peftbench latency --resume, kept shapes)
    assert out["sanity"][0]["ok"] is True  # 3 rounds: judged


def test_rounds_run_to_the_maximum_on_a_noisy_clock(monkeypatch):
    plan = _plan(rounds=8, min_rounds=3, target_rel_ci=0.05)
    out, calls = _fake_clock_measure(monkeypatch, plan, spread=0.30)  # +-30 %: never tight enough
    cell = out["regimes"]["eager"][0]
    assert cell["rounds"] == 8 and len(calls) == 3 * (plan.grid().warmup + 8)
    assert cell["modes"]["base"]["decode_rel_ci"] > 0.05


def test_a_fixed_count_when_min_rounds_is_the_maximum_or_the_target_zero(monkeypatch):
    for kw in ({"rounds": 5, "min_rounds": 5}, {"rounds": 5, "target_rel_ci": 0.0}):
        out, _ = _fake_clock_measure(monkeypatch, _plan(**kw), spread=0.0)
        assert out["regimes"]["eager"][0]["rounds"] == 5


def test_a_shape_stopped_below_the_judging_minimum_is_doubted_and_not_judged(monkeypatch):
    from peftbench.report.doubts import rounds_taken, timing_doubts

    out, _ = _fake_clock_measure(monkeypatch, _plan(rounds=6, min_rounds=2, target_rel_ci=0.05), spread=0.0)
    assert out["regimes"]["eager"][0]["rounds"] == 2 and out["plan"]["rounds"] == 6
    assert rounds_taken(out, "eager") == 2
    assert "2 timed rounds: too few for a CI" in timing_doubts(out, "eager")
    assert out["sanity"][0]["ok"] is None  # the sanity check does not judge 2 rounds either
    old = {"plan": {"rounds": 2}, "regimes": {"eager": [{"batch_size": 1}]}}  # a file from before: plan's count
    assert rounds_taken(old, "eager") == 2


def test_median_ci_is_the_order_statistics_interval():
    from peftbench.latency.stats import median_ci, rel_half_width

    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)                  # below 6: [min, max]
    assert median_ci(list(range(1, 11))) == (2, 9)                    # n = 10: k = 2 (97.9 % coverage)
    assert median_ci(list(range(1, 21))) == (6, 15)                   # n = 20: k = 6 (95.9 %)
    assert rel_half_width([9.0, 10.0, 11.0]) == pytest.approx(0.1)
    assert rel_half_width([10.0]) == float("inf")


def test_without_a_stop_rule_every_shape_times_all_rounds(monkeypatch):
    import contextlib

    import peftbench.latency.timer as timer

    monkeypatch.setitem(timer.ROUNDS, "eager", lambda model, ids, n, clock: (4.0, 1.0, 1.0))
    modes = {n: (lambda n=n: contextlib.nullcontext(n)) for n in ("base", "merged")}
    out = timer.measure(modes, _plan(rounds=4).grid(), "cpu", 100)
    assert out["regimes"]["eager"][0]["rounds"] == 4 and "stop" not in out


def test_the_stopping_rule_leaves_old_folders_keys_and_plans_alone():
    """Files written before latency_min_rounds / latency_target_rel_ci existed lack them: at their defaults the
    options are not recorded, so a resumed plan is unchanged and the latency reuse key is the old one."""
    from peftbench.session.options import GRID_KEYS, CellOptions
    from peftbench.session.timing import latency_key_of_result

    flat = CellOptions().flat()
    assert "latency_min_rounds" not in flat and "latency_target_rel_ci" not in flat
    assert GRID_KEYS == ("latency_rounds", "latency_batch_sizes", "latency_prompt_lengths", "latency_new_tokens",
                         "latency_regimes", "latency_stack", "latency_dtype")
    old_train = {k: v for k, v in flat.items() if k in GRID_KEYS}
    result = {"method": "lora", "config": {"method": {"r": 8}, "train": old_train}}
    assert latency_key_of_result(result) == latency_key_of_result({**result, "config": {
        "method": {"r": 8}, "train": flat}})
    changed = CellOptions.build({"latency_min_rounds": 5}, "test").flat()
    assert changed["latency_min_rounds"] == 5
    assert latency_key_of_result({**result, "config": {"method": {"r": 8}, "train": changed}}) != \
        latency_key_of_result(result)


# ---- scoring outside a git checkout is quiet ---------------------------------------------------------------
def test_scoring_outside_a_git_checkout_prints_no_git_error(capfd, tmp_path, monkeypatch):
    """lm-eval asks git for the cwd's commit on every scoring pass; outside a checkout git printed `fatal: not a
    git repository` each time. peftbench does not ask (the run file records its own git hash)."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed: nothing could print its error")
    away = tmp_path / "not-a-checkout"
    away.mkdir()
    monkeypatch.chdir(away)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no checkout above it either
    probe = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True)
    assert "not a git repository" in probe.stderr  # what lm-eval's own call prints here
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", str(tmp_path / "out"),
                            "--set", "steps=1", "--set", "limit=4", "--set", "latency_rounds=0",
                            "--set", "merge_eval=false", "--retention", "none"], capfd)
    assert code == 0, err
    runs = _runs(tmp_path / "out")
    assert runs["base--quickstart--seed0"]["eval"]["n_samples"] == 4  # it scored (base row and lora)
    assert runs["lora--quickstart--seed0"]["eval"]["n_samples"] == 4
    assert "not a git repository" not in err and "fatal:" not in err


def test_a_scored_study_compares_each_merge_with_the_unmerged_bf16_score(capsys, tmp_path):
    out = tmp_path / "scored"
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--no-base", "--output", str(out), "--set", "steps=1",
                            "--set", "limit=4", "--set", "latency_rounds=0", "--set", "merge_eval=false",
                            "--set", "merge_precisions=on", "--retention", "none"], capsys)
    assert code == 0, err
    run = _runs(out)["lora--quickstart--seed0"]
    precision, timings = run["merge"]["precision"], run["timings"]
    unmerged = precision["unmerged"]["score"]
    assert unmerged is not None and precision["unmerged"]["n_samples"] == 4
    for name in ("merge_fp32_then_cast", "merge_in_bf16"):
        ev = precision[name]["eval"]
        assert ev["reference"] == unmerged and ev["n_samples"] == 4
        assert ev["delta"] == pytest.approx(ev["score"] - unmerged, abs=1e-12)
        assert len(ev["samples"]["doc_id"]) == 4
    assert timings["merge_precision"] > 0 and "precision_skipped" not in run["merge"]
