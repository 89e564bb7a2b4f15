"""The latency harness (peftbench.latency.timer), stacked modules (Method.stacked), merge fidelity (probes.compare),
and the ``peftbench latency`` command, on ``tiny:llama`` (CPU, few rounds, tiny shapes)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import statistics
import sys
import time
import types

import pytest
import torch

from peftbench import Capabilities, Method, hookimpl
from peftbench.api.method import validate_method_class
from peftbench.api.plugins import make_plugin_manager
from peftbench.api.registry import collect_methods
from peftbench.errors import ConfigError, NotSupported, PluginError
from peftbench.latency import timer as lat
from peftbench.latency.casting import cast_floating, latency_dtype
from peftbench.latency.clock import Clock
from peftbench.latency.config import LatencyConfig, LatencyPlan
from peftbench.latency.eager import eager_round
from peftbench.latency.static import static_round
from peftbench.latency.stats import overhead, summarize
from peftbench.latency.summary import latency_headline
from peftbench.latency.timer import measure
from peftbench.models.sources import load_model
from peftbench.report.latency_table import latency_tables
from peftbench.report.leaderboard import rows_for_task
from peftbench.report.leaderboard_table import leaderboard_tables
from peftbench.report.markdown import render_markdown
from peftbench.session.probes import compare

VOCAB = 259  # tiny:llama's vocabulary


def tiny():
    model, _, _ = load_model("tiny:llama")
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Timings on a shared 2-core CPU: one intra-op thread avoids the stalls of oversubscribed OpenMP threads
    when other processes compete for the cores (tiny:llama gains nothing from a second thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry():
    return collect_methods(make_plugin_manager(load_entrypoints=False))


def same(model):
    """A mode factory: a context manager that yields ``model`` as it is."""
    return lambda: contextlib.nullcontext(model)


def logging_factory(model, name, log):
    @contextlib.contextmanager
    def enter():
        log.append(name)
        yield model
    return enter


def ids_of(batch=2, length=6, seed=0):
    return torch.randint(10, VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


# ---- 1. the harness over a real grid ----------------------------------------------------------------------

def test_measure_grid_on_tiny_llama():
    model = tiny()
    log: list[str] = []
    names = ["base", "unmerged", "merged"]
    plan = LatencyPlan(batch_sizes=[1, 2], prompt_lengths=[4, 6], new_tokens=4, rounds=3, warmup=1,
                       regimes=["eager", "static"], bootstrap=500)
    out = measure({n: logging_factory(model, n, log) for n in names}, plan, "cpu", VOCAB)

    assert out["plan"] == dataclasses.asdict(plan) and out["timer"] == "perf_counter"
    assert out["modes"] == names and out["errors"] == []
    assert list(out["regimes"]) == ["eager", "static"]
    for regime, cells in out["regimes"].items():
        assert [(c["batch_size"], c["prompt_tokens"], c["new_tokens"]) for c in cells] == [
            (1, 4, 4), (1, 6, 4), (2, 4, 4), (2, 6, 4)], regime
        for c in cells:
            assert list(c["modes"]) == names
            for mode, m in c["modes"].items():
                for key, phase in (("prefill_ms", "prefill"), ("decode_ms_per_token", "decode")):
                    s, raw = m[key], m["samples"][phase]
                    assert len(raw) == plan.rounds and all(v > 0 for v in raw)
                    assert s["p10"] <= s["median"] <= s["p90"], (regime, mode, key, s)
                    assert s["median"] == pytest.approx(statistics.median(raw), abs=1e-4)
                    assert min(raw) - 1e-4 <= s["p10"] and s["p90"] <= max(raw) + 1e-4
                assert m["tokens_per_s"] == pytest.approx(c["batch_size"] * 1000 / m["decode_ms_per_token"]["median"],
                                                          rel=1e-3)
                means = m["samples"]["decode_mean"]
                assert len(means) == plan.rounds and all(v > 0 for v in means)
                assert m["decode_ms_per_token_mean"] == pytest.approx(summarize(means), abs=2e-4)  # samples rounded
                if regime == "static":  # one span of uniform steps: the reported figure is the mean
                    assert means == m["samples"]["decode"]
            assert set(c["overhead"]) == set(c["prefill_overhead"]) == {"unmerged", "merged"}
            for mode in ("unmerged", "merged"):
                for key, phase in (("overhead", "decode"), ("prefill_overhead", "prefill")):
                    o = c[key][mode]
                    assert o["ci95"][0] <= o["ratio"] <= o["ci95"][1], (regime, mode, key, o)
                    want = (statistics.median(c["modes"][mode]["samples"][phase])
                            / statistics.median(c["modes"]["base"]["samples"][phase]) - 1)
                    assert o["ratio"] == pytest.approx(want, abs=2e-3)
    # the sanity check holds only 'merged' to base (the default same_as_base), once per regime x shape
    assert [(s["regime"], s["batch_size"], s["prompt_tokens"], s["mode"]) for s in out["sanity"]] == [
        (r, b, p, "merged") for r in ("eager", "static") for b in (1, 2) for p in (4, 6)]
    assert out["sanity_ok"] == all(s["ok"] for s in out["sanity"])
    first = out["regimes"]["static"][0]  # both regimes timed: the headline is the reproducible static one
    assert out["summary"] == latency_headline(out) == {
        "regime": "static", "batch_size": 1, "prompt_tokens": 4,
        "overhead": {"unmerged": first["overhead"]["unmerged"]["ratio"], "merged": first["overhead"]["merged"]["ratio"]},
        "ci95": {"unmerged": first["overhead"]["unmerged"]["ci95"], "merged": first["overhead"]["merged"]["ci95"]}}
    # every mode entered (warmup + rounds) times per shape and regime; nothing else
    per_mode = (plan.warmup + plan.rounds) * 4 * 2
    assert {n: log.count(n) for n in names} == {n: per_mode for n in names} and len(log) == 3 * per_mode


def test_headline_skips_empty_regimes_and_handles_nothing():
    cell = {"batch_size": 8, "prompt_tokens": 128, "overhead": {"unmerged": {"ratio": 0.25, "ci95": [0.2, 0.3]}}}
    got = latency_headline({"regimes": {"static": [], "eager": [cell, {**cell, "batch_size": 1}]}})
    assert got == {"regime": "eager", "batch_size": 8, "prompt_tokens": 128, "overhead": {"unmerged": 0.25},
                   "ci95": {"unmerged": [0.2, 0.3]}}
    assert latency_headline({}) == {} and latency_headline({"regimes": {"eager": []}}) == {}
    # static preferred wherever it sits; the leaderboard reads a file whose stored summary (written before that
    # rule) names eager the same way
    static = {**cell, "overhead": {"unmerged": {"ratio": 0.4, "ci95": [0.39, 0.41]}}}
    grid = {"regimes": {"eager": [cell], "static": [static]}}
    assert latency_headline(grid)["regime"] == "static" and latency_headline(grid)["overhead"] == {"unmerged": 0.4}
    from peftbench.report.leaderboard import _latency_headline

    assert _latency_headline({**grid, "summary": {"regime": "eager", "overhead": {"unmerged": 0.25}}}) == {"unmerged": 0.4}
    assert _latency_headline({"summary": {"overhead": {"merged": 0.01}}}) == {"merged": 0.01}   # no grid: as stored


def test_measure_needs_base_and_plan_validates():
    with pytest.raises(ValueError, match="base"):
        measure({"unmerged": same(None)}, LatencyPlan(), "cpu", VOCAB)
    for kw, needle in ((dict(regimes=["turbo"]), "turbo"), (dict(new_tokens=1), "new_tokens"),
                       (dict(batch_sizes=[]), "batch_sizes"), (dict(prompt_lengths=[0]), "prompt_lengths"),
                       (dict(rounds=0), "rounds")):
        with pytest.raises(ConfigError, match=needle):
            LatencyPlan(**kw)


def test_summarize_exact():
    assert summarize([3.0]) == {"median": 3.0, "p10": 3.0, "p90": 3.0}
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]) == {
        "median": 6.0, "p10": 2.0, "p90": 10.0}


# ---- 2. interleaving: rotation, every mode once per round, warm-up not recorded ------------------------------

def test_rounds_rotate_and_warmup_is_not_recorded(monkeypatch):
    calls: list[tuple[str, tuple[int, int], int]] = []
    counter = itertools.count(1)

    def fake_round(model, ids, new_tokens, clock):  # model is the mode's name; values number the calls
        calls.append((model, tuple(ids.shape), new_tokens))
        i = next(counter)
        return float(i), i / 8, i / 4

    monkeypatch.setitem(lat.ROUNDS, "eager", fake_round)
    names = ["base", "a", "b"]
    plan = LatencyPlan(batch_sizes=[1, 2], prompt_lengths=[5], new_tokens=3, rounds=4, warmup=2, regimes=["eager"],
                       bootstrap=50)
    out = measure({n: (lambda n=n: contextlib.nullcontext(n)) for n in names}, plan, "cpu", VOCAB)

    total = plan.warmup + plan.rounds
    assert len(calls) == 2 * total * len(names)
    for shape, batch in enumerate((1, 2)):
        block = calls[shape * total * 3:(shape + 1) * total * 3]
        assert {(s, n) for _, s, n in block} == {((batch, 5), 3)}
        order = [m for m, _, _ in block]
        rounds = [order[r * 3:(r + 1) * 3] for r in range(total)]
        for r, got in enumerate(rounds):
            assert sorted(got) == sorted(names)                          # every mode once per round
            assert got == names[r % 3:] + names[:r % 3]                  # rotated
        for start in range(total - 2):                                   # each leads once in any 3 rounds
            assert sorted(rnd[0] for rnd in rounds[start:start + 3]) == sorted(names)
        assert {m: order.count(m) for m in names} == {m: total for m in names}
        # the samples are exactly the calls of the rounds after the warm-up, in round order
        cell = out["regimes"]["eager"][shape]
        offset = shape * total * 3
        for m in names:
            idx = [offset + r * 3 + rounds[r].index(m) + 1 for r in range(plan.warmup, total)]
            assert cell["modes"][m]["samples"] == {"prefill": [float(i) for i in idx],
                                                   "decode": [round(i / 8, 4) for i in idx],
                                                   "decode_mean": [round(i / 4, 4) for i in idx]}
            assert cell["modes"][m]["decode_ms_per_token"]["median"] == round(statistics.median(idx) / 8, 4)
            assert cell["modes"][m]["decode_ms_per_token_mean"]["median"] == round(statistics.median(idx) / 4, 4)


def test_a_failing_mode_is_recorded_and_skipped(monkeypatch):
    calls: list[str] = []

    def fake_round(model, ids, new_tokens, clock):
        calls.append(model)
        if model == "bad":
            raise RuntimeError("no static cache for you")
        return 1.0, 1.0, 1.0

    monkeypatch.setitem(lat.ROUNDS, "eager", fake_round)
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[4], new_tokens=2, rounds=3, warmup=1, regimes=["eager"])
    out = measure({n: (lambda n=n: contextlib.nullcontext(n)) for n in ("base", "bad", "good")}, plan, "cpu", VOCAB,
                  same_as_base=("bad", "good"))
    assert calls.count("bad") == 1 and calls.count("base") == calls.count("good") == 4
    assert out["errors"] == [{"regime": "eager", "batch_size": 1, "prompt_tokens": 4, "mode": "bad",
                              "error": "RuntimeError: no static cache for you"}]
    cell = out["regimes"]["eager"][0]
    assert cell["modes"]["bad"] == {"error": "RuntimeError: no static cache for you"}
    assert cell["overhead"] == {"good": {"ratio": 0.0, "ci95": [0.0, 0.0]}}
    assert [s["mode"] for s in out["sanity"]] == ["good"] and out["sanity_ok"] is True
    md = render_markdown(latency_tables({"m": out}))
    assert "| m | 1 | 4 | 2 | 1.00 | 1.0 | failed | +0.0% [+0.0, +0.0] | ok |" in md


# ---- 3. the overhead ratio and its paired bootstrap CI --------------------------------------------------------

def test_overhead_ratio_of_medians_and_ci():
    mode, base = [3.0, 2.0, 9.0, 4.0, 1.0], [2.0, 2.0, 1.0, 8.0, 2.0]   # medians 3 and 2
    o = overhead(mode, base, n_boot=1000, seed=7)
    assert o["ratio"] == statistics.median(mode) / statistics.median(base) - 1 == 0.5
    assert o["ci95"][0] <= o["ratio"] <= o["ci95"][1] and o["ci95"][0] < o["ci95"][1]
    assert overhead(mode, base, 1000, 7) == o                      # deterministic for a seed
    assert overhead(mode, base, 1000, 8)["ratio"] == 0.5           # the point does not depend on it
    # identical timings: no overhead and no spread
    assert overhead(base, base, 1000, 7) == {"ratio": 0.0, "ci95": [0.0, 0.0]}
    # paired: a mode exactly 25 % slower in every round has a zero-width CI, however noisy the rounds
    noisy = [1.0, 7.0, 2.0, 30.0, 4.0, 0.5]
    assert overhead([1.25 * v for v in noisy], noisy, 1000, 3) == {"ratio": 0.25, "ci95": [0.25, 0.25]}
    # one round: no bootstrap, the CI is the point
    assert overhead([3.0], [2.0], 1000, 0) == {"ratio": 0.5, "ci95": [0.5, 0.5]}
    # rounding to 4 decimals
    assert overhead([1.0], [3.0], 10, 0)["ratio"] == round(1 / 3 - 1, 4) == -0.6667


def test_overhead_ci_matches_a_reference_paired_bootstrap():
    import random

    mode, base = [1.1, 1.4, 0.9, 1.3, 1.2, 1.0, 1.6], [1.0, 1.1, 1.0, 1.2, 0.9, 1.0, 1.1]
    rng, boots = random.Random(11), []
    for _ in range(400):
        idx = [rng.randrange(7) for _ in range(7)]
        boots.append(statistics.median([mode[i] for i in idx]) / statistics.median([base[i] for i in idx]) - 1)
    boots.sort()
    got = overhead(mode, base, 400, 11)
    assert got["ci95"] == [round(boots[9], 4), round(boots[389], 4)]   # int(0.025*399), int(0.975*399)
    assert got["ratio"] == round(1.2 / 1.0 - 1, 4)


# ---- 4. the sanity flag -----------------------------------------------------------------------------------------

def test_sanity_flag_logic_exact(monkeypatch):
    # decode ms per call, warm-up first (the large warm-up values must not count)
    values = {"base": [9, 1, 1, 1, 1], "slow": [9, 2, 2, 2, 2], "edge": [9, 1.5, 1.5, 1.5, 1.5],
              "noisy": [9, 0.5, 0.5, 3.0, 3.0], "small": [9, 1.1, 1.1, 1.1, 1.1], "unlisted": [9, 5, 5, 5, 5]}
    it = {m: iter(v) for m, v in values.items()}

    def fake_round(model, ids, new_tokens, clock):  # the mean is the same for all: the verdicts come from decode
        v = float(next(it[model]))
        return v, v, 1.0

    monkeypatch.setitem(lat.ROUNDS, "eager", fake_round)
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[4], new_tokens=2, rounds=4, warmup=1, regimes=["eager"],
                       tolerance=0.5)
    out = measure({n: (lambda n=n: contextlib.nullcontext(n)) for n in values}, plan, "cpu", VOCAB,
                  same_as_base=("slow", "edge", "noisy", "small"))
    where = {"regime": "eager", "batch_size": 1, "prompt_tokens": 4, "tolerance": 0.5}
    sanity = {s["mode"]: s for s in out["sanity"]}
    assert list(sanity) == ["slow", "edge", "noisy", "small"]          # 'unlisted' is not held to base
    assert sanity["slow"] == {**where, "mode": "slow", "overhead": 1.0, "ci95": [1.0, 1.0], "ok": False}
    assert sanity["edge"] == {**where, "mode": "edge", "overhead": 0.5, "ci95": [0.5, 0.5], "ok": True}  # not > tol
    assert sanity["small"] == {**where, "mode": "small", "overhead": 0.1, "ci95": [0.1, 0.1], "ok": True}
    noisy = sanity["noisy"]
    # a CI spanning 0 no longer excuses a point estimate beyond the tolerance (issue 21: full FT -37.7 % "ok")
    assert noisy["overhead"] == 0.75 and noisy["ci95"][0] <= 0.0 <= noisy["ci95"][1] and noisy["ok"] is False
    assert out["sanity_ok"] is False
    assert out["regimes"]["eager"][0]["overhead"]["unlisted"] == {"ratio": 4.0, "ci95": [4.0, 4.0]}
    (table,) = latency_tables({"m": out})
    assert list(table.columns[-1].cells) == ["[red]noisy +75.0% ≠ base[/]"]  # the shape's last failing mode


@contextlib.contextmanager
def delayed_forward(model, seconds, call=None):
    """The same model, its forward passes made ``seconds`` slower: every one, or only the ``call``-th (1 = the
    first after entering; restored on exit)."""
    original, calls = model.forward, itertools.count(1)

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if call is None or next(calls) == call:
            t0 = time.perf_counter()
            time.sleep(seconds)
            forward.slept.append(time.perf_counter() - t0)  # as slept: a loaded machine oversleeps
        return original(*args, **kwargs)

    forward.slept = []
    model.forward = forward
    try:
        yield model
    finally:
        del model.forward


def slowed(model, seconds=0.02):
    """The same model, its every forward pass made ``seconds`` slower."""
    return delayed_forward(model, seconds)


def _run(method, latency):
    return {"task": "t", "method": method, "seed": 0, "status": "ok", "eval": {"metrics": {"acc": 0.5}},
            "latency": latency}


def test_a_slowed_merged_mode_is_flagged_and_an_honest_one_is_not():
    model = tiny()
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[4], new_tokens=4, rounds=5, warmup=1,
                       regimes=["eager", "static"], tolerance=1.0, bootstrap=500)
    bad = measure({"base": same(model), "unmerged": same(model), "merged": lambda: slowed(model, 0.03)}, plan, "cpu",
                  VOCAB)
    assert "forward" not in vars(model)  # the slowdown was undone
    assert bad["sanity_ok"] is False
    assert [(s["regime"], s["mode"], s["ok"]) for s in bad["sanity"]] == [("eager", "merged", False),
                                                                          ("static", "merged", False)]
    for s in bad["sanity"]:
        assert s["overhead"] > s["tolerance"] == 1.0 and s["ci95"][0] > 0, s
    # where the wall time went: every mode in every regime; the slowed mode sleeps 30 ms per forward pass, in
    # 6 rounds x (prefill + 3 decode steps) in eager: at least 0.72 s there, more than base took
    for regime in ("eager", "static"):
        assert set(bad["wall_s"][regime]) == {"base", "unmerged", "merged"}
        assert bad["wall_s"][regime]["merged"] > bad["wall_s"][regime]["base"] > 0
    assert bad["wall_s"]["eager"]["merged"] >= 6 * 4 * 0.03
    # 30 ms per forward pass vs ~2-5 ms: merged decodes several times slower than base
    for regime in ("eager", "static"):
        cell = bad["regimes"][regime][0]
        assert cell["overhead"]["merged"]["ratio"] > 2 and cell["prefill_overhead"]["merged"]["ratio"] > 0.5

    good = measure({"base": same(model), "unmerged": same(model), "merged": same(model)}, plan, "cpu", VOCAB)
    assert good["sanity_ok"] is True and [s["ok"] for s in good["sanity"]] == [True, True]

    # the report and the leaderboard say so
    md = render_markdown(latency_tables({"lora": bad}))
    rows = [line for line in md.splitlines() if line.startswith("| lora |")]
    assert len(rows) == 2 and all("merged +" in r and "% ≠ base |" in r for r in rows)
    assert [line.rsplit("|", 2)[-2].strip() for line in render_markdown(latency_tables({"lora": good})).splitlines()
            if line.startswith("| lora |")] == ["ok", "ok"]
    runs = [_run("base", {}), _run("lora", bad), _run("adapter", good)]
    sane = {r["method"]: r["latency_sane"] for r in rows_for_task(runs, "t")}
    assert sane == {"base": True, "lora": False, "adapter": True}
    board = render_markdown(leaderboard_tables({}, runs))
    status = {line.split("|")[1].strip(): line.rsplit("|", 2)[-2].strip() for line in board.splitlines()
              if line.startswith("| ") and not line.startswith("| method")}
    assert status["lora"] == "ok latency suspect" and status["adapter"] == "ok"


# ---- 5. the static regime decodes what generate decodes --------------------------------------------------------

@pytest.mark.parametrize("new_tokens", [2, 7])
def test_static_round_matches_greedy_generate(new_tokens):
    model = tiny()
    ids = ids_of(batch=2, length=9, seed=3)
    got: list[torch.Tensor] = []
    prefill, decode, mean = static_round(model, ids, new_tokens, Clock("cpu"), collect=got)
    assert prefill > 0 and decode > 0 and mean == decode
    assert len(got) == new_tokens and all(t.shape == (2, 1) for t in got)
    assert all((t != model.config.eos_token_id).all() for t in got)  # generate's min_new_tokens would ban EOS
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)[:, 9:]
    assert torch.equal(torch.cat(got, dim=1), want), (torch.cat(got, dim=1), want)


def test_static_round_matches_generate_on_a_lora_model(registry):
    lora = registry.get("lora")
    torch.manual_seed(0)  # lora_A's init
    model = lora.prepare(tiny(), lora.make_config({"dropout": 0.0}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    infer = lora.inference_model(model).eval()
    ids = ids_of(batch=2, length=9, seed=5)
    got: list[torch.Tensor] = []
    static_round(infer, ids, 5, Clock("cpu"), collect=got)
    got = torch.cat(got, dim=1)
    # the static loop is plain argmax; generate's min_new_tokens bans EOS: the two agree while EOS never wins
    assert (got != infer.config.eos_token_id).all(), got
    with torch.no_grad():
        want = infer.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              min_new_tokens=5, max_new_tokens=5, pad_token_id=0)[:, 9:]
    assert torch.equal(got, want)


# ---- 6. stacked modules ---------------------------------------------------------------------------------------

def _lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_delta_weight")]


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before):
    now = model.state_dict()
    assert list(now) == list(before)
    assert all(torch.equal(now[k], before[k]) for k in before), [k for k in before if not torch.equal(now[k], before[k])]


def _prepared(registry, name, options=None):
    method = registry.get(name)
    if not method.availability("cpu"):
        pytest.skip(f"{name} unavailable on CPU")
    torch.manual_seed(0)  # the method's own initialisation (lora_A, the adapter's down)
    model = method.prepare(tiny(), method.make_config(options or {}))
    return method, model


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_the_merged_mode_times_the_model_without_its_lora_wrappers(registry, name, tmp_path):
    """Users serve a merged LoRA as plain layers (peft's merge_and_unload): the ``merged`` mode times exactly
    that, with the base model's module count and the merged model's outputs. (Timed with the wrappers left
    in place, merged LoRA decoded ~5 % slower than base in the eager regime on an H200, and the sanity check
    flagged it.)"""
    from peftbench.session.timing import time_inference

    method, model = _prepared(registry, name)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    cfg = method.make_config({})
    method.save(model, tmp_path, cfg)
    seen = {}

    def measure_latency(run, model, modes):
        for k, factory in modes.items():
            with factory() as m:
                seen[k] = (logits(m, ids_of()), len(list(m.modules())), len(_lora_layers(m)))
        return {}

    hook = types.SimpleNamespace(
        merge_adapter=lambda run, prepared: method.merge(prepared),
        load_artifact=lambda run, directory, base_model: method.load(directory, base_model, cfg),
        measure_latency=measure_latency)
    run = types.SimpleNamespace(latency_config=LatencyConfig(dtype="fp32"),
                                method=method, hook=hook, device="cpu")
    trained = method.load(tmp_path, tiny(), cfg)
    time_inference(tiny, run, tmp_path, trained)
    base_out, base_modules, _ = seen["base"]
    merged_out, merged_modules, merged_lora = seen["merged"]
    unmerged_out, _, unmerged_lora = seen["unmerged"]
    assert unmerged_lora > 0 and merged_lora == 0
    assert merged_modules == base_modules  # the base architecture, nothing wrapped
    tol = 5e-2 if name == "qlora" else 1e-4  # qlora: dequantized base vs the 4-bit one
    assert (merged_out - unmerged_out).abs().max() <= tol * unmerged_out.abs().max()
    assert (merged_out - base_out).abs().max() > 1e-3  # the merged deltas are there


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_lora_stacked(registry, name):
    method, model = _prepared(registry, name)
    model.eval()
    with torch.no_grad():  # a "trained" default adapter: the model differs from its base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    infer = method.inference_model(model)
    ids = ids_of()
    before_logits, before_state, before_n = logits(infer, ids), _state(model), _n_params(model)
    per_adapter = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    layers = _lora_layers(model)
    assert layers and per_adapter > 0
    with method.stacked(model, 3) as stacked:
        assert stacked is model
        for layer in layers:
            assert list(layer.active_adapters) == ["default", "peftbench_stack1", "peftbench_stack2"]
            assert sorted(layer.lora_A) == sorted(layer.lora_B) == ["default", "peftbench_stack1", "peftbench_stack2"]
        assert _n_params(model) == before_n + 2 * per_adapter
        assert torch.equal(logits(infer, ids), before_logits)   # the new adapters start at B = 0
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B.peftbench_stack" in n:
                    p.fill_(0.05)
        assert (logits(infer, ids) - before_logits).abs().max() > 1e-3  # they are on the forward path
    assert list(model.peft_config) == ["default"]
    assert all(list(layer.active_adapters) == ["default"] and list(layer.lora_A) == ["default"] for layer in layers)
    _assert_same_state(model, before_state)
    assert _n_params(model) == before_n
    assert torch.equal(logits(infer, ids), before_logits)

    with pytest.raises(RuntimeError, match="inside"):  # an error inside the context still cleans up
        with method.stacked(model, 2):
            raise RuntimeError("inside")
    _assert_same_state(model, before_state)
    assert list(model.peft_config) == ["default"]


def test_lora_stacked_adapters_follow_eval_mode(registry):
    method, model = _prepared(registry, "lora")  # default dropout 0.05
    model.eval()
    infer = method.inference_model(model)
    ids = ids_of()
    with method.stacked(model, 2):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B.peftbench_stack" in n:
                    p.fill_(0.05)
        assert not any(m.training for m in model.modules())
        assert torch.equal(logits(infer, ids), logits(infer, ids))


def test_lora_stacked_keeps_requires_grad_of_a_loaded_model(registry, tmp_path):
    method, model = _prepared(registry, "lora")
    method.save(model, tmp_path, None)
    loaded = method.load(tmp_path, tiny(), None)
    before = {n: p.requires_grad for n, p in loaded.named_parameters()}
    assert not any(before.values())
    with method.stacked(loaded, 2):
        pass
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == before


@pytest.mark.parametrize("placement", ["houlsby", "parallel"])
def test_adapter_stacked(registry, placement):
    from peftbench_plugins.adapter.layers import WRAPPERS, SeriesAdapterWrapper

    method, model = _prepared(registry, "adapter", {"placement": placement, "reduction_factor": 8})
    wrappers = [m for m in model.modules() if isinstance(m, WRAPPERS)]
    assert len(wrappers) == (4 if placement == "houlsby" else 2)
    with torch.no_grad():  # a "trained" adapter: non-zero up
        for w in wrappers:
            w.adapter.up.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    ids = ids_of()
    before_logits, before_state, before_n = logits(model, ids), _state(model), _n_params(model)
    per_adapter = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    assert per_adapter == len(wrappers) * (64 * 8 + 8 + 8 * 64 + 64)
    with method.stacked(model, 3) as stacked:
        assert stacked is model
        assert [1 + len(w.extra) for w in wrappers] == [3] * len(wrappers)
        assert _n_params(model) == before_n + 2 * per_adapter
        with torch.no_grad():
            for w in wrappers:
                for e in w.extra:
                    e.up.weight.zero_()
                    e.up.bias.zero_()
        assert torch.equal(logits(model, ids), before_logits)  # zero extras change nothing
        with torch.no_grad():
            for w in wrappers:
                for i, e in enumerate(w.extra):
                    e.up.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(10 + i))
        assert (logits(model, ids) - before_logits).abs().max() > 1e-3  # they are on the forward path
        # composition: series one after another, parallel summed beside the block
        w = wrappers[-1]
        x = torch.randn(2, 3, getattr(w.base, "in_features", 64), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            got, s = w(x), w.scaling
            if isinstance(w, SeriesAdapterWrapper):
                want = w.base(x)
                for a in [w.adapter, *w.extra]:
                    want = want + s * a(want)
            else:
                want = w.base(x) + s * sum(a(x) for a in [w.adapter, *w.extra])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert all(len(w.extra) == 0 for w in wrappers)
    _assert_same_state(model, before_state)
    assert _n_params(model) == before_n
    assert torch.equal(logits(model, ids), before_logits)
    with pytest.raises(RuntimeError, match="inside"):
        with method.stacked(model, 4):
            raise RuntimeError("inside")
    assert all(len(w.extra) == 0 for w in wrappers)
    _assert_same_state(model, before_state)


def test_latency_modes_and_full_cannot_stack(registry):
    modes = {n: registry.get(n).capabilities.latency_modes((2, 4)) for n in ("lora", "qlora", "adapter", "full")}
    assert modes == {"lora": ("unmerged", "merged", "stack2", "stack4"),
                     "qlora": ("unmerged", "merged", "stack2", "stack4"),
                     "adapter": ("unmerged", "stack2", "stack4"), "full": ("unmerged",)}
    assert Capabilities(can_stack=True).latency_modes((1, 3)) == ("unmerged", "stack3")
    assert Capabilities(can_stack=True).latency_modes(()) == ("unmerged",)
    full = registry.get("full")
    assert full.capabilities.can_stack is False
    with pytest.raises(NotSupported, match="stack"):
        with full.stacked(tiny(), 2):
            pass


def test_claiming_can_stack_without_stacked_is_rejected():
    @dataclasses.dataclass
    class C:
        pass

    class NoStack(Method):
        name = "nostack"
        Config = C
        capabilities = Capabilities(can_stack=True, can_disable=False)

        def prepare(self, m, c): return m
        def save(self, m, d, c): return []
        def load(self, d, b, c): return b

    with pytest.raises(PluginError, match=r"can_stack.*stacked\(\)") as e:
        validate_method_class(NoStack, "p")
    assert "'nostack'" in str(e.value) and "'p'" in str(e.value)

    class WithStack(NoStack):
        @contextlib.contextmanager
        def stacked(self, model, n):
            yield model

    validate_method_class(WithStack, "p")  # no error


# ---- 7. merge fidelity: compare() ------------------------------------------------------------------------------

def test_compare_exact_values():
    a = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, -5.0]])]
    b = [torch.tensor([[1.0, 2.5], [3.0, 3.0]]), torch.tensor([[0.0, -5.0]])]
    got = compare(a, b)
    assert got == {"max_abs_logit_diff": 1.0, "mean_abs_logit_diff": 0.25, "max_rel_logit_diff": 0.2,
                   "greedy_agreement": 2 / 3}
    assert got["mean_abs_logit_diff"] <= got["max_abs_logit_diff"]
    assert compare(a, a) == {"max_abs_logit_diff": 0.0, "mean_abs_logit_diff": 0.0, "max_rel_logit_diff": 0.0,
                             "greedy_agreement": 1.0}
    # all-zero reference logits: the relative difference falls back to the absolute one
    zero = [torch.zeros(2, 3)]
    assert compare(zero, [torch.full((2, 3), 0.5)])["max_rel_logit_diff"] == 0.5
    with pytest.raises(ValueError):
        compare(a, b[:1])


def test_compare_on_tiny_llama_merge(registry):
    lora = registry.get("lora")
    torch.manual_seed(0)
    model = lora.prepare(tiny(), lora.make_config({"dropout": 0.0})).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    probes = [ids_of(1, 7, s)[0].tolist() for s in range(3)]
    from peftbench.session.probes import probe_logits

    infer = lora.inference_model(model)
    ref = probe_logits(infer, probes, "cpu")
    merged = probe_logits(lora.inference_model(lora.merge(model)), probes, "cpu")
    got = compare(ref, merged)
    assert 0 <= got["mean_abs_logit_diff"] <= got["max_abs_logit_diff"] < 1e-4
    assert got["greedy_agreement"] == 1.0 and got["max_rel_logit_diff"] < 1e-4
    assert [t.shape for t in ref] == [(7, VOCAB)] * 3


# ---- 8. dtypes --------------------------------------------------------------------------------------------------

def test_cast_floating_keeps_inv_freq_in_fp32():
    model = tiny()
    model.model.register_buffer("scale", torch.ones(3))
    model.model.register_buffer("steps", torch.arange(3))
    assert cast_floating(model, torch.bfloat16) is model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    buffers = {n: b.dtype for n, b in model.named_buffers()}
    assert buffers == {"model.rotary_emb.inv_freq": torch.float32, "model.rotary_emb.original_inv_freq": torch.float32,
                       "model.scale": torch.bfloat16, "model.steps": torch.int64}
    assert logits(model, ids_of()).isfinite().all()


def test_cast_floating_leaves_4bit_weights(registry):
    method, model = _prepared(registry, "qlora")
    packed = {n: (type(p).__name__, p.dtype, p.data_ptr()) for n, p in model.named_parameters() if not p.is_floating_point()}
    assert packed and {t for t, _, _ in packed.values()} == {"Params4bit"}
    cast_floating(model, torch.bfloat16)
    assert {n: (type(p).__name__, p.dtype, p.data_ptr()) for n, p in model.named_parameters()
            if not p.is_floating_point()} == packed
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}


def test_latency_dtype():
    assert latency_dtype("auto", "cpu") is torch.float32
    assert latency_dtype("auto", "cuda") is torch.bfloat16
    assert latency_dtype("auto", "cuda:1") is torch.bfloat16
    assert latency_dtype("bf16", "cpu") is torch.bfloat16 and latency_dtype("fp32", "cuda") is torch.float32


# ---- 9. the `peftbench latency` command ---------------------------------------------------------------------------

from peftbench.testing import run_cli  # noqa: E402

GRID = ["--model", "tiny:llama", "--device", "cpu", "--batch-sizes", "1", "--prompt-lengths", "8", "--new-tokens", "3",
        "--rounds", "2", "--regimes", "eager,static", "--stack", "2"]
EXPECTED_MODES = {"lora": ["base", "unmerged", "merged", "stack2"], "adapter": ["base", "unmerged", "stack2"],
                  "full": ["base", "unmerged"]}


def test_latency_command_end_to_end(capsys, tmp_path):
    out = tmp_path / "lat"
    code, stdout, err = run_cli(["latency", "--methods", "lora,adapter,full", *GRID, "--output", str(out)], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "latency").iterdir()) == ["adapter.json", "full.json", "lora.json"]
    for name, modes in EXPECTED_MODES.items():
        r = json.loads((out / "latency" / f"{name}.json").read_text())
        assert (r["kind"], r["method"], r["status"]) == ("latency", name, "ok"), r.get("error")
        assert "error" not in r and r["capabilities"]["can_stack"] == (name != "full")
        latency = r["latency"]
        assert latency["modes"] == modes and latency["dtype"] == "float32" and latency["timer"] == "perf_counter"
        assert latency["errors"] == [] and list(latency["regimes"]) == ["eager", "static"]
        plan = latency["plan"]
        assert (plan["batch_sizes"], plan["prompt_lengths"], plan["new_tokens"], plan["rounds"]) == ([1], [8], 3, 2)
        for cells in latency["regimes"].values():
            (cell,) = cells
            assert (cell["batch_size"], cell["prompt_tokens"], cell["new_tokens"]) == (1, 8, 3)
            assert list(cell["modes"]) == modes and set(cell["overhead"]) == set(modes) - {"base"}
            assert all(len(m["samples"]["decode"]) == 2 for m in cell["modes"].values())
        # which modes are held to base's timing: lora's merged; full fine-tuning's unmerged; none for adapter
        held = {"lora": "merged", "full": "unmerged"}.get(name)
        assert [(s["regime"], s["mode"]) for s in latency["sanity"]] == (
            [("eager", held), ("static", held)] if held else [])
        assert latency["summary"]["regime"] == "static" and set(latency["summary"]["overhead"]) == set(modes) - {"base"}
        sec = r["seconds"]  # where the method's time went: the phases add up to no more than the total
        assert set(sec) == {"prepare_save_load", "timing", "total"} and min(sec.values()) > 0
        assert sec["prepare_save_load"] + sec["timing"] <= sec["total"] + 0.02
    session = json.loads((out / "session.json").read_text())
    assert (session["kind"], session["status"]) == ("latency", "finished")
    assert session["methods"] == ["lora", "adapter", "full"] and session["model"]["source"] == "tiny:llama"
    assert session["plan"]["regimes"] == ["eager", "static"] and session["train_config"]["latency_stack"] == [2]
    for name in EXPECTED_MODES:
        assert f"{name}: ok" in err
    assert "lora: timing base, unmerged, merged, stack2" in err

    # the report: one table per regime, a row per method, columns per mode
    code, md, err = run_cli(["report", str(out), "--markdown"], capsys)
    assert code == 0, err
    titles = [line for line in md.splitlines() if line.startswith("**")]
    assert len(titles) == 2 and "latency, eager regime (float32, perf_counter)" in titles[0]
    assert "latency, static regime" in titles[1] and "tiny:llama" in titles[0]
    header = "| method | batch | prompt | new | base ms/tok | base prefill ms | unmerged | merged | stack2 | sanity |"
    assert md.count(header) == 2
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r[0][2:] for r in rows] == ["adapter", "full", "lora"] * 2
    for r in rows:
        method = r[0][2:]
        assert r[1:4] == ["1", "8", "3"]
        assert (r[7] == "—") == (method != "lora")            # merged: lora only
        assert (r[8] == "—") == (method == "full")            # stack2: not full
        assert r[6].endswith("]") and "% [" in r[6]           # unmerged: every method

    # --resume keeps what is there, and times only what is missing
    saved = {p.name: p.read_bytes() for p in (out / "latency").iterdir()}
    code, _, err = run_cli(["latency", "--methods", "lora,adapter,full", *GRID, "--output", str(out), "--resume"],
                           capsys)
    assert code == 0, err
    assert err.count("kept from the earlier run") == 3
    assert {p.name: p.read_bytes() for p in (out / "latency").iterdir()} == saved
    (out / "latency" / "adapter.json").unlink()
    code, _, err = run_cli(["latency", "--methods", "lora,adapter,full", *GRID, "--output", str(out), "--resume"],
                           capsys)
    assert code == 0, err
    assert err.count("kept from the earlier run") == 2 and "adapter: ok" in err
    assert (out / "latency" / "lora.json").read_bytes() == saved["lora.json"]
    assert json.loads((out / "latency" / "adapter.json").read_text())["status"] == "ok"

    # without --resume a folder holding results is refused
    before = {p.name: p.read_bytes() for p in (out / "latency").iterdir()}
    code, _, err = run_cli(["latency", "--methods", "lora", *GRID, "--output", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "already holds latency results" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (out / "latency").iterdir()} == before

    # --resume with another grid would mix results: refused, naming what differs
    other = [*GRID[:GRID.index("--prompt-lengths") + 1], "16", *GRID[GRID.index("--prompt-lengths") + 2:]]
    code, _, err = run_cli(["latency", "--methods", "lora", *other, "--output", str(out), "--resume"], capsys)
    assert code == 2 and "another grid (prompt_lengths)" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (out / "latency").iterdir()} == before


@pytest.mark.parametrize("args,needles", [
    (["--batch-sizes", "1,x"], ["--batch-sizes", "'x'", "whole number"]),
    (["--regimes", "turbo"], ["turbo", "eager, static"]),
    (["--new-tokens", "1"], ["new_tokens", ">= 2", "got 1"]),
    (["--methods", "nosuch"], ["Unknown method 'nosuch'", "lora"]),
    (["--stack", "1"], ["latency_stack", ">= 2", "[1]"]),
])
def test_latency_command_bad_input(args, needles, capsys, tmp_path):
    argv = ["latency", "--methods", "lora", *GRID, "--output", str(tmp_path / "o")]
    flag = args[0]
    i = argv.index(flag)
    argv[i + 1] = args[1]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "o").exists()


# ---- 10. a failing method is recorded, the others go on ----------------------------------------------------------

@dataclasses.dataclass
class _BrokenConfig:
    pass


class _BrokenMethod(Method):
    name = "broken"
    Config = _BrokenConfig
    capabilities = Capabilities(can_disable=False)

    def prepare(self, model, config):
        raise RuntimeError("prepare exploded on purpose")

    def save(self, model, directory, config):
        return []

    def load(self, directory, base_model, config):
        return base_model


def test_a_failing_method_is_recorded_and_the_others_go_on(capsys, tmp_path, monkeypatch):
    @hookimpl
    def register_methods(register):
        register("broken", _BrokenMethod)

    plugin = types.ModuleType("peftbench_test_latency_broken")
    plugin.register_methods = register_methods
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)
    out = tmp_path / "lat"
    code, stdout, err = run_cli(["--plugin", plugin.__name__, "latency", "--methods", "lora,broken,full", *GRID,
                                 "--stack", "none", "--output", str(out)], capsys)
    assert code == 1, err
    broken = json.loads((out / "latency" / "broken.json").read_text())
    assert broken["status"] == "error" and "latency" not in broken
    assert broken["error"]["type"] == "RuntimeError" and broken["error"]["message"] == "prepare exploded on purpose"
    assert "prepare exploded on purpose" in broken["error"]["traceback"]
    for name in ("lora", "full"):  # before and after the failure
        r = json.loads((out / "latency" / f"{name}.json").read_text())
        assert r["status"] == "ok" and r["latency"]["modes"] == EXPECTED_MODES[name][:3 if name == "lora" else 2]
    assert "broken: error (prepare exploded on purpose)" in err
    assert "broken: error: prepare exploded on purpose" in stdout
    assert json.loads((out / "session.json").read_text())["status"] == "finished"
    rows = [line for line in stdout.splitlines() if line.startswith("│ ")]
    assert {r.split("│")[1].strip() for r in rows} == {"full", "lora"}  # the tables show the methods that ran


def test_too_few_rounds_are_not_judged():
    model = tiny()
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[4], new_tokens=3, rounds=2, warmup=1, regimes=["eager"],
                       tolerance=0.03, bootstrap=200)
    out = measure({"base": same(model), "merged": lambda: slowed(model, 0.03)}, plan, "cpu", VOCAB)
    (entry,) = out["sanity"]
    assert entry["overhead"] > 1.0  # clearly slower, yet 2 rounds cannot support a verdict
    assert entry["ok"] is None and "not judged" in entry["note"] and out["sanity_ok"] is True


# ---- 11. host stalls and the garbage collector -------------------------------------------------------------------

class ScriptedClock(Clock):
    """perf_counter's interface with scripted readings (seconds): exact step times."""

    def __init__(self, readings):
        super().__init__("cpu")
        self.readings = iter(readings)

    def mark(self):
        return next(self.readings)


def stalled_once(model, call, seconds):
    """The same model, its ``call``-th forward pass (1 = the prefill) made ``seconds`` slower; the count restarts
    with every ``generate``-sized use of the context."""
    return delayed_forward(model, seconds, call)


def test_eager_decode_is_the_median_of_the_steps_exact():
    model = tiny()
    ids = ids_of(batch=1, length=5)
    # start, then one mark per new token (ms): steps 2, 2, 52 (a stall), 2, 2, 2, 2
    ms = [0, 10, 12, 14, 66, 68, 70, 72, 74]
    prefill, decode, mean = eager_round(model, ids, 8, ScriptedClock([t / 1000 for t in ms]))
    assert prefill == pytest.approx(10.0)
    assert decode == pytest.approx(2.0)                   # the median step: the stall does not count
    assert mean == pytest.approx(64 / 7)                   # (last - first) / steps, what was reported before
    # an even number of steps: the median is the middle pair's mean
    prefill, decode, mean = eager_round(model, ids, 5, ScriptedClock([t / 1000 for t in (0, 3, 4, 6, 9, 13)]))
    assert (prefill, decode, mean) == pytest.approx((3.0, 2.5, 2.5))   # steps 1, 2, 3, 4


def test_one_slow_step_moves_the_median_far_less_than_the_mean():
    """A real host stall: one decode step of ``generate`` sleeps 50 ms. The mean per token rises by about
    50 ms / 7 steps; the median of the steps hardly moves."""
    model = tiny()
    ids = ids_of(batch=1, length=6)
    clock, stall_ms, steps = Clock("cpu"), 50.0, 7
    eager_round(model, ids, 8, clock)  # warm-up
    clean, stalled, slept = [], [], []
    for _ in range(3):  # interleaved, the median of three rounds each
        clean.append(eager_round(model, ids, 8, clock))
        with stalled_once(model, call=4, seconds=stall_ms / 1000) as m:  # forward 4: the 3rd decode step
            stalled.append(eager_round(m, ids, 8, clock))
            slept += m.forward.slept
    assert "forward" not in vars(model) and len(slept) == 3
    stall_ms = 1000 * statistics.median(slept)  # the stall as it happened (50 ms asked; more on a busy machine)
    med = {name: [statistics.median(r[i] for r in rounds) for i in (1, 2)]
           for name, rounds in (("clean", clean), ("stalled", stalled))}
    shift_median = abs(med["stalled"][0] - med["clean"][0])
    shift_mean = med["stalled"][1] - med["clean"][1]
    assert shift_mean == pytest.approx(stall_ms / steps, rel=0.3), (med, clean, stalled)   # ~7.1 ms at 50 ms
    assert shift_median < 0.2 * shift_mean, (med, clean, stalled)                          # ~0.2 ms measured
    for _, decode, mean in stalled:  # within each stalled round: the stall lifts the mean, not the median
        assert mean - decode > 0.7 * stall_ms / steps, stalled


@pytest.mark.parametrize("regime", ["eager", "static"])
def test_gc_is_off_while_a_round_is_timed_and_restored_after(regime, monkeypatch):
    model = tiny()
    events: list[object] = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: events.append("collect") or collect(*a))
    original = model.forward

    def forward(*args, **kwargs):
        events.append(gc.isenabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    assert gc.isenabled()
    lat.ROUNDS[regime](model, ids_of(1, 4), 4, Clock("cpu"))
    assert events == ["collect", False, False, False, False], events   # collected first, then off in every pass
    assert gc.isenabled()                                                # and back on afterwards

    # a collector already off stays off
    events.clear()
    gc.disable()
    try:
        lat.ROUNDS[regime](model, ids_of(1, 4), 3, Clock("cpu"))
        assert events == ["collect", False, False, False] and not gc.isenabled()
    finally:
        gc.enable()

    # a round that fails still restores it
    def broken(*args, **kwargs):
        assert not gc.isenabled()
        raise RuntimeError("forward failed")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        lat.ROUNDS[regime](model, ids_of(1, 4), 3, Clock("cpu"))
    assert gc.isenabled()


def test_a_shape_collects_garbage_once_and_times_every_round_with_the_collector_off(monkeypatch):
    """A full collection costs 0.1-0.25 s in a process holding a model: once per shape, not per mode and round
    (that added seconds to the one-shape benchmark); every forward pass still runs with the collector off."""
    model = tiny()
    events: list[object] = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: events.append("collect") or collect(*a))
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: events.append(gc.isenabled()) or original(*a, **k))
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[4, 6], new_tokens=3, rounds=2, warmup=1,
                       regimes=["eager"], bootstrap=50)
    measure({"base": same(model), "unmerged": same(model), "merged": same(model)}, plan, "cpu", VOCAB)
    assert events.count("collect") == 2  # one per shape (2 prompt lengths)
    assert not any(e is True for e in events)  # no forward pass with the collector on
    assert events.count(False) == 2 * 3 * 3 * 3  # shapes x modes x (warm-up + rounds) x forward passes
    assert gc.isenabled()


