"""The built-in bottleneck adapter method (peftbench_plugins.adapter) on a tiny Llama built in code."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers
from peftbench_plugins.adapter.config import AdapterConfig
from peftbench_plugins.adapter.layers import WRAPPERS, Bottleneck
from peftbench_plugins.adapter.method import AdapterMethod
from safetensors.torch import load_file, save_file

from peftbench.api.method import validate_method_class
from peftbench.errors import ConfigError, UsageError
from peftbench.testing import MethodContract

HIDDEN, LAYERS, VOCAB = 32, 2, 64
PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
SITES_PER_LAYER = {"houlsby": 2, "pfeiffer": 1, "parallel": 1}


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                   num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def expected_trainable(placement: str, reduction: int = 16) -> int:
    b = max(1, HIDDEN // reduction)
    per_site = HIDDEN * b + b + b * HIDDEN + HIDDEN  # down weight + bias, up weight + bias
    return LAYERS * SITES_PER_LAYER[placement] * per_site


def adapter_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".adapter." in n}


def one_step(model, ids, lr: float = 1e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def method():
    return AdapterMethod()


def trained(method, ids, placement="houlsby"):
    model = method.prepare(tiny_llama(), AdapterConfig(placement=placement))
    one_step(model, ids)
    return model


# ---- (1) identity at init, analytic parameter counts ----------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_prepare_is_identity_and_counts_match(method, ids, placement):
    base = logits(tiny_llama(), ids)
    model = method.prepare(tiny_llama(), AdapterConfig(placement=placement))
    assert torch.equal(logits(model, ids), base)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == expected_trainable(placement)
    assert {n for n, _ in trainable} == adapter_names(model)
    assert expected_trainable("houlsby") == 2 * 2 * (32 * 2 + 2 + 2 * 32 + 32) == 648


def test_base_parameter_names_gain_base_prefix(method):
    model = method.prepare(tiny_llama(), AdapterConfig())
    names = {n for n, _ in model.named_parameters()}
    assert "model.layers.0.self_attn.o_proj.base.weight" in names
    assert "model.layers.1.mlp.down_proj.adapter.up.bias" in names
    assert "model.layers.0.self_attn.o_proj.weight" not in names


def test_bottleneck_shapes_and_zero_up():
    block = Bottleneck(32, max(1, 32 // 64), "gelu")
    assert block.down.weight.shape == (1, 32) and block.up.weight.shape == (32, 1)
    assert block.up.weight.abs().sum() == 0 and block.up.bias.abs().sum() == 0
    assert block.down.weight.abs().sum() > 0
    assert torch.equal(block(torch.randn(3, 32)), torch.zeros(3, 32))


def test_adapter_follows_wrapped_dtype(method):
    model = method.prepare(tiny_llama().to(torch.bfloat16), AdapterConfig())
    assert {p.dtype for n, p in model.named_parameters() if ".adapter." in n} == {torch.bfloat16}


# ---- (2) one step trains only the adapter -----------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_one_step_changes_only_adapter(method, ids, placement):
    model = method.prepare(tiny_llama(), AdapterConfig(placement=placement))
    untrained = logits(model, ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, ids)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= adapter_names(model)
    assert any(n.endswith(".adapter.up.weight") for n in changed)
    assert (logits(model, ids) - untrained).abs().max() > 1e-4


# ---- (3) disabled() ----------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_disabled_gives_base_and_restores(method, ids, placement):
    base = logits(tiny_llama(), ids)
    model = trained(method, ids, placement)
    after = logits(model, ids)
    with method.disabled(model) as m:
        assert m is model
        assert torch.equal(logits(model, ids), base)
    assert torch.equal(logits(model, ids), after)
    with pytest.raises(RuntimeError, match="boom"):
        with method.disabled(model):
            raise RuntimeError("boom")
    assert all(w.adapter_enabled for w in model.modules() if isinstance(w, WRAPPERS))
    assert torch.equal(logits(model, ids), after)


# ---- (4) save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_save_load_round_trip(method, ids, placement, tmp_path):
    model = trained(method, ids, placement)
    want = logits(model, ids)
    cfg = AdapterConfig(placement=placement)
    files = method.save(model, tmp_path, cfg)
    assert sorted(f.name for f in files) == ["bottleneck_adapter.safetensors", "bottleneck_adapter_config.json"]
    saved = load_file(str(tmp_path / "bottleneck_adapter.safetensors"))
    assert set(saved) == adapter_names(model)
    assert "model.layers.0.self_attn.o_proj.adapter.down.weight" in saved or placement != "houlsby"
    assert sum(t.numel() for t in saved.values()) == expected_trainable(placement)
    meta = json.loads((tmp_path / "bottleneck_adapter_config.json").read_text())
    assert meta["method"] == "adapter" and meta["placement"] == placement
    # the saved config wins over the one passed in
    loaded = method.load(tmp_path, tiny_llama(), AdapterConfig(placement="houlsby", reduction_factor=4))
    assert (logits(loaded, ids) - want).abs().max() <= 1e-6


def test_load_missing_tensor_is_a_clear_error(method, ids, tmp_path):
    method.save(trained(method, ids), tmp_path, AdapterConfig())
    path = tmp_path / "bottleneck_adapter.safetensors"
    state = load_file(str(path))
    gone = "model.layers.1.mlp.down_proj.adapter.up.weight"
    del state[gone]
    save_file(state, str(path))
    with pytest.raises(UsageError, match="missing tensors") as e:
        method.load(tmp_path, tiny_llama(), AdapterConfig())
    assert gone in str(e.value)


def test_load_unexpected_tensor_and_wrong_shape(method, ids, tmp_path):
    method.save(trained(method, ids), tmp_path, AdapterConfig())
    path = tmp_path / "bottleneck_adapter.safetensors"
    state = load_file(str(path))
    state["model.layers.9.extra.adapter.up.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(UsageError, match="unexpected tensors.*layers.9.extra"):
        method.load(tmp_path, tiny_llama(), AdapterConfig())
    del state["model.layers.9.extra.adapter.up.weight"]
    state["model.layers.0.mlp.down_proj.adapter.up.bias"] = torch.zeros(5)
    save_file(state, str(path))
    with pytest.raises(UsageError, match=r"shapes.*layers.0.mlp.down_proj.adapter.up.bias: saved \(5,\)"):
        method.load(tmp_path, tiny_llama(), AdapterConfig())


def test_load_without_artifact_names_the_file(method, tmp_path):
    with pytest.raises(UsageError, match="adapter_config.json"):
        method.load(tmp_path, tiny_llama(), AdapterConfig())


# ---- (5) site counts ---------------------------------------------------------------------------------

def test_pfeiffer_has_half_the_sites_of_houlsby(method):
    def sites(placement):
        model = method.prepare(tiny_llama(), AdapterConfig(placement=placement))
        return [n for n, m in model.named_modules() if isinstance(m, WRAPPERS)]

    houlsby, pfeiffer = sites("houlsby"), sites("pfeiffer")
    assert len(houlsby) == 2 * LAYERS and len(pfeiffer) == LAYERS == len(houlsby) // 2
    assert all(n.endswith("mlp.down_proj") for n in pfeiffer)
    assert sites("parallel") == [f"model.layers.{i}.mlp" for i in range(LAYERS)]


# ---- (6) config validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("placement", "middle"), ("reduction_factor", 0), ("non_linearity", "swish2"), ("dropout", 1.5),
    ("dropout", -0.1), ("scaling", float("nan")), ("mlp_modules", []), ("attn_output_modules", "o_proj"),
    ("reduction_factor", True),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field) as e:
        AdapterConfig(**{field: value})
    assert repr(value) in str(e.value)


def test_make_config_from_strings(method):
    cfg = method.make_config({"placement": "parallel", "reduction_factor": "8", "mlp_modules": "mlp,ffn",
                              "scaling": "2"})
    assert cfg == AdapterConfig(placement="parallel", reduction_factor=8, mlp_modules=["mlp", "ffn"], scaling=2.0)
    with pytest.raises(ConfigError, match="reduction_factor"):
        method.make_config({"reduction_factor": "0"})


# ---- (7) targets that match nothing ------------------------------------------------------------------

@pytest.mark.parametrize("placement,field", [("houlsby", "attn_output_modules"),
                                             ("pfeiffer", "mlp_output_modules"), ("parallel", "mlp_modules")])
def test_unmatched_targets_list_the_linear_names(method, placement, field):
    cfg = AdapterConfig(placement=placement, **{field: ["nope"]})
    with pytest.raises(ConfigError, match=field) as e:
        method.prepare(tiny_llama(), cfg)
    for name in ("o_proj", "down_proj", "q_proj", "lm_head"):
        assert name in str(e.value)


def test_non_linear_target_is_rejected(method):
    model = tiny_llama()
    with pytest.raises(ConfigError, match="not a Linear"):
        method.prepare(model, AdapterConfig(placement="houlsby", mlp_output_modules=["mlp"]))
    assert all(p.requires_grad for p in model.parameters()) and not adapter_names(model)  # left untouched


def test_prepare_twice_is_refused(method):
    model = method.prepare(tiny_llama(), AdapterConfig())
    with pytest.raises(UsageError, match="already"):
        method.prepare(model, AdapterConfig())


# ---- registration and the shared method contract ------------------------------------------------------

def test_registered_with_alias(peftbench_host):
    from peftbench.api.registry import collect_methods

    reg = collect_methods(peftbench_host)
    assert type(reg.get("bottleneck")) is AdapterMethod and type(reg.get("adapter")) is AdapterMethod
    validate_method_class(AdapterMethod, "test")
    assert AdapterMethod.capabilities.mergeable is False and AdapterMethod.capabilities.can_disable is True


# the contract loads ``tiny:llama`` through peftbench.models; run it once that module exists
needs_models = pytest.mark.skipif(importlib.util.find_spec("peftbench.models") is None,
                                  reason="peftbench.models (tiny:llama loader) not present yet")


@needs_models
class TestAdapterContract(MethodContract):
    method_name = "adapter"


@needs_models
class TestParallelAdapterContract(MethodContract):
    method_name = "adapter"
    method_options = {"placement": "parallel", "non_linearity": "gelu", "dropout": 0.1}
