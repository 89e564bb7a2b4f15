"""Issue 20, bad input and artifacts: every bad input exits 2 with a message naming it, before any session
starts (no traceback, no session.json left 'running'); scoring says nothing about git; every method's kept
artifact loads with ``peftbench.load_artifact`` and exports to a folder transformers/PEFT load alone."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftbench.errors import ConfigError, UsageError
from peftbench.models.sources import load_model, resolve_model
from peftbench.testing import run_cli

RUN = ["run", "--methods", "lora", "--tasks", "quickstart", "--device", "cpu", "--no-base"]
FAST = ["--set", "steps=2", "--set", "evaluate=off", "--set", "latency_rounds=0", "--set", "merge_precisions=false"]


def refused(capsys, argv, *needles, output=None):
    """``peftbench ARGV`` exits 2 with every needle in its message, no traceback, and wrote no session."""
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    if output is not None:
        assert not (output / "session.json").exists(), "a session was started"
    return err


# ---- 1. model sources ----------------------------------------------------------------------------------

def tiny_folder(path: Path) -> Path:
    model, tok, _ = load_model("tiny:llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _no_model_type(d):
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')


def _unknown_model_type(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "model_type": "no-such-arch"}))


def _not_json(d):
    (d / "config.json").write_text('{"model_type": "llama", ')


def _truncated_weights(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])


def _no_weights(d):
    (d / "model.safetensors").unlink()


def _no_tokenizer(d):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / name).unlink(missing_ok=True)


@pytest.mark.parametrize("damage, needle", [
    (_no_model_type, "model_type"), (_unknown_model_type, "no-such-arch"), (_not_json, "not valid JSON"),
    (_truncated_weights, "model.safetensors"), (_no_weights, "no weights"), (_no_tokenizer, "tokenizer"),
], ids=["no-model-type", "unknown-model-type", "not-json", "truncated-weights", "no-weights", "no-tokenizer"])
def test_a_broken_model_folder_exits_2_before_any_session(capsys, tmp_path, damage, needle):
    folder = tiny_folder(tmp_path / "model")
    damage(folder)
    out = tmp_path / "out"
    refused(capsys, [*RUN, "--model", str(folder), "--output", str(out)], str(folder), needle, output=out)
    with pytest.raises(UsageError, match=needle):
        resolve_model(str(folder))


def test_an_intact_model_folder_still_resolves(tmp_path):
    assert resolve_model(str(tiny_folder(tmp_path / "m"))).info.kind == "local"


@pytest.mark.parametrize("content", [b"hello, not a model\n", b"GGUF\x03\x00\x00\x00garbage"],
                         ids=["text", "truncated-gguf"])
def test_a_bad_gguf_exits_2_before_any_session(capsys, tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    out = tmp_path / "out"
    refused(capsys, [*RUN, "--model", str(bad), "--output", str(out)], str(bad), "GGUF",
            output=out)


def test_a_missing_model_path_exits_2(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    out = tmp_path / "out"
    refused(capsys, [*RUN, "--model", str(missing), "--output", str(out)], str(missing), "does not exist",
            output=out)


# ---- 2. seeds and options --------------------------------------------------------------------------------

@pytest.mark.parametrize("seeds", ["-1", "99999999999", "0,4294967296"])
def test_seeds_out_of_range_exit_2(capsys, tmp_path, seeds):
    out = tmp_path / "out"
    refused(capsys, [*RUN, "--model", "tiny:llama", "--seeds", seeds, "--output", str(out)], "--seeds",
            "out of range", "4294967295", output=out)


def test_the_largest_seed_is_accepted():
    from peftbench.cli.flags import seeds

    assert seeds("0,4294967295") == [0, 4294967295]


@pytest.mark.parametrize("setting, option", [
    ("lr=nan", "'lr'"), ("lr=inf", "'lr'"), ("lr=-1e-4", "'lr'"), ("epochs=inf", "'epochs'"),
    ("weight_decay=nan", "'weight_decay'"), ("max_grad_norm=inf", "'max_grad_norm'"),
    ("lora.alpha=nan", "'alpha'"), ("lora.alpha=inf", "'alpha'"),
])
def test_non_finite_or_negative_options_exit_2_at_planning(capsys, tmp_path, setting, option):
    out = tmp_path / "out"
    refused(capsys, [*RUN, "--model", "tiny:llama", "--set", setting, "--output", str(out)], option,
            output=out)


def test_train_config_names_the_non_finite_option():
    from peftbench.train.config import TrainConfig

    for name in ("lr", "epochs", "warmup_ratio", "min_lr_ratio", "weight_decay", "max_grad_norm"):
        for bad in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ConfigError, match=f"'{name}'"):
                TrainConfig(**{name: bad})
    assert TrainConfig(lr=1e-4).lr == 1e-4


# ---- 3. scoring outside a git checkout -------------------------------------------------------------------

def test_scoring_outside_a_git_checkout_prints_nothing_about_git(tmp_path, monkeypatch, capfd):
    from peftbench.evaluate.config import EvalConfig
    from peftbench.evaluate.scoring import evaluate
    from peftbench.tasks.task import builtin_tasks_dir, discover_tasks, materialize, prepare_data

    away = tmp_path / "not-a-checkout"
    away.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(away)
    probe = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True)
    assert "fatal:" in probe.stderr   # what lm-eval's call printed here
    task = discover_tasks([builtin_tasks_dir()])["quickstart"]
    include = materialize([task], {task.name: prepare_data(task, tmp_path / "cache", None, True)}, tmp_path / "w")
    model, tok, _ = load_model("tiny:llama")
    capfd.readouterr()
    result = evaluate(model, tok, task, include, EvalConfig(limit=2), "cpu")
    assert result.n_samples == 2
    err = capfd.readouterr().err
    assert "fatal:" not in err and "git" not in err.lower(), err


# ---- 4. artifacts: full fine-tuning and the bottleneck adapter ---------------------------------------------

def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


IDS = [[0, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]]


def nudged(model):
    """``model`` as if trained: its trainable parameters moved (all of them for a plain model)."""
    with torch.no_grad():
        for i, p in enumerate(p for p in model.parameters() if p.requires_grad):
            p.add_(0.01 * (i % 3 - 1))
    return model


def plugin_method(name):
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.api.registry import collect_methods

    return collect_methods(make_plugin_manager()).get(name)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-embeddings"])
def test_full_fine_tuning_saves_a_from_pretrained_folder(tmp_path, tied):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    def base():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                            tie_word_embeddings=tied)).eval()

    method = plugin_method("full")
    config = method.make_config({})
    model = nudged(base())
    files = method.save(model, tmp_path, config)
    assert {"config.json", "model.safetensors"} <= {f.name for f in files}
    alone = AutoModelForCausalLM.from_pretrained(tmp_path).eval()   # transformers alone
    assert torch.equal(logits(alone, IDS), logits(model, IDS))
    again = method.load(tmp_path, base(), config)
    assert torch.equal(logits(again, IDS), logits(model, IDS))


def test_full_load_still_reads_folders_of_earlier_versions(tmp_path):
    from safetensors.torch import save_model

    method = plugin_method("full")
    model = nudged(load_model("tiny:llama")[0])
    save_model(model, str(tmp_path / "model.safetensors"))   # what save() wrote before
    again = method.load(tmp_path, load_model("tiny:llama")[0], method.make_config({}))
    assert torch.equal(logits(again, IDS), logits(model, IDS))
    with pytest.raises(UsageError, match="neither model.safetensors"):
        method.load(tmp_path / "nothing", load_model("tiny:llama")[0], method.make_config({}))


def trained_adapter(method):
    model = method.prepare(load_model("tiny:llama")[0], method.make_config({}))
    return nudged(model)


def test_the_adapter_artifact_says_what_it_is_and_is_not_taken_for_peft(tmp_path):
    method = plugin_method("adapter")
    model = trained_adapter(method)
    method.save(model, tmp_path, method.make_config({}))
    assert not (tmp_path / "adapter_config.json").exists()   # PEFT's name: PEFT took it for its own (peft_type)
    meta = json.loads((tmp_path / "bottleneck_adapter_config.json").read_text())
    assert meta["peftbench_method"] == "adapter" and meta["placement"] == "houlsby"
    assert "not a PEFT adapter" in meta["note"] and "peftbench.load_artifact" in meta["note"]
    with pytest.raises(ValueError):   # PEFT finds no config of its own (was: KeyError 'peft_type')
        import peft

        peft.PeftConfig.from_pretrained(str(tmp_path))


def test_the_adapter_still_loads_folders_of_earlier_versions(tmp_path):
    method = plugin_method("adapter")
    model = trained_adapter(method)
    want = logits(model, IDS)
    method.save(model, tmp_path, method.make_config({}))
    meta = json.loads((tmp_path / "bottleneck_adapter_config.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("peftbench_method", "format", "format_version", "note",
                                                        "weights")}
    (tmp_path / "adapter_config.json").write_text(json.dumps(old))   # the earlier layout: flat, PEFT's names
    (tmp_path / "bottleneck_adapter.safetensors").rename(tmp_path / "adapter_model.safetensors")
    (tmp_path / "bottleneck_adapter_config.json").unlink()
    again = method.load(tmp_path, load_model("tiny:llama")[0], method.make_config({"placement": "pfeiffer"}))
    assert torch.equal(logits(again, IDS), want)


# ---- 5. load_artifact and export ------------------------------------------------------------------------

METHODS = ("lora", "adapter", "full")


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A session on tiny:llama run with --keep-artifacts: lora, adapter and full, two steps each."""
    from peftbench.session.runner import Session, SessionConfig

    out = tmp_path_factory.mktemp("kept") / "run"
    sets = ["steps=2", "evaluate=off", "latency_rounds=0", "merge_precisions=false"]
    records = Session(SessionConfig(methods=list(METHODS), model="tiny:llama", device="cpu", output=out, sets=sets,
                                    keep_artifacts=True, base_row=False)).run()
    assert [r["status"] for r in records] == ["ok"] * len(METHODS), records
    return out


