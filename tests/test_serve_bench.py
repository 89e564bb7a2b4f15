"""``peftbench serve-bench``: one base model serving K adapters, rows of a batch asking for different ones.

Correctness first (each row of a mixed batch gives its adapter's logits, for every K, on tiny:llama), then
the sweep's bookkeeping, the command (bad input exits 2, --resume keeps finished points), and the serving
claims' verdicts on synthetic timings."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
import torch

from peftbench.api.plugins import make_plugin_manager
from peftbench.api.registry import collect_methods
from peftbench.errors import ConfigError
from peftbench.latency.config import LatencyPlan
from peftbench.latency.serving import (
    FIRST,
    RowAdapters,
    adapter_names,
    add_adapters,
    randomize_adapter,
    to_inference,
)
from peftbench.latency.serving_check import check_mixed_batch, check_mixed_batches
from peftbench.latency.serving_config import ServePlan, mixed_mode, row_adapters
from peftbench.latency.serving_section import join_points, kept_points
from peftbench.latency.shape import ShapeSamples, shape_cell
from peftbench.models.sources import load_model
from peftbench.report.claims import check, load_claims
from peftbench.testing import run_cli

KS = ServePlan().adapters  # 1, 2, 4, 8, 16, 32: every K the sweep times


@pytest.fixture(scope="module")
def multi():
    """tiny:llama with 32 random LoRA adapters (fp32, CPU) on an attention and an MLP projection (PEFT's
    add_adapter slows with every layer and adapter held), the first active; and its names."""
    registry = collect_methods(make_plugin_manager(load_entrypoints=False))
    lora = registry.get("lora")
    base, _, _ = load_model("tiny:llama")
    model = lora.prepare(base, lora.make_config({"target_modules": ["q_proj", "v_proj", "down_proj"]}))
    randomize_adapter(model, FIRST, 7)
    to_inference(model, FIRST)
    names = adapter_names(max(KS))
    add_adapters(model, names, torch.float32, 7, "cpu")
    return model, names


def _ids(rows: int, length: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(10, 200, (rows, length), generator=torch.Generator().manual_seed(seed))


# ---- correctness: a mixed batch gives each row its own adapter's logits ----------------------------------------

@pytest.mark.parametrize("k", KS)
def test_a_mixed_batch_gives_every_row_its_adapters_logits(multi, k):
    model, names = multi
    result = check_mixed_batch(model, names, k, _ids(k + 1, length=4, seed=k), FIRST)  # adapter 0 serves 2 rows
    assert result["ok"], result
    assert result["relative_error"] <= 1e-5 and result["rows"] == k + 1
    assert result["min_adapter_effect"] > 1e-3   # the adapters differ: the check could have failed
    assert model.active_adapters == [FIRST]


def test_one_batch_checks_every_k_as_the_session_does(multi):
    model, names = multi
    ids = _ids(2 * max(KS), length=4, seed=5)
    results = check_mixed_batches(model, names, KS, ids, FIRST)
    assert [r["adapters"] for r in results] == KS and all(r["ok"] and r["rows"] == 64 for r in results)
    assert results[1] == check_mixed_batch(model, names, 2, ids, FIRST)


def test_the_mixed_batch_matches_each_row_run_alone_with_its_adapter(multi):
    """Independent of the check's own bookkeeping: batch-1 forwards, one adapter each, every position."""
    model, names = multi
    ids = _ids(6, seed=3)
    wanted = row_adapters(names, 3, 6)
    assert wanted == [names[0], names[1], names[2]] * 2
    with torch.inference_mode():
        mixed = model(input_ids=ids, adapter_names=wanted).logits
        for row, name in enumerate(wanted):
            model.set_adapter(name)
            alone = model(input_ids=ids[row:row + 1]).logits[0]
            assert torch.allclose(mixed[row], alone, atol=1e-5, rtol=1e-5), (row, name)
            other = names[(names.index(name) + 1) % 3]
            model.set_adapter(other)
            assert (model(input_ids=ids[row:row + 1]).logits[0] - alone).abs().max() > 1e-3
    model.set_adapter(FIRST)


