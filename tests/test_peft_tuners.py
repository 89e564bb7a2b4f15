"""The PEFT tuners plugin (plugins/peft_tuners): every tuner of the installed peft as a method ``peft-KEY``
(alias ``peft:KEY``), the method contract suite over each one offered, and the catalog (what the survey
measured) and its docs table checked against a fresh measurement."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peftbench_plugins.peft_tuners import catalog
from peftbench_plugins.peft_tuners.method import method_name
from peftbench_plugins.peft_tuners.survey import markdown_table, peft_tuners, survey_tuner, with_table
from peftbench_plugins.peft_tuners.tuners import TUNERS

from peftbench.api.plugins import make_plugin_manager
from peftbench.api.registry import collect_methods
from peftbench.errors import ConfigError
from peftbench.system.files import unsafe_name
from peftbench.testing import MethodContract, tiny_llama, train_steps

ROOT = Path(__file__).resolve().parents[1]
CATALOG = catalog.load()
OFFERED = [k for k in catalog.keys() if CATALOG["tuners"][k]["offered"]]
NOT_OFFERED = [k for k in catalog.keys() if not CATALOG["tuners"][k]["offered"]]
SAME_PEFT = importlib.metadata.version("peft") == CATALOG["peft_version"]
needs_catalog_peft = pytest.mark.skipif(not SAME_PEFT, reason=(
    f"the catalog was measured with peft {CATALOG['peft_version']}, peft {importlib.metadata.version('peft')} is "
    "installed: re-measure with python -m peftbench_plugins.peft_tuners.survey --docs docs/methods.md"))


# ---- the contract suite, one small class per offered tuner ------------------------------------------------

for _key in OFFERED:
    globals()[f"TestPeft_{_key}"] = type(f"TestPeft_{_key}", (MethodContract,), {"method_name": method_name(_key)})


def test_at_least_twenty_tuners_are_offered():
    assert len(OFFERED) >= 20, OFFERED


# ---- the catalog is what a fresh measurement gives ----------------------------------------------------------

MEASURED = ("peft_type", "config_class", "prompt_style", "offered", "reason", "capabilities",
            "trainable_parameters", "options", "skipped")


@needs_catalog_peft
def test_catalog_lists_every_tuner_of_peft():
    assert sorted(peft_tuners()) == [k for k in catalog.keys() if not TUNERS[k].base]
    assert set(TUNERS) == set(catalog.keys())


@needs_catalog_peft
@pytest.mark.parametrize("key", catalog.keys())
def test_catalog_entry_is_current(key):
    """Re-measure the tuner (the contract part only where it failed: the contract classes above run it for
    the others) and compare: capabilities, options and, for a tuner not offered, the reason."""
    stored = CATALOG["tuners"][key]
    contract_failed = stored["reason"].startswith("fails the method contract")
    fresh = survey_tuner(key, peft_tuners()[TUNERS[key].base or key], contract=contract_failed)
    changed = {f: (stored[f], fresh[f]) for f in MEASURED if stored[f] != fresh[f]}
    assert not changed, (f"peft:{key} measures differently now {changed}; re-measure with "
                         "python -m peftbench_plugins.peft_tuners.survey --docs docs/methods.md")


def test_docs_table_is_current():
    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    assert with_table(text, markdown_table(CATALOG)) == text, (
        "docs/methods.md's PEFT tuner table is stale: python -m peftbench_plugins.peft_tuners.survey --docs "
        "docs/methods.md")


# ---- names, registration and listing ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry():
    return collect_methods(make_plugin_manager(load_entrypoints=False))


def test_every_tuner_is_registered_under_a_file_safe_name_and_a_colon_alias(registry):
    for key in catalog.keys():
        name = method_name(key)
        assert registry.canonical(f"peft:{key}") == name
        assert registry.canonical(f"PEFT:{key}@big") == f"{name}@big"
        assert unsafe_name(name) is None and unsafe_name(f"{name}--quickstart--seed0") is not None


def test_a_tuner_not_offered_says_why(registry):
    for key in NOT_OFFERED:
        avail = registry.get(f"peft:{key}").availability("cpu")
        assert not avail and avail.reason == CATALOG["tuners"][key]["reason"] and len(avail.reason) > 40
    assert registry.get("peft:vera").availability("cpu")


def test_listing_methods_does_not_import_peft():
    code = ("import sys; from peftbench.api.plugins import make_plugin_manager; "
            "from peftbench.cli.catalog import describe_methods; "
            "rows = describe_methods(make_plugin_manager(load_entrypoints=False), 'cpu'); "
            "print(sum(r['name'].startswith('peft-') for r in rows), 'peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(catalog.keys())), "False"]


def test_listing_shows_measured_capabilities_and_peft_help():
    from peftbench.cli.catalog import describe_methods

    rows = {r["name"]: r for r in describe_methods(make_plugin_manager(load_entrypoints=False), "cpu")}
    lily, vera = rows["peft-lily"], rows["peft-vera"]
    assert vera["aliases"] == ["peft:vera"] and vera["default_lr"] == TUNERS["vera"].lr
    assert vera["capabilities"]["mergeable"] is True and lily["capabilities"]["mergeable"] is False
    r = next(o for o in vera["options"] if o["name"] == "r")
    assert r["default"] == 256 and r["help"] == "Vera attention dimension"  # PEFT's default and help
    assert rows["peft-prompt_tuning"]["capabilities"]["virtual_tokens"] is True
    assert rows["peft-poly"]["available"] is False and "multi-task" in rows["peft-poly"]["reason"]


# ---- options ------------------------------------------------------------------------------------------------

def test_options_coerce_like_any_method_and_bad_ones_say_what_is_valid(registry):
    vera = registry.get("peft:vera")
    config = vera.make_config({"r": "8", "target_modules": "q_proj,v_proj", "vera_dropout": "0.1"})
    assert (config.r, config.target_modules, config.vera_dropout) == (8, ["q_proj", "v_proj"], 0.1)
    with pytest.raises(ConfigError, match=r"Unknown option 'rank'.*Valid options: r, target_modules"):
        vera.make_config({"rank": 8})
    with pytest.raises(ConfigError, match="expected an integer"):
        vera.make_config({"r": "many"})


def test_all_linear_reaches_peft_as_its_string_and_peft_errors_are_config_errors(registry):
    lora = registry.get("peft:lora")
    model, _ = tiny_llama()
    assert lora.peft_config(lora.make_config({"target_modules": "all-linear"}), model).target_modules == "all-linear"
    with pytest.raises(ConfigError, match="peft-lora does not fit this model"):
        lora.prepare(model, lora.make_config({"target_modules": "nothing_here"}))


def test_model_dependent_defaults_fit_the_model_and_a_given_value_is_kept(registry):
    c3a = registry.get("peft:c3a")
    model, _ = tiny_llama()  # widths 32, 64, 128: PEFT's block size 256 divides none of them
    assert c3a.peft_config(c3a.make_config({}), model).block_size == 32
    assert c3a.peft_config(c3a.make_config({"block_size": 16}), model).block_size == 16


# ---- peft:lora is the hand-written lora -------------------------------------------------------------------

def test_peft_lora_trains_exactly_like_lora(registry):
    """With lora's defaults spelled out in PEFT's names, the same parameters train and, on the same seed,
    the loss curve is the same."""
    import torch

    own, generic = registry.get("lora"), registry.get("peft:lora")
    same = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
    curves, counts = [], []
    for method, config in ((own, own.make_config({})), (generic, generic.make_config(same))):
        model, tok = tiny_llama()
        torch.manual_seed(0)  # LoRA's A starts random: the runner seeds before prepare, as here
        prepared = method.prepare(model, config)
        counts.append(sum(p.numel() for _, p in method.trainable_parameters(prepared)))
        curves.append([loss for _, loss in train_steps(method, prepared, tok, steps=6, lr=1e-3, seed=3).losses])
    assert counts[0] == counts[1] > 0
    assert len(curves[0]) == 6 and curves[0] == pytest.approx(curves[1], rel=1e-6, abs=1e-7)


# ---- end to end: a representative subset through peftbench's runner ----------------------------------------

FAST = ["steps=2", "batch_size=4", "limit=8", "latency_rounds=1", "latency_new_tokens=2", "latency_prompt_lengths=4",
        "merge_precisions=false"]


def test_a_session_runs_tuners_by_their_colon_names(tmp_path):
    """A mergeable tuner, one that is not, one with a model-fitted default, and one option set by alias."""
    from peftbench.session.runner import Session, SessionConfig
    from peftbench.testing import FakeEvaluator

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(FakeEvaluator(0.5), name="fake-eval")
    methods = ["peft:vera", "peft:lily", "peft:c3a"]
    session = Session(SessionConfig(methods=methods, model="tiny:llama", device="cpu", output=tmp_path / "s",
                                    sets=[*FAST, "peft:vera.r=32"], cache_dir=tmp_path / "cache"), host=host)
    results = {r["method"]: r for r in session.run() if r["method"] != "base"}
    assert sorted(results) == ["peft-c3a", "peft-lily", "peft-vera"]
    assert all(r["status"] == "ok" for r in results.values()), {m: r.get("error") for m, r in results.items()}
    assert results["peft-vera"]["merge"]["ok"] and results["peft-vera"]["config"]["method"]["r"] == 32
    assert results["peft-lily"]["merge"]["supported"] is False
    assert all(r["reload"]["ok"] for r in results.values())
    assert (tmp_path / "s" / "runs" / "peft-vera--quickstart--seed0.json").is_file()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_session_runs_tuners_of_four_families_end_to_end_with_lm_eval(tmp_path):
    """Real cells (training, lm-eval scoring, merge and reload checks, latency) for a vector-scaling, an
    orthogonal, a rescaling and a virtual-token tuner."""
    from peftbench.session.runner import Session, SessionConfig

    methods = ["peft:vera", "peft:oft", "peft:ia3", "peft:prompt_tuning"]
    session = Session(SessionConfig(methods=methods, model="tiny:llama", device="cpu", output=tmp_path / "s",
                                    sets=FAST, cache_dir=tmp_path / "cache"),
                      host=make_plugin_manager(load_entrypoints=False))
    results = {r["method"]: r for r in session.run() if r["method"] != "base"}
    assert sorted(results) == ["peft-ia3", "peft-oft", "peft-prompt_tuning", "peft-vera"]
    assert all(r["status"] == "ok" for r in results.values()), {m: r.get("error") for m, r in results.items()}
    for name, r in results.items():
        assert r["eval"]["n_samples"] == 8 and 0.0 <= r["eval"]["metrics"]["acc"] <= 1.0
        assert r["reload"]["ok"] and r["merge"]["supported"] is (name != "peft-prompt_tuning")
        assert name == "peft-prompt_tuning" or r["merge"]["ok"]
        assert r["latency"]["errors"] == [] and "unmerged" in r["latency"]["modes"]
    assert results["peft-prompt_tuning"]["capabilities"]["virtual_tokens"] is True
    shutil.rmtree(tmp_path, ignore_errors=True)


# ---- virtual tokens: the logits are the task tokens', the tokens stay in place ----------------------------

def _prompt_tuned(registry):
    import torch

    method = registry.get("peft:prompt_tuning")
    model, tok = tiny_llama()
    torch.manual_seed(0)
    prepared = method.prepare(model, method.make_config({}))
    with torch.no_grad():
        for _, p in method.trainable_parameters(prepared):
            p.add_(torch.randn_like(p))  # a prompt far from its start, so that it visibly changes the output
    return method, prepared.eval(), tok


def test_virtual_token_logits_have_the_task_length_and_are_peft_s_after_its_tokens(registry):
    import torch

    method, model, tok = _prompt_tuned(registry)
    n = model.peft_config["default"].num_virtual_tokens
    ids = torch.tensor([tok("Sentence: the cat sat\nTag:")["input_ids"]])
    with torch.no_grad():
        raw = model.peft(input_ids=ids).logits  # PEFT's own: the virtual tokens' positions first
        got = method.inference_model(model)(input_ids=ids).logits
        base = model.get_base_model()(input_ids=ids).logits
    assert n == 20 and raw.shape[1] == ids.shape[1] + n and got.shape == base.shape
    assert torch.equal(got, raw[:, n:])
    assert float((got - base).abs().max()) > 1e-3  # the prompt reaches the task tokens' logits


def test_lm_eval_scores_a_virtual_token_tuner_on_the_task_tokens(registry):
    """lm-eval's loglikelihood of a continuation equals the log-probabilities read off PEFT's logits at the
    continuation's own positions (after the virtual tokens)."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    method, model, tok = _prompt_tuned(registry)
    n = model.peft_config["default"].num_virtual_tokens
    context, continuation = "Sentence: the cat sat\nTag:", " dax"
    lm = HFLM(pretrained=method.inference_model(model), tokenizer=tok, batch_size=1, device="cpu")
    request = Instance("loglikelihood", {}, (context, continuation), 0)
    (got, _), = lm.loglikelihood([request], disable_tqdm=True)
    whole, ctx = lm.tok_encode(context + continuation), lm.tok_encode(context)
    cont = whole[len(ctx):]
    with torch.no_grad():
        logp = model.peft(input_ids=torch.tensor([whole[:-1]])).logits[0, n:].log_softmax(-1)
    expected = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert got == pytest.approx(expected, abs=1e-4)


def test_docs_show_the_committed_peft_tuners_session():
    """docs/methods.md and the folder's README show ``peftbench report results/peft-tuners-cpu`` as it
    renders now, and every cell of that session finished."""
    from peftbench.report.folders import folder_tables
    from peftbench.report.markdown import render_markdown
    from peftbench.results.store import load_runs

    folder = ROOT / "results" / "peft-tuners-cpu"
    runs = load_runs(folder)
    assert len(runs) == 9 and all(r["status"] == "ok" for r in runs.values())
    table = render_markdown(folder_tables(folder)[0]).strip()
    assert table.count("\n| peft-") >= 7 and "peft-prompt_tuning" in table
    for doc in ("docs/methods.md", "results/peft-tuners-cpu/README.md"):
        assert table in (ROOT / doc).read_text(encoding="utf-8"), (
            f"{doc} does not show `peftbench report results/peft-tuners-cpu --format markdown`")