def cell(out, method):
    return out / "artifacts" / f"{method}--quickstart--seed0"


def tiny_base():
    return load_model("tiny:llama")[0]


def test_every_kept_artifact_records_its_method_and_base(kept):
    for method in METHODS:
        manifest = json.loads((cell(kept, method) / "peftbench_artifact.json").read_text())
        run = json.loads((kept / "runs" / f"{method}--quickstart--seed0.json").read_text())
        assert (manifest["method"], manifest["base_model"]) == (method, "tiny:llama")
        assert manifest["method_config"] == run["config"]["method"]
        assert manifest["cell"] == run["key"]
        assert "peftbench_artifact.json" not in run["artifact"]["files"]   # the method's files alone


def test_load_artifact_puts_every_method_back_onto_its_base(kept):
    import peft
    from transformers import AutoModelForCausalLM

    import peftbench

    base = logits(tiny_base(), IDS)
    independent = {  # what each artifact is, loaded without load_artifact
        "lora": lambda d: peft.PeftModel.from_pretrained(tiny_base(), str(d)),
        "adapter": lambda d: plugin_method("adapter").load(d, tiny_base(), None),
        "full": lambda d: AutoModelForCausalLM.from_pretrained(d),
    }
    for method in METHODS:
        model, tokenizer = peftbench.load_artifact(cell(kept, method))
        got = logits(model, IDS)
        assert not torch.equal(got, base), f"{method}: the trained weights did not load"
        assert torch.equal(got, logits(independent[method](cell(kept, method)).eval(), IDS)), method
        assert tokenizer("héllo")["input_ids"] == load_model("tiny:llama")[1]("héllo")["input_ids"]