class _Shifted:
    """The multi-adapter model, but a mixed batch's rows get the next row's adapter: a wrong per-row path."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, adapter_names=None, **kwargs):
        if adapter_names is not None:
            adapter_names = adapter_names[1:] + adapter_names[:1]
        return self.model(adapter_names=adapter_names, **kwargs)


def test_the_check_fails_when_rows_get_the_wrong_adapter_or_adapters_do_nothing(multi):
    model, names = multi
    wrong = check_mixed_batch(_Shifted(model), names, 4, _ids(8), FIRST)
    assert not wrong["ok"] and wrong["relative_error"] > 1e-3
    registry = collect_methods(make_plugin_manager(load_entrypoints=False))
    lora = registry.get("lora")
    untrained = lora.prepare(load_model("tiny:llama")[0], lora.make_config({}))  # B = 0: every adapter is the base
    to_inference(untrained, FIRST)
    add_adapters(untrained, adapter_names(2), torch.float32, 0, "cpu")
    for p_name, p in untrained.named_parameters():
        if "lora_B" in p_name:
            p.data.zero_()
    idle = check_mixed_batch(untrained, adapter_names(2), 2, _ids(4), FIRST)
    assert idle["max_abs_error"] == 0.0 and idle["min_adapter_effect"] == 0.0 and not idle["ok"]


def test_row_adapters_wraps_the_model_for_the_timer(multi):
    model, names = multi
    wrapped = RowAdapters(model, names, 4)
    ids = _ids(5, length=4)
    assert wrapped.rows(ids) == [names[0], names[1], names[2], names[3], names[0]]
    out = wrapped.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                           do_sample=False, pad_token_id=0)
    assert out.shape == (5, 6)
    with pytest.raises(ValueError, match="3 adapters asked for, 2 loaded"):
        row_adapters(names[:2], 3, 4)


# ---- the sweep's bookkeeping ------------------------------------------------------------------------------------

def test_the_sweep_times_k_up_to_the_batch_and_names_the_rest():
    plan = ServePlan()
    points = plan.points()
    assert [(p.key, p.mixed, p.not_timed) for p in points] == [
        ("bs1", [1], [2, 4, 8, 16, 32]), ("bs8", [1, 2, 4, 8], [16, 32]), ("bs32", [1, 2, 4, 8, 16, 32], [])]
    assert points[1].modes(True) == ["base", "merged", "one", "single", "mixed1", "mixed2", "mixed4", "mixed8"]
    assert points[0].modes(False) == ["base", "one", "single", "mixed1"]
    lp = plan.latency_plan(8)
    assert isinstance(lp, LatencyPlan) and lp.batch_sizes == [8] and lp.prompt_lengths == [128]
    assert (lp.new_tokens, lp.rounds, lp.regimes) == (16, 5, ["eager"]) and plan.most_adapters == 32


@pytest.mark.parametrize("fields,needle", [
    ({"adapters": [2, 4]}, "start at 1 and rise"), ({"adapters": [1, 4, 2]}, "start at 1 and rise"),
    ({"batch_sizes": [0]}, "positive whole numbers"), ({"adapters": [1, 1]}, "lists a value twice"),
    ({"regimes": ["turbo"]}, "eager, static"), ({"new_tokens": 1}, ">= 2"), ({"dtype": "int8"}, "auto, bf16"),
])
def test_the_plan_refuses_bad_values_naming_them(fields, needle):
    with pytest.raises(ConfigError, match=needle):
        ServePlan(**fields)


def _samples(modes: dict[str, list[float]]) -> ShapeSamples:
    samples = ShapeSamples.of(list(modes))
    for mode, decodes in modes.items():
        for d in decodes:
            samples.add(mode, (d * 10, d, d), (0, 3000.0))
    return samples


def _section(batch: int, modes: dict[str, list[float]], rounds: int, **neighbours) -> dict:
    """A timer section of one point, built by the harness's own cell code from given decode times."""
    plan = LatencyPlan(batch_sizes=[batch], prompt_lengths=[8], new_tokens=3, rounds=rounds, regimes=["eager"])
    where = {"regime": "eager", "batch_size": batch, "prompt_tokens": 8}
    cell, sanity = shape_cell(where, list(modes), _samples(modes), plan, ("merged",))
    return {"plan": {**plan.__dict__}, "timer": "perf_counter", "modes": list(modes), "regimes": {"eager": [cell]},
            "sanity": sanity, "errors": [], "wall_s": {"eager": dict.fromkeys(modes, 1.5)}, "dtype": "float32",
            **neighbours}


