"""pytest plugin for method authors: fixtures and the method contract suite.

Use it on your own method in one line (after ``pip install peftbench``, the plugin is active)::

    from peftbench.testing import MethodContract

    class TestMyMethod(MethodContract):
        method_name = "mymethod"          # as registered by your plugin
        method_options = {"rank": 4}      # optional config overrides

The contract: only trainable parameters change in a training step; a mergeable method's merged logits
match its unmerged logits and ``unmerge`` restores them; ``disabled()`` computes the base model; save ->
load onto a fresh base reproduces the trained logits; the config round-trips through JSON; the class
passes peftbench's registration checks.

Fixtures: ``peftbench_host`` (a fresh plugin manager), ``register_plugin`` (register a plugin object or
module on it), ``tiny_model`` / ``tiny_tokenizer`` (``tiny:llama``), ``fake_evaluator`` (a plugin whose
``evaluate_model`` returns a fixed score instantly, for end-to-end runner tests).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from peftbench.api.hookspecs import hookimpl

TOL = 1e-5          # fp32 on CPU: same function up to rounding
TOL_QUANT = 5e-2    # 4-bit base: bitsandbytes' CPU inference kernel computes in bf16, so the 4-bit layer
                    # and its dequantized fp32 weights agree to ~2e-3 (NF4) / ~3e-2 (FP4) on tiny:llama's
                    # logits, not to fp32 rounding


def tiny_llama():
    """A fresh ``tiny:llama`` model (same weights every call) and its tokenizer."""
    from peftbench.models.sources import load_model

    model, tokenizer, _ = load_model("tiny:llama", device="cpu")
    return model, tokenizer


def logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def probe_batch(tokenizer):
    import torch

    texts = ["Sentence: the cat sat\nTag: dax", "Hello world, this is peftbench."]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:16] for t in texts]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])


def train_steps(method, model, tokenizer, steps: int = 3, lr: float = 1e-2, seed: int = 0):
    from peftbench.train.batching import tokenize_pairs
    from peftbench.train.config import TrainConfig
    from peftbench.train.loop import train

    pairs = [(f"Sentence: item {i}\nTag:", f" {'dax wug fep lum'.split()[i % 4]}") for i in range(16)]
    data = tokenize_pairs(pairs, tokenizer, 64)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=lr, warmup_ratio=0.0, max_grad_norm=0.0)
    params = [p for _, p in method.trainable_parameters(model)]
    return train(model, params, data, cfg, seed, "cpu")


class MethodContract:
    """Subclass in your tests and set ``method_name``; every test below then runs on your method."""

    method_name: ClassVar[str] = ""
    method_options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def method(self, peftbench_host):
        from peftbench.api.registry import collect_methods

        if not self.method_name:
            pytest.fail("set method_name on your MethodContract subclass")
        reg = collect_methods(peftbench_host)
        m = reg.get(self.method_name)
        avail = m.availability("cpu")
        if not avail:
            pytest.skip(f"{self.method_name} unavailable on CPU: {avail.reason}")
        return m

    @pytest.fixture
    def config(self, method):
        return method.make_config(dict(self.method_options))

    def _tol(self, method) -> float:
        return TOL_QUANT if method.capabilities.quantized_base else TOL

    def _trained(self, method, config):
        import torch

        torch.manual_seed(0)
        base, tok = tiny_llama()
        ids = probe_batch(tok)
        base_logits = logits(base, ids)
        model = method.prepare(base, config)
        infer = method.inference_model(model)
        untrained = logits(infer, ids)
        train_steps(method, model, tok)
        return model, tok, ids, base_logits, untrained

    def test_class_passes_registration_checks(self, method):
        from peftbench.api.method import validate_method_class
        from peftbench.errors import PluginError

        try:
            validate_method_class(type(method), "contract")
        except PluginError as e:
            expect(False, "the class to pass peftbench's registration checks", str(e),
                   "docs/plugins/README.md (The Method API) lists what a Method class must have")

    def test_config_round_trips_through_json(self, method, config):
        from peftbench.api.options import to_jsonable

        again = method.make_config(json.loads(json.dumps(to_jsonable(config))))
        expect(again == config, "the config to come back equal from JSON (a run file stores it so)",
               f"{config!r} became {again!r}", "give Config fields JSON types (numbers, strings, lists, dicts)")

    def test_only_trainable_parameters_change(self, method, config):
        import torch

        torch.manual_seed(0)
        base, tok = tiny_llama()
        model = method.prepare(base, config)
        trainable = {n for n, _ in method.trainable_parameters(model)}
        expect(bool(trainable), "prepare() to leave parameters to train", "trainable_parameters() is empty",
               "set requires_grad on the method's parameters in prepare(), or override trainable_parameters()")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = train_steps(method, model, tok)
        expect(result.steps == 3, "3 training steps", f"{result.steps}")
        changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
        frozen_changed = changed - trainable
        expect(not frozen_changed, "only trainable_parameters() to change in training",
               f"frozen parameters changed: {sorted(frozen_changed)[:5]}",
               "freeze the base (requires_grad=False) in prepare(), or list these in trainable_parameters()")
        expect(bool(changed), "some trainable parameter to change after 3 steps at lr 1e-2", "none changed",
               "are the trainable parameters on the forward path?")

    def test_training_changes_the_model(self, method, config):
        model, tok, ids, base_logits, untrained = self._trained(method, config)
        trained = logits(method.inference_model(model), ids)
        diff = float((trained - untrained).abs().max())
        expect(diff > 1e-3, "training to change the logits by more than 1e-3", f"max |change| {diff:.3g}",
               "inference_model() must return the model whose trained weights compute the output")

    def test_disabled_computes_the_base_model(self, method, config):
        if not method.capabilities.can_disable:
            model, *_ = self._trained(method, config)
            _expect_not_supported(lambda: _enter(method.disabled(model)), "can_disable", "disabled()")
            return
        model, tok, ids, base_logits, untrained = self._trained(method, config)
        infer = method.inference_model(model)
        trained = logits(infer, ids)
        with method.disabled(model):
            off = logits(infer, ids)
        reference = base_logits
        if method.capabilities.quantized_base:  # the base a quantized method keeps is the quantized one
            reference = off
            far = float((off - base_logits).abs().max())
            expect(far < 0.5 * float(base_logits.abs().max()), "the quantized base to stay near the fp32 base",
                   f"max |difference| {far:.3g}")
        diff, bound = float((off - reference).abs().max()), TOL * max(1.0, float(reference.abs().max()))
        expect(diff <= bound, f"disabled() to compute the base model (max |logit difference| <= {bound:.3g})",
               f"{diff:.3g}", "switch every module of the method off in disabled(), or claim can_disable=False")
        moved = float((trained - off).abs().max())
        expect(moved > 1e-3, "the trained model to differ from its base by more than 1e-3", f"{moved:.3g}",
               "does disabled() leave the method switched off after it exits?")
        expect(torch_equal(logits(infer, ids), trained), "the trained model back, unchanged, after disabled()",
               "different logits", "restore the method's modules when the context exits (try/finally)")

    def test_merge_matches_unmerged_and_unmerge_restores(self, method, config):
        if not method.capabilities.mergeable:
            model, *_ = self._trained(method, config)
            _expect_not_supported(lambda: method.merge(model), "mergeable", "merge()")
            return
        model, tok, ids, base_logits, untrained = self._trained(method, config)
        trained = logits(method.inference_model(model), ids)
        merged = method.merge(model)
        m = logits(method.inference_model(merged), ids)
        bound = self._tol(method) * max(1.0, float(trained.abs().max()))
        diff = float((m - trained).abs().max())
        expect(diff <= bound, f"the merged model to compute the unmerged one (max |logit difference| <= "
               f"{bound:.3g})", f"{diff:.3g}", "merge() must fold exactly the trained update into the base")
        restored = method.unmerge(merged)
        diff = float((logits(method.inference_model(restored), ids) - trained).abs().max())
        expect(diff <= bound, f"unmerge() to restore the unmerged model (max |logit difference| <= {bound:.3g})",
               f"{diff:.3g}", "unmerge() must subtract what merge() added")

    def test_unload_serves_the_merged_weights(self, method, config):
        """``unload(merge(model))`` (what the latency harness times as ``merged``) computes what the merged
        model computes, and keeps no more parameters than the merged model."""
        if not method.capabilities.mergeable:
            return
        model, tok, ids, base_logits, untrained = self._trained(method, config)
        merged = method.merge(model)
        m = logits(method.inference_model(merged), ids)
        n_merged = sum(p.numel() for p in method.inference_model(merged).parameters())
        served = method.inference_model(method.unload(merged))
        expect(torch_equal(logits(served, ids), m), "unload() to keep the merged model's outputs",
               "different logits", "unload() removes pass-through wrappers only")
        n_served = sum(p.numel() for p in served.parameters())
        expect(n_served <= n_merged, f"unload() to keep at most the merged model's {n_merged} parameters",
               f"{n_served}", "drop the method's modules in unload()")

    def test_stacked_modules_are_on_the_path_and_leave_no_trace(self, method, config):
        if not method.capabilities.can_stack:
            model, *_ = self._trained(method, config)
            _expect_not_supported(lambda: _enter(method.stacked(model, 2)), "can_stack", "stacked()")
            return
        import torch

        model, tok, ids, base_logits, untrained = self._trained(method, config)
        model.eval()
        infer = method.inference_model(model)
        trained = logits(infer, ids)
        keys = set(model.state_dict())
        n_params = sum(p.numel() for p in model.parameters())
        with method.stacked(model, 3):
            expect(sum(p.numel() for p in model.parameters()) > n_params, "stacked(model, 3) to add modules",
                   "the same parameter count", "add n - 1 modules of the method's shape inside the context")
            with torch.no_grad():  # give the extra modules values, so they visibly change the output
                extra = [p for k, p in model.named_parameters() if k not in keys]
                for p in extra:
                    p.add_(0.05)
            first, second = logits(infer, ids), logits(infer, ids)
            expect(torch_equal(first, second), "stacked modules to be deterministic in eval mode",
                   "two forwards differ", "no dropout or randomness outside training")
            moved = float((first - trained).abs().max())
            expect(moved > 1e-4, "the stacked modules to be on the forward path (logits change by > 1e-4)",
                   f"{moved:.3g}", "activate the added modules, not only create them")
        expect(set(model.state_dict()) == keys, "no modules left behind after stacked()",
               f"new keys {sorted(set(model.state_dict()) - keys)[:3]}", "remove what stacked() added on exit")
        expect(torch_equal(logits(infer, ids), trained), "the model unchanged after stacked()",
               "different logits", "restore the model on exit (try/finally)")

    def test_save_load_round_trips_the_logits(self, method, config, tmp_path):
        model, tok, ids, base_logits, untrained = self._trained(method, config)
        trained = logits(method.inference_model(model), ids)
        files = method.save(model, tmp_path, config)
        expect(bool(files) and all(f.exists() for f in files), "save() to return the files it wrote",
               f"{files!r}", "return the list of paths written under the directory")
        fresh, _ = tiny_llama()
        loaded = method.load(tmp_path, fresh, config)
        got = logits(method.inference_model(loaded), ids)
        bound = TOL * max(1.0, float(trained.abs().max()))
        diff = float((got - trained).abs().max())
        expect(diff <= bound, f"load(save(model)) onto a fresh base to reproduce the trained logits (max "
               f"|difference| <= {bound:.3g})", f"{diff:.3g}", "save every trained parameter, and load them all")


def expect(ok: bool, expects: str, seen: str, hint: str = "") -> None:
    """A contract check: on failure, an AssertionError saying what the contract expects, what was seen and
    (``hint``) where to look."""
    if not ok:
        raise AssertionError(f"the method contract expects {expects}; seen: {seen}." + (f" Hint: {hint}." if hint else ""))


def _enter(context: Any) -> None:
    with context:
        pass


def _expect_not_supported(call: Any, flag: str, member: str) -> None:
    from peftbench.errors import NotSupported

    try:
        call()
    except NotSupported:
        return
    expect(False, f"{member} to raise peftbench.NotSupported, since capabilities say {flag}=False",
           f"{member} returned normally", f"set {flag}=True in the method's Capabilities if it works, or leave "
           f"{member} to the Method base class")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def run_cli(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run ``peftbench ARGV`` in-process; return (exit code, stdout, stderr). ``capsys`` is pytest's."""
    from peftbench.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def peftbench_host():
    """A fresh plugin manager with the built-ins and installed plugins loaded."""
    from peftbench.api.plugins import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture
def register_plugin(peftbench_host):
    """``register_plugin(obj, name=None)`` adds a plugin (module or object) to ``peftbench_host``."""
    added = []

    def register(plugin, name=None):
        name = peftbench_host.pm.register(plugin, name=name)
        added.append(plugin)
        return name

    yield register
    for p in added:
        peftbench_host.pm.unregister(p)


@pytest.fixture
def tiny_model():
    return tiny_llama()[0]


@pytest.fixture
def tiny_tokenizer():
    return tiny_llama()[1]


class FakeEvaluator:
    """A plugin whose ``evaluate_model`` returns ``score`` at once (no lm-eval), for fast runner tests."""

    def __init__(self, score: float = 0.5) -> None:
        self.score = score
        self.calls = 0

    @hookimpl
    def evaluate_model(self, run, model, tokenizer):
        from peftbench.api.records import EvalResult

        self.calls += 1
        return EvalResult(task=run.task.name, metrics={run.task.metric: self.score}, stderr={run.task.metric: 0.01},
                          n_samples=100, wall_time_s=0.0, lm_eval={"fake": True})


@pytest.fixture
def fake_evaluator():
    return FakeEvaluator()