@pytest.mark.parametrize("regime,warm_tokens", [("eager", 20), ("static", 8)])
def test_eager_warmup_decodes_the_full_length_static_a_few_tokens(monkeypatch, regime, warm_tokens):
    """Eager: the dynamic cache grows each step, so the warm-up runs every length the timed rounds will; static:
    the cache is allocated once and a few tokens capture the graph."""
    seen: list[int] = []

    def fake_round(model, ids, new_tokens, clock):
        seen.append(new_tokens)
        return 1.0, 1.0, 1.0

    monkeypatch.setitem(lat.ROUNDS, regime, fake_round)
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[5], new_tokens=20, rounds=2, warmup=1, regimes=[regime],
                       bootstrap=10)
    measure({"base": lambda: contextlib.nullcontext("base")}, plan, "cpu", VOCAB)
    assert seen == [warm_tokens, 20, 20]


def test_a_model_from_disk_is_read_once_per_method_and_every_use_is_its_own_copy(capsys, tmp_path, monkeypatch):
    """``peftbench latency`` on a model read from disk: one ``from_pretrained`` per method (the one-shape
    benchmark's 60 s target), and the timed base, the artifact's base and the merged model's base are distinct
    copies: the lora merged model merges into its own weights, not into the timed base."""
    from transformers import AutoModelForCausalLM

    import peftbench.session.timing as timing_module
    from peftbench.models.sources import load_model

    model, tok, _ = load_model("tiny:llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    reads = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        reads.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    bases = []
    real_time = timing_module.time_inference

    def spy(load_base, *args):
        first, second = load_base(), load_base()
        bases.extend([first, second])
        return real_time(load_base, *args)

    monkeypatch.setattr(timing_module, "time_inference", spy)
    out = tmp_path / "lat"
    grid = ["--model", str(tmp_path / "m"), *GRID[2:], "--stack", "none", "--regimes", "eager"]
    code, _, err = run_cli(["latency", "--methods", "lora,full", *grid, "--output", str(out)], capsys)
    assert code == 0, err
    assert len(reads) == 2  # lora and full: one read each, for 3-4 uses each
    first, second = bases[:2]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert not {p.data_ptr() for p in first.parameters()} & {p.data_ptr() for p in second.parameters()}
    r = json.loads((out / "latency" / "lora.json").read_text())
    assert r["status"] == "ok" and r["latency"]["modes"] == ["base", "unmerged", "merged"]


# ---- 10. continuing an interrupted grid -----------------------------------------------------------------------

def test_a_grid_continues_from_the_shapes_an_interrupted_run_checkpointed(monkeypatch):
    """After every shape the section so far is checkpointed; given it back as ``done``, measure keeps those
    shapes (with their sanity entries and wall time) and times only the rest. Another plan or other modes
    keep nothing."""
    calls: list[tuple[str, int]] = []

    def fake_round(model, ids, new_tokens, clock):
        calls.append((model, ids.shape[0]))
        return 1.0, (1.2 if model == "merged" else 1.0) * ids.shape[0], 1.0

    monkeypatch.setitem(lat.ROUNDS, "eager", fake_round)
    modes = {n: (lambda n=n: contextlib.nullcontext(n)) for n in ("base", "merged")}
    plan = LatencyPlan(batch_sizes=[1, 2, 3], prompt_lengths=[4], new_tokens=2, rounds=3, warmup=1,
                       regimes=["eager"], bootstrap=50)
    saved: list[dict] = []

    class Interrupt(Exception):
        pass

    def checkpoint(section):
        saved.append(json.loads(json.dumps(section)))   # as it would be read back from the file
        if len(saved) == 2:
            raise Interrupt  # the command's time runs out after the second shape

    with pytest.raises(Interrupt):
        measure(modes, plan, "cpu", VOCAB, checkpoint=checkpoint)
    first = saved[-1]
    assert [c["batch_size"] for c in first["regimes"]["eager"]] == [1, 2]
    assert [s["batch_size"] for s in first["sanity"]] == [1, 2]   # merged +20 %: flagged in both
    assert len(calls) == 2 * 4 * 2
    first["wall_s"]["eager"]["base"] = 5.0   # the earlier process's wall time is carried on

    calls.clear()
    progress: list[dict] = []
    out = measure(modes, plan, "cpu", VOCAB, done=first, checkpoint=progress.append)
    assert {b for _, b in calls} == {3} and len(calls) == 4 * 2           # only the missing shape was timed
    cells = out["regimes"]["eager"]
    assert [c["batch_size"] for c in cells] == [1, 2, 3] and out["resumed_cells"] == 2
    assert cells[:2] == first["regimes"]["eager"]                         # kept as they were, timed_at included
    assert all("timed_at" in c for c in cells)
    assert [(s["batch_size"], s["ok"]) for s in out["sanity"]] == [(1, False), (2, False), (3, False)]
    assert out["sanity_ok"] is False and len(progress) == 1
    assert 5.0 <= out["wall_s"]["eager"]["base"] < 6.0

    # another plan, or other modes: nothing is kept
    calls.clear()
    other = dataclasses.replace(plan, rounds=4)
    out = measure(modes, other, "cpu", VOCAB, done=first)
    assert len(calls) == 3 * 5 * 2 and "resumed_cells" not in out
    calls.clear()
    out = measure({**modes, "extra": lambda: contextlib.nullcontext("extra")}, plan, "cpu", VOCAB, done=first)
    assert len(calls) == 3 * 4 * 3 and "resumed_cells" not in out


def test_latency_resume_continues_an_interrupted_method_shape_by_shape(capsys, tmp_path, monkeypatch):
    """The command interrupted inside a method (a command's time limit) keeps the method's finished shapes
    under latency-partial/; --resume times only the rest, writes the method's file and removes the partial;
    session.json names the earlier command's methods too. Without --resume the folder is refused."""
    real = lat._measure_shape
    shapes: list[tuple[int, int]] = []

    def counted(modes, names, regime, batch, length, *args):
        shapes.append((batch, length))
        if len(shapes) == 6 and interrupt[0]:  # full: 4 shapes; lora: the second
            raise KeyboardInterrupt
        return real(modes, names, regime, batch, length, *args)

    interrupt = [True]
    monkeypatch.setattr(lat, "_measure_shape", counted)
    out = tmp_path / "lat"
    grid = ["--model", "tiny:llama", "--device", "cpu", "--batch-sizes", "1,2", "--prompt-lengths", "8,12",
            "--new-tokens", "3", "--rounds", "2", "--regimes", "eager", "--stack", "none"]
    code, _, err = run_cli(["latency", "--methods", "full,lora", *grid, "--output", str(out)], capsys)
    assert code != 0
    assert (out / "latency" / "full.json").is_file() and not (out / "latency" / "lora.json").exists()
    partial = json.loads((out / "latency-partial" / "lora.json").read_text())
    assert partial["status"] == "partial" and len(partial["latency"]["regimes"]["eager"]) == 1
    assert json.loads((out / "session.json").read_text())["status"] == "interrupted"

    code, _, err = run_cli(["latency", "--methods", "lora", *grid, "--output", str(out)], capsys)
    assert code == 2 and "--resume" in err   # the partial is not overwritten by a fresh start
    code, stdout, err = run_cli(["report", str(out), "--markdown"], capsys)   # the report names what is missing
    assert code == 0, err
    assert "lora: partial: interrupted after 1 of 4 shapes (latency-partial/lora.json); peftbench latency " \
           "--resume continues it" in stdout
    assert "| full |" in stdout and "| lora |" not in stdout

    interrupt[0] = False
    shapes.clear()
    code, _, err = run_cli(["latency", "--methods", "lora", *grid, "--output", str(out), "--resume"], capsys)
    assert code == 0, err
    assert "lora: continuing; 1 shapes kept" in err
    assert shapes == [(1, 12), (2, 8), (2, 12)]                          # (1, 8) was kept
    lora = json.loads((out / "latency" / "lora.json").read_text())
    assert lora["status"] == "ok" and lora["latency"]["resumed_cells"] == 1
    assert [(c["batch_size"], c["prompt_tokens"]) for c in lora["latency"]["regimes"]["eager"]] == [
        (1, 8), (1, 12), (2, 8), (2, 12)]
    assert lora["latency"]["regimes"]["eager"][0] == partial["latency"]["regimes"]["eager"][0]
    assert not (out / "latency-partial" / "lora.json").exists()
    session = json.loads((out / "session.json").read_text())
    assert session["status"] == "finished" and session["methods"] == ["full", "lora"]
    assert len(session["commands"]) == 2 and "--resume" in session["commands"][-1]  # the refused one wrote nothing
    assert set(session["method_configs"]) == {"full", "lora"}


def test_each_timed_round_records_the_core_and_clock_it_ran_on(monkeypatch):
    """Per mode, one (core, MHz) per timed round, in round order, read after the round; warm-up rounds are
    not recorded. On this Linux machine the real reading gives a core number."""
    from peftbench.system.memory import host_cpu_state

    core, _ = host_cpu_state()
    assert isinstance(core, int) and core >= 0
    states = iter([(c, 1000.0 + c) for c in range(100)])
    monkeypatch.setattr(lat, "host_cpu_state", lambda: next(states))
    monkeypatch.setitem(lat.ROUNDS, "eager", lambda model, ids, n, clock: (1.0, 1.0, 1.0))
    plan = LatencyPlan(batch_sizes=[1], prompt_lengths=[4], new_tokens=2, rounds=3, warmup=2, regimes=["eager"],
                       bootstrap=20)
    out = measure({n: (lambda n=n: contextlib.nullcontext(n)) for n in ("base", "other")}, plan, "cpu", VOCAB)
    modes = out["regimes"]["eager"][0]["modes"]
    # timed rounds 3-5 (after 2 warm-up rounds), two modes each, readings 0..5 in timing order; the lead
    # rotates: base first in rounds 3 and 5, other first in round 4
    assert modes["base"]["host"] == {"core": [0, 3, 4], "mhz": [1000.0, 1003.0, 1004.0]}
    assert modes["other"]["host"] == {"core": [1, 2, 5], "mhz": [1001.0, 1002.0, 1005.0]}