def test_points_join_into_one_section_in_sweep_order():
    a = _section(1, {"base": [1.0, 1.1, 1.0], "mixed1": [2.0, 2.1, 2.0]}, 3, gpu_others_bytes=None,
                 host_others_cores=0.2)
    b = _section(4, {"base": [1.0, 1.0, 1.0], "mixed1": [2.0] * 3, "mixed2": [3.0] * 3}, 3,
                 gpu_others_bytes=None, host_others_cores=0.7)
    joined = join_points({"bs1": a, "bs4": b}, {"plan": {"x": 1}})
    assert [c["batch_size"] for c in joined["regimes"]["eager"]] == [1, 4]
    assert joined["modes"] == ["base", "mixed1", "mixed2"] and joined["plan"]["batch_sizes"] == [1, 4]
    assert joined["wall_s"]["eager"] == {"base": 3.0, "mixed1": 3.0, "mixed2": 1.5}
    assert joined["host_others_cores"] == 0.7 and joined["gpu_others_bytes"] is None
    assert joined["summary"]["batch_size"] == 1 and joined["serving"] == {"plan": {"x": 1}}
    earlier = {"method_config": {"r": 16}, "serving": {"plan": {"x": 1}, "points": {"bs1": a}}}
    assert kept_points(earlier, {"r": 16}, {"x": 1}) == {"bs1": a}
    assert kept_points(earlier, {"r": 8}, {"x": 1}) == {} and kept_points(earlier, {"r": 16}, {"x": 2}) == {}
    assert kept_points(None, {"r": 16}, {"x": 1}) == {}


# ---- the command -------------------------------------------------------------------------------------------------

SWEEP = ["--model", "tiny:llama", "--device", "cpu", "--adapters", "1,2", "--batch-sizes", "1,2",
         "--prompt-lengths", "8", "--new-tokens", "3", "--rounds", "2"]