def test_export_writes_folders_transformers_and_peft_load_alone(kept, tmp_path, capsys):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import peftbench

    dest = tmp_path / "export"
    code, out, err = run_cli(["export", str(kept), "--to", str(dest)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["full--quickstart--seed0", "lora--quickstart--seed0"]
    assert "skipped adapter--quickstart--seed0" in err and "peftbench.load_artifact" in err
    lora, full = dest / "lora--quickstart--seed0", dest / "full--quickstart--seed0"
    want = {m: logits(peftbench.load_artifact(cell(kept, m))[0], IDS) for m in ("lora", "full")}
    assert torch.equal(logits(peft.PeftModel.from_pretrained(tiny_base(), str(lora)).eval(), IDS), want["lora"])
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(full).eval(), IDS), want["full"])
    text = "héllo\nworld 123"
    for folder in (lora, full):   # the base's tokenizer comes with each
        assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == load_model("tiny:llama")[1](text)["input_ids"]
    assert not list(tmp_path.glob(".export.tmp-*"))


def test_export_merge_writes_a_plain_transformers_model(kept, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    import peftbench

    dest = tmp_path / "merged"
    code, _, err = run_cli(["export", str(cell(kept, "lora")), "--to", str(dest), "--merge"], capsys)
    assert code == 0, err
    assert (dest / "config.json").is_file() and not (dest / "adapter_config.json").exists()
    want = logits(peftbench.load_artifact(cell(kept, "lora"))[0], IDS)
    got = logits(AutoModelForCausalLM.from_pretrained(dest).eval(), IDS)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


def test_export_refuses_what_it_cannot_write(kept, tmp_path, capsys):
    adapter = str(cell(kept, "adapter"))
    refused(capsys, ["export", adapter, "--to", str(tmp_path / "a")], "adapter", "peftbench.load_artifact")
    refused(capsys, ["export", adapter, "--to", str(tmp_path / "b"), "--merge"], "cannot be merged")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    refused(capsys, ["export", str(cell(kept, "lora")), "--to", str(busy)], "not an empty folder")
    assert (busy / "x").read_text() == "keep me"
    no_artifacts = tmp_path / "run"
    no_artifacts.mkdir()
    (no_artifacts / "session.json").write_text("{}")
    refused(capsys, ["export", str(no_artifacts), "--to", str(tmp_path / "c")], "--keep-artifacts")
    refused(capsys, ["export", str(tmp_path / "missing"), "--to", str(tmp_path / "d")], "missing")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_an_artifact_without_its_record_needs_the_base_named(kept, tmp_path, capsys):
    import peftbench

    old = tmp_path / "old-lora"
    shutil.copytree(cell(kept, "lora"), old)
    (old / "peftbench_artifact.json").unlink()   # as written before artifacts recorded their base
    with pytest.raises(UsageError, match="base"):
        peftbench.load_artifact(old)
    model, _ = peftbench.load_artifact(old, base="tiny:llama")
    assert torch.equal(logits(model, IDS), logits(peftbench.load_artifact(cell(kept, "lora"))[0], IDS))
    refused(capsys, ["export", str(old), "--to", str(tmp_path / "e")], "--base")
    code, _, err = run_cli(["export", str(old), "--to", str(tmp_path / "e"), "--base", "tiny:llama"], capsys)
    assert code == 0 and (tmp_path / "e" / "adapter_model.safetensors").is_file(), err


def test_a_relative_base_folder_is_recorded_absolute(tmp_path, monkeypatch):
    from peftbench.session.artifacts import portable_source

    tiny_folder(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    assert portable_source("m") == str((tmp_path / "m").resolve())
    assert portable_source("tiny:llama") == "tiny:llama" and portable_source("org/name") == "org/name"


def test_import_peftbench_stays_light_and_offers_load_artifact():
    code = ("import sys, peftbench; print('torch' in sys.modules); f = peftbench.load_artifact; "
            "print(callable(f), 'torch' in sys.modules, 'load_artifact' in peftbench.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "False", "True"]


def test_qlora_loads_onto_its_4bit_base_and_exports_merged(tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    import peftbench

    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--methods", "qlora", "--tasks", "quickstart", "--model", "tiny:llama",
                            "--device", "cpu", "--no-base", "--keep-artifacts", "--output", str(out), *FAST], capsys)
    assert code == 0, err
    model, _ = peftbench.load_artifact(cell(out, "qlora"))
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())   # the base is 4-bit again
    code, _, err = run_cli(["export", str(out), "--to", str(tmp_path / "merged"), "--merge"], capsys)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "qlora--quickstart--seed0").eval()
    want = logits(model, IDS)
    assert (logits(merged, IDS) - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