def test_serve_bench_end_to_end_with_resume(capsys, tmp_path, monkeypatch):
    import peftbench.latency.timer as timer

    real, calls = timer.measure, []

    def interrupted(modes, plan, *args, **kwargs):
        calls.append((plan.batch_sizes[0], list(modes)))
        if len(calls) == 2 and stop[0]:
            raise KeyboardInterrupt
        return real(modes, plan, *args, **kwargs)

    stop = [True]
    monkeypatch.setattr(timer, "measure", interrupted)
    out = tmp_path / "serve"
    code, _, err = run_cli(["serve-bench", "--methods", "lora,full", *SWEEP, "--output", str(out)], capsys)
    assert code != 0 and "Traceback" not in err
    partial = json.loads((out / "serving-partial" / "lora.json").read_text())
    assert partial["status"] == "partial" and list(partial["serving"]["points"]) == ["bs1"]
    kept_cell = partial["serving"]["points"]["bs1"]["regimes"]["eager"][0]

    stop[0], calls[:] = False, []
    code, stdout, err = run_cli(["serve-bench", "--methods", "lora,full", *SWEEP, "--output", str(out), "--resume"],
                                capsys)
    assert code == 0, err
    assert "lora: continuing; 1 point(s) kept" in err and [b for b, _ in calls] == [2]
    assert "does not match the serving schema" not in err
    assert calls[0][1] == ["base", "merged", "one", "single", "mixed1", "mixed2"]
    r = json.loads((out / "latency" / "serving-lora.json").read_text())
    assert (r["kind"], r["status"], r["adapters"]) == ("serving", "ok", "random-initialised")
    lat = r["latency"]
    assert [c["batch_size"] for c in lat["regimes"]["eager"]] == [1, 2] and lat["regimes"]["eager"][0] == kept_cell
    assert list(lat["regimes"]["eager"][0]["modes"]) == ["base", "merged", "one", "single", "mixed1"]
    serving = lat["serving"]
    assert serving["not_timed"]["bs1"] == {"larger_than_batch": [2], "wrong_logits": []}
    assert [c["adapters"] for c in serving["checks"]] == [1, 2] and all(c["ok"] for c in serving["checks"])
    assert serving["memory"]["adapters"] == 2 and serving["memory"]["parameter_bytes_per_adapter"] > 0
    assert serving["operations"]["load_ms"]["median"] > 0 and serving["operations"]["merge_ms"]["median"] > 0
    assert "host_others_cores" in lat and "gpu_others_bytes" in lat
    assert not (out / "serving-partial" / "lora.json").exists()
    session = json.loads((out / "session.json").read_text())
    assert session["bench"] == "serving" and "full" in session["unsupported"]
    assert "whole model" in session["unsupported"]["full"] and len(session["commands"]) == 2
    _validate(r)

    code, md, err = run_cli(["serve-bench", "--show", str(out), "--format", "markdown", "--plot",
                             str(tmp_path / "k.svg")], capsys)
    assert code == 0, err
    assert "serving lora: K adapters on one base" in md and "| 2 | 8 | mixed2 |" in md
    header = ("| batch | prompt | mode | decode ms/tok | vs base | vs merged | vs mixed1 | prefill ms | prefill vs base "
              "| extra peak MiB |")
    assert header in md
    row = next(line.split(" | ") for line in md.splitlines() if line.startswith("| 2 | 8 | mixed2 |"))
    assert all("% [" in cell for cell in row[4:7]) and "% [" in row[8] and row[9].strip(" |") == "—"
    assert "| full | full fine-tuning changes every weight" in md and (tmp_path / "k.svg").stat().st_size > 1000

    code, md, err = run_cli(["claims", str(out), "--format", "json"], capsys)   # 2 rounds: nothing decided
    assert code == 0, err
    serving_claims = [c for c in json.loads(md) if c["task"] == "serving"]
    assert {c["id"] for c in serving_claims} >= {"serving_second_adapter", "serving_loaded_adapters"}
    assert all(c["verdict"] == "inconclusive (timing suspect)" and "2 timed rounds" in c["how"]
               for c in serving_claims)

    code, _, err = run_cli(["serve-bench", "--methods", "lora", *SWEEP[:-1], "3", "--output", str(out), "--resume"],
                           capsys)
    assert code == 2 and "another sweep (rounds)" in err and len(err.strip().splitlines()) == 1


def _validate(result: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from peftbench.results.store import schema

    jsonschema.Draft202012Validator(schema("serving")).validate(result)


@pytest.mark.parametrize("args,needles", [
    (["--adapters", "1,x"], ["--adapters", "'x'", "whole number"]),
    (["--adapters", "2,4"], ["adapters must start at 1"]),
    (["--batch-sizes", "0"], ["batch sizes must be positive"]),
    (["--regimes", "turbo"], ["turbo", "eager, static"]),
    (["--methods", "nosuch"], ["Unknown method 'nosuch'", "lora"]),
    (["--set", "lora.nosuch=1"], ["nosuch"]),
    (["--plot", "k.pdf"], ["--plot k.pdf", ".png or .svg"]),
])
def test_serve_bench_bad_input_exits_2_naming_it(args, needles, capsys, tmp_path):
    argv = ["serve-bench", "--methods", "lora", *SWEEP, "--output", str(tmp_path / "o")]
    if args[0] in argv:
        argv[argv.index(args[0]) + 1] = args[1]
    else:
        argv += args
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "o").exists()


def test_show_refuses_a_folder_that_is_not_serve_bench_and_a_bad_plot_name(capsys, tmp_path):
    code, _, err = run_cli(["serve-bench", "--show", str(tmp_path)], capsys)
    assert code == 2 and "not a serve-bench results folder" in err
    (tmp_path / "session.json").write_text(json.dumps({"kind": "latency"}))
    code, _, err = run_cli(["serve-bench", "--show", str(tmp_path)], capsys)
    assert code == 2 and "not of `peftbench serve-bench`" in err


# ---- the claims' verdicts on synthetic timings ------------------------------------------------------------------

def _jitter(value: float, n: int, seed: int, spread: float = 0.002) -> list[float]:
    rng = random.Random(seed)
    return [value * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def _serving_latency(mixed: dict[int, float], single: float = 12.0, rounds: int = 7, **neighbours) -> dict:
    modes = {"base": _jitter(10.0, rounds, 1), "one": _jitter(12.0, rounds, 2), "single": _jitter(single, rounds, 3),
             **{mixed_mode(k): _jitter(v, rounds, 10 + k) for k, v in mixed.items()}}
    neighbours = neighbours or {"gpu_others_bytes": 0, "host_others_cores": 0.1}
    point = _section(32, modes, rounds, **neighbours)
    return {"serving-lora": join_points({"bs32": point}, {"adapters": "random-initialised"})}


def _verdicts(latency: dict) -> dict[str, tuple[float, str, str]]:
    lora = [c for c in load_claims() if c["quantity"].startswith("serving_") and c["args"]["method"] == "lora"]
    return {r["id"]: (r["value"], r["verdict"], r["how"]) for r in check([], latency, lora, model="m")}


def test_serving_claims_hold_when_the_measurements_say_so():
    # one adapter: 12 (base 10); two: 12.48 (+4 %); 32: 12 + 31 x 0.24 (each later adapter half the second's)
    got = _verdicts(_serving_latency({1: 12.0, 2: 12.48, 32: 12.0 + 31 * 0.24}))
    assert got["serving_second_adapter"][:2] == (pytest.approx(1.04, abs=0.003), "holds")
    assert got["serving_sublinear"][:2] == (pytest.approx(0.5, abs=0.01), "holds")
    assert got["serving_loaded_adapters"][:2] == (pytest.approx(1.0, abs=0.003), "holds")
    assert "batch 32 x prompt 8" in got["serving_sublinear"][2] and "(mixed32 - mixed1) / 31" in got["serving_sublinear"][2]


def test_serving_claims_do_not_hold_when_adapters_cost_linearly_or_more():
    # two adapters +20 %; 32 adapters: each later one 1.5 x the second's (super-linear); loaded: +30 %
    got = _verdicts(_serving_latency({1: 12.0, 2: 14.4, 32: 12.0 + 31 * 1.5 * 2.4}, single=15.6))
    assert got["serving_second_adapter"][:2] == (pytest.approx(1.2, abs=0.005), "does not hold")
    assert got["serving_sublinear"][:2] == (pytest.approx(1.5, abs=0.02), "does not hold")
    assert got["serving_loaded_adapters"][:2] == (pytest.approx(1.3, abs=0.005), "does not hold")


def test_a_contended_or_unrecorded_timing_decides_nothing():
    sub_linear = {1: 12.0, 2: 12.48, 32: 12.0 + 31 * 0.24}
    busy = _verdicts(_serving_latency(sub_linear, gpu_others_bytes=0, host_others_cores=3.0))
    assert {v for _, v, _ in busy.values()} == {"inconclusive (timing suspect)"}
    assert all("host busy" in how for _, _, how in busy.values())
    unrecorded = _serving_latency(sub_linear)
    for key in ("gpu_others_bytes", "host_others_cores"):
        unrecorded["serving-lora"].pop(key)
    assert all(v == "inconclusive (timing suspect)" and "neighbours not recorded" in how
               for _, v, how in _verdicts(unrecorded).values())
    few = _verdicts(_serving_latency(sub_linear, rounds=2))
    assert all("2 timed rounds: too few" in how for _, _, how in few.values())


def test_a_sweep_without_the_modes_a_claim_needs_measures_nothing():
    got = _verdicts(_serving_latency({1: 12.0}))   # one adapter only: no second, no scaling
    assert set(got) == {"serving_loaded_adapters"}
    assert _verdicts({}) == {}


def test_a_failing_method_is_recorded_and_tried_again_on_resume(capsys, tmp_path, monkeypatch):
    from peftbench.session import serve_bench

    real = serve_bench.ServeSession._models

    def broken(self, name, method, art):
        if name == "lora":
            raise RuntimeError("the model exploded on purpose")
        return real(self, name, method, art)

    monkeypatch.setattr(serve_bench.ServeSession, "_models", broken)
    out = tmp_path / "serve"
    code, _, err = run_cli(["serve-bench", "--methods", "full,lora", *SWEEP, "--output", str(out)], capsys)
    assert code == 1 and "lora: error (the model exploded on purpose)" in err and "Traceback" not in err
    session = json.loads((out / "session.json").read_text())
    assert session["failed"]["lora"]["message"] == "the model exploded on purpose"
    assert session["failed"]["lora"]["status"] == "error" and "full" in session["unsupported"]
    assert not list((out / "latency").glob("*.json"))   # nothing to keep: --resume tries lora again
    code, _, err = run_cli(["serve-bench", "--methods", "lora", *SWEEP, "--output", str(out), "--resume"], capsys)
    assert code == 1 and "kept from the earlier run" not in err


def test_a_tuner_whose_mixed_batches_are_wrong_is_listed_not_timed(capsys, tmp_path):
    """PEFT's LoHa takes adapter_names without error, but its rows do not get their adapters (nor IA3's or
    VeRA's): the check finds it, and the method is listed as unable to serve per-row adapters, with figures."""
    out = tmp_path / "serve"
    code, _, err = run_cli(["serve-bench", "--methods", "peft-loha", *SWEEP, "--output", str(out)], capsys)
    assert code == 0, err
    why = json.loads((out / "session.json").read_text())["unsupported"]["peft-loha"]
    assert "rows do not get their own adapter's logits (K=2: rows off by" in why and "not timed" in why
    assert not list((out / "latency").glob("*.json"))


# ---- peftbench report on a serve-bench folder, and the mixedK columns' order ---------------------------------
SERVE_CPU = Path(__file__).parents[1] / "results" / "serve-bench-cpu"


def test_report_shows_a_serve_bench_folder_as_serve_bench_does(capsys):
    """``peftbench report`` on a folder whose session.json says ``bench: serving`` prints serve-bench's own
    tables (the same as ``--show``), not the wide latency table; alone or beside another folder."""
    code, shown, err = run_cli(["serve-bench", "--show", str(SERVE_CPU), "--format", "markdown"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["report", str(SERVE_CPU), "--format", "markdown"], capsys)
    assert code == 0, err
    assert out == shown and "decode overhead vs base" not in out
    assert "**tiny:llama (cpu) — serving lora: K adapters on one base" in out
    lora = json.loads((SERVE_CPU / "latency" / "serving-lora.json").read_text())["latency"]
    cell = next(c for c in lora["regimes"]["eager"] if c["batch_size"] == 32)
    row = next(line for line in out.splitlines() if line.startswith("| 32 | 128 | mixed32 |"))
    median = statistics.median(cell["modes"]["mixed32"]["samples"]["decode"])  # 348.61 ms/token
    assert float(row.split(" | ")[3]) == pytest.approx(median, abs=0.005)
    code, out, err = run_cli(["report", str(SERVE_CPU), str(SERVE_CPU.parent / "reference" / "8b-shape"),
                              "--allow-mixed", "--format", "markdown"], capsys)
    assert code == 0, err
    titles = [line for line in out.splitlines() if line.startswith("**")]
    assert [t.split(" — ")[1].split(":")[0] for t in titles] == [
        "serving lora", "serving qlora", "serving", "latency, static regime (bfloat16, cuda_events)"]


def test_the_latency_table_orders_mixed_columns_by_k():
    from peftbench.report.latency_table import _regimes_and_modes

    modes = ["base", "single", "mixed16", "mixed2", "one", "merged", "mixed32", "mixed1", "unmerged", "mixed4"]
    _, columns = _regimes_and_modes({"lora": {"regimes": {"eager": []}, "modes": modes}})
    assert columns == ["unmerged", "merged", "mixed1", "mixed2", "mixed4", "mixed16", "mixed32", "one", "single"]
