"""``peftbench estimate``: hand-computed numbers on a tiny config, the published parameter counts, the estimate
against every committed measured peak it models (within 15 %), and bad input."""

import json
from pathlib import Path

import pytest

from peftbench.errors import UsageError
from peftbench.estimate import Setting, estimate, load_architecture, parse_memory
from peftbench.estimate.measured import comparisons
from peftbench.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# h 64, MLP 160, 2 layers, 4 heads x 16, 2 key/value heads, vocabulary 1000, untied head
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000,
        "tie_word_embeddings": False}
# per block: q 64x64 + k, v 64x32 + o 64x64 + gate, up, down 64x160 = 43,008 matrix weights, + 2 norms of 64
BLOCK, EMBED, TOTAL = 43_136, 64_000, 2 * 43_136 + 64_000 + 64_000 + 64


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    return load_architecture(str(tmp_path))


def test_tiny_parameter_counts(tiny):
    assert tiny.block_params() == BLOCK and tiny.total_params() == TOTAL == 214_336


def test_full_fine_tuning_pure_bf16_on_one_gpu_by_hand(tiny):
    e = estimate(tiny, Setting("full", batch_size=2, seq_len=8, master_weights="bf16"))
    weights, moments = TOTAL * 2, TOTAL * 4
    # a compiled full block saves 4q + 4kv + 4a + 8 + 8h + 6i = 256 + 128 + 16 + 8 + 512 + 960 bytes a token
    saved = 1880 * 2 * 16
    # loss: 14 labelled tokens' bf16 logits + gradient (4 x 14 x 1000), d hidden (2 x 14 x 64), head 10 x 1000 x 64
    loss = 56_000 + 1_792 + 640_000
    work = (6 * 160 + 4 * 64) * 16
    assert e.weights == weights and e.optimizer == moments and e.gradients == weights
    assert e.activations == saved and e.loss == loss and e.backward_work == work
    assert e.phases == {"forward end": weights + moments + saved + loss,
                        "backward, top block": weights + moments + saved + work,
                        "optimizer step": weights + moments + weights}
    assert e.peak == 2_043_968 and e.peak_phase == "forward end"


def test_full_fine_tuning_with_fp32_weights_under_autocast_by_hand(tiny):
    e = estimate(tiny, Setting("full", batch_size=2, seq_len=8))  # peftbench run's way: fp32 weights
    weights, moments = TOTAL * 4, TOTAL * 8
    copies = (2 * 43_008 + 64_000) * 2  # autocast's bf16 copy of every matrix, the head's included
    saved = (1880 + 2 * 64) * 2 * 16  # the block input in fp32: +2h
    loss = 56_000 + 2 * 1_792 + 640_000  # and the fp32 hidden states' bf16 cast
    assert (e.weights, e.optimizer, e.compute_copies, e.activations, e.loss) == (weights, moments, copies, saved, loss)
    assert e.peak == weights + moments + copies + saved + loss == 3_635_904


def test_lora_by_hand(tiny):
    e = estimate(tiny, Setting("lora", batch_size=2, seq_len=8, lora_rank=4, master_weights="bf16"))
    lora = 2 * 4 * (128 + 96 + 96 + 128 + 224 + 224 + 224)  # r x (in + out) over the 7 linears, 2 blocks
    assert e.trainable_params == lora == 8_960
    # frozen block: 408 (attention, statistics) + 4h + 4i; each adapted linear: (1 + 2) d_in + 2r
    saved = (408 + 256 + 640 + 6 * (3 * 64 + 8) + (3 * 160 + 8)) * 2 * 16
    assert saved == 95_744 and e.activations == saved
    fixed = TOTAL * 2 + lora * 4 + lora * 8 + lora * 2  # bf16 base, fp32 LoRA, its moments, its bf16 casts
    assert e.phases["forward end"] == fixed + saved + 56_000 + 1_792
    assert e.peak == 707_648


def test_fsdp_divides_what_is_sharded_and_gathers_one_block(tiny):
    e = estimate(tiny, Setting("full", gpus=2, batch_size=2, seq_len=8, master_weights="fp32"))
    assert e.weights == TOTAL * 4 / 2 and e.optimizer == TOTAL * 8 / 2
    root, block = (EMBED + 64) * 2, BLOCK * 2  # the head gathered for the loss; one block
    assert e.compute_copies == root + block
    assert e.gradients == TOTAL * 4 / 2 + BLOCK * (2 + 4)  # sharded fp32 + one block's bf16 and fp32 copies
    assert e.peak == 2_386_368 - EMBED * 2
    offloaded = estimate(tiny, Setting("full", gpus=2, batch_size=2, seq_len=8, optimizer_offload=True))
    assert offloaded.weights == offloaded.optimizer == 0 and offloaded.host == TOTAL * (4 + 4 + 8) / 2
    assert e.peak - offloaded.peak == TOTAL * (4 + 8) / 2  # at the forward end: no weights, no moments
    with pytest.raises(UsageError, match="CPU offload"):
        Setting("full", optimizer_offload=True)


def test_fsdp_on_one_rank_shards_nothing_but_gathers_in_bf16(tiny):
    e = estimate(tiny, Setting("full", gpus=1, fsdp=True, batch_size=2, seq_len=8))
    assert e.weights == TOTAL * 4 and e.optimizer == TOTAL * 8
    assert e.compute_copies == (EMBED + 64) * 2 + BLOCK * 2  # no autocast copies: FSDP gathers bf16
    assert e.activations == 1880 * 2 * 16  # bf16 compute: no fp32 residual stream


def test_qlora_stores_nf4_with_double_quantized_absmax(tiny):
    e = estimate(tiny, Setting("qlora", batch_size=2, seq_len=8, lora_rank=4, master_weights="bf16"))
    linear = 2 * 43_008
    # 4 bits + an 8-bit absmax per 64 + an fp32 scale per 256 blocks; everything else bf16
    assert e.weights == pytest.approx(linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (TOTAL - linear) * 2 + 8_960 * 4)
    single = estimate(tiny, Setting("qlora", batch_size=2, seq_len=8, lora_rank=4, master_weights="bf16",
                                    double_quant=False))
    assert single.weights - e.weights == pytest.approx(linear * (4 / 64 - 1 / 64 - 4 / (64 * 256)))


def test_checkpointing_keeps_block_inputs_and_recomputes_one(tiny):
    e = estimate(tiny, Setting("full", batch_size=2, seq_len=8, activation_checkpointing=True,
                               master_weights="bf16"))
    assert e.activations == 2 * 64 * 2 * 16
    assert e.backward_work == (1880 + 6 * 160 + 4 * 64) * 16
    fp32 = estimate(tiny, Setting("full", batch_size=2, seq_len=8, activation_checkpointing=True))
    assert fp32.activations == 4 * 64 * 2 * 16  # fp32 weights on one GPU: the residual stream is fp32


def test_published_parameter_counts():
    assert load_architecture("shape:llama-3.1-70b").total_params() == 70_553_706_496
    assert load_architecture("shape:llama-2-13b").total_params() == 13_015_864_320
    assert load_architecture("shape:llama-3.1-8b").total_params() == 8_030_261_248
    assert load_architecture("shape:smollm2-135m").total_params() == 134_515_008


def test_defaults_are_the_builtin_methods_and_the_loss_chunk():
    from peftbench_plugins.adapter.config import AdapterConfig
    from peftbench_plugins.lora.config import LoraConfig

    from peftbench.estimate import activations, setting

    lora, adapter = LoraConfig(), AdapterConfig()
    assert (setting.LORA_RANK, setting.LORA_DROPOUT, list(setting.ALL_LINEAR)) == (
        lora.r, lora.dropout, lora.target_modules)
    assert (setting.ADAPTER_REDUCTION, setting.ADAPTER_PLACEMENT) == (adapter.reduction_factor, adapter.placement)
    assert activations.LOGITS_PER_CHUNK == _constant(ROOT / "peftbench/train/loss.py", "LOGITS_PER_CHUNK")


def _constant(path: Path, name: str):
    """A module-level constant read from the source (importing peftbench.train would import torch: seconds)."""
    import ast

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return eval(compile(ast.Expression(node.value), str(path), "eval"), {})
    raise AssertionError(f"{name} not in {path}")


@pytest.mark.slow  # compiles a Llama block a case (seconds each)
@pytest.mark.parametrize("case", [("full", "compiled"), ("lora", "compiled", "fp32"), ("adapter", "eager")])
def test_the_activation_formulas_are_the_tensors_a_block_saves(case):
    """results/estimate/saved_tensors.py lists what autograd (eager) or the min-cut partitioner (compiled)
    keeps for a Llama block's backward; the formula must account for every byte of it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("saved_tensors", ROOT / "results/estimate/saved_tensors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed, formula = module.compare(*case)
    assert listed == formula


# ---- the estimate against the committed measured peaks -------------------------------------------------
# Every benchmarks/train_throughput.py file under results/ with shape: runs on random rows of one length (all
# on one H200, torch.cuda.max_memory_allocated). Not modelled: results/reference/<task>/ (real examples of
# varying length), the varlen-* files (random lengths) and sst2-* (a task), which setting_of() skips.
MEASURED = [f"results/throughput-gpu/{n}.json" for n in (
    "1b", "8b", "8b-ckpt", "8b-all", "8b-all-ckpt", "smol", "ablate-first", "ablate", "ablate-side-by-side",
    "ablate-loss-sync-fix", "ablate-gc-skipped", "smol-qa-first", "smol-qa", "smol-qa-side-by-side",
    "smol-qa-loss-sync-fix", "smol-qa-gc-skipped", "gc-freeze")] + [
    f"results/reference/8b-shape/{n}.json" for n in ("throughput", "throughput-ckpt", "throughput-h100",
                                                      "throughput-h100-ckpt")] + [
    # measured for this check (results/estimate/README.md): fp32 weights under autocast, 8-bit AdamW
    f"results/estimate/measured/{n}.json" for n in ("fp32-1b", "fp32-8b", "adamw8bit-1b")] + [
    # FSDP2 on one rank (results/estimate/measured/fsdp_one_rank.py; results/fsdp-gpu/README.md)
    f"results/fsdp-gpu/peak-{n}.json" for n in ("1b-full", "1b-full-ckpt", "1b-full-ckpt-offload", "1b-lora",
                                                "8b-full-ckpt", "8b-lora")]
BAR = 0.15
# The first pass compiled blocks without emulate_precision_casts (results/throughput-gpu/README.md: "before the
# bf16 rounding fix"): inductor kept fp32 intermediates, and saved more. The estimate models today's loop;
# the same settings measured after the fix (smol-qa.json, adapter fast: 3.93 GiB) are within 4.3 %.
KNOWN_GAPS = {("results/throughput-gpu/smol.json", "adapter", "fast"): -0.151,
              ("results/throughput-gpu/smol-qa-first.json", "adapter", "fast"): -0.151}


def _all_comparisons():
    return [c for f in MEASURED for c in comparisons(ROOT / f)]


def test_every_listed_file_has_runs_the_estimate_models():
    for f in MEASURED:
        assert comparisons(ROOT / f), f


def test_the_estimate_is_within_15_percent_of_every_measured_peak():
    rows = _all_comparisons()
    assert len(rows) >= 156
    beyond = {}
    for c in rows:
        key = (str(Path(c.file).relative_to(ROOT)), c.method, c.variant)
        if key in KNOWN_GAPS:
            assert c.error == pytest.approx(KNOWN_GAPS[key], abs=0.005), (key, c.error)
        elif abs(c.error) > BAR:
            beyond[key] = round(c.error, 3)
        if c.trainable_measured is not None:  # the parameter accounting, exactly
            assert c.estimated.trainable_params == c.trainable_measured, key
    assert not beyond


def test_flops_per_token_are_the_benchmarks_for_every_measured_run():
    from peftbench.estimate.throughput import flops_per_token

    for f in (f for f in MEASURED if "fsdp-gpu" not in f):  # fsdp_one_rank.py records no FLOPs
        data = json.loads((ROOT / f).read_text())
        recorded = {(r["method"], name): v["flops_per_token"] for r in data["results"]
                    for name, v in r["variants"].items() if v.get("flops_per_token")}
        for c in comparisons(ROOT / f):
            arch = load_architecture(data["settings"]["model"])
            assert flops_per_token(arch, c.estimated.setting, c.estimated.trainable_params) == \
                recorded[c.method, c.variant], (f, c.method, c.variant)


def test_tokens_per_second_at_the_8b_mfu_transfers_to_the_fp32_8b_runs_within_6_percent():
    from peftbench.estimate.throughput import tokens_per_second

    data = json.loads((ROOT / "results/estimate/measured/fp32-8b.json").read_text())
    measured = {r["method"]: r["variants"]["fast"]["tokens_per_s"] for r in data["results"]}
    arch = load_architecture("shape:llama-3.1-8b")
    for c in comparisons(ROOT / "results/estimate/measured/fp32-8b.json"):
        calculated = tokens_per_second(arch, c.estimated.setting, c.estimated.trainable_params)
        assert calculated / measured[c.method] - 1 == pytest.approx(0.03, abs=0.03), c.method  # +1 % to +5 %


def test_the_8b_figures_the_docs_quote():
    rows = {(c.method, c.estimated.setting.activation_checkpointing): c
            for c in comparisons(ROOT / "results/throughput-gpu/8b-all.json")
            + comparisons(ROOT / "results/throughput-gpu/8b-all-ckpt.json")}
    assert rows["full", False].measured / GIB == pytest.approx(67.25, abs=0.01)
    assert rows["full", False].estimated.peak / GIB == pytest.approx(67.06, abs=0.01)
    assert rows["full", True].estimated.peak_phase == "optimizer step"
    assert rows["qlora", True].estimated.peak / GIB == pytest.approx(8.16, abs=0.01)


def test_the_fsdp_figures_the_docs_quote():
    """docs/estimate.md and results/fsdp-gpu/README.md quote these rows (GiB, measured / estimated)."""
    rows = {Path(c.file).stem: c for n in ("1b-full", "1b-full-ckpt", "1b-full-ckpt-offload", "1b-lora",
                                           "8b-full-ckpt", "8b-lora")
            for c in comparisons(ROOT / f"results/fsdp-gpu/peak-{n}.json")}
    quoted = {"peak-8b-full-ckpt": (122.51, 119.66), "peak-1b-full": (39.12, 39.42),
              "peak-1b-full-ckpt": (26.35, 26.65), "peak-1b-lora": (33.43, 33.86), "peak-8b-lora": (68.13, 68.93),
              "peak-1b-full-ckpt-offload": (12.54, 12.84)}
    for stem, (measured, estimated) in quoted.items():
        c = rows[stem]
        assert (c.measured / GIB, c.estimated.peak / GIB) == pytest.approx((measured, estimated), abs=0.01), stem
        assert c.estimated.setting.sharded and not c.estimated.setting.compiled
    assert rows["peak-1b-full-ckpt-offload"].estimated.host / GIB == pytest.approx(18.42, abs=0.01)
    docs = (ROOT / "docs/estimate.md").read_text() + (ROOT / "results/fsdp-gpu/README.md").read_text()
    for measured, estimated in quoted.values():
        assert f"{measured:.2f}" in docs and f"{estimated:.2f}" in docs


def test_check_names_what_an_fsdp_file_lacks(tmp_path):
    bad = tmp_path / "fsdp.json"
    bad.write_text(json.dumps({"shard": {}, "peak_memory_bytes": 1, "method": "full", "model": "shape:llama-3.2-1b"}))
    with pytest.raises(UsageError, match="an FSDP run file without 'world_size'"):
        comparisons(bad)


# ---- the command --------------------------------------------------------------------------------------

def test_estimate_json_has_each_method_and_gpu_count(capsys):
    code, out, err = run_cli(["estimate", "--model", "shape:llama-3.1-70b", "--methods", "full,lora,qlora",
                              "--gpus", "1,8", "--gpu-memory", "80GiB", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["setting"]["method"], r["setting"]["gpus"]) for r in rows] == [
        ("full", 1), ("lora", 1), ("qlora", 1), ("full", 8), ("lora", 8), ("qlora", 8)]
    full1, full8 = rows[0], rows[3]
    assert full8["weights"] == pytest.approx(full1["weights"] / 8)
    assert full8["throughput"]["tokens_per_s"] == pytest.approx(8 * full8["throughput"]["tokens_per_s_per_gpu"])
    assert full8["throughput"]["mfu"] == 0.492  # the fast loop's, full fine-tuning of the 8B shape, no checkpointing
    assert not full1["fits"] and rows[5]["fits"]  # 70B QLoRA over 8 GPUs fits in 80 GiB; full on one does not


def test_table_and_check_print(capsys):
    code, out, err = run_cli(["estimate", "--methods", "lora", "--format", "markdown"], capsys)
    assert code == 0 and "shape:llama-3.1-8b on 1 GPU" in out and "| lora |" in out
    code, out, err = run_cli(["estimate", "--check", str(ROOT / "results/throughput-gpu/8b-all.json")], capsys)
    assert code == 0 and "67.25" in out and "67.06" in out
    code, out, err = run_cli(["estimate", str(ROOT / "results/throughput-gpu/8b-all.json")], capsys)
    assert code == 2 and "FILES go with --check" in err


@pytest.mark.parametrize("argv,needles", [
    (["--model", "shape:gpt-9"], ["unknown model 'shape:gpt-9'", "shape:llama-3.1-70b"]),
    (["--model", "/nonexistent/dir"], ["unknown model '/nonexistent/dir'", "config.json"]),
    (["--gpu-memory", "80 parsecs"], ["--gpu-memory '80 parsecs'", "80GiB"]),
    (["--gpu-memory", "-5GB"], ["--gpu-memory '-5GB'"]),
    (["--gpus", "0"], ["--gpus", ">= 1"]),
    (["--gpus", "two"], ["--gpus", "not a whole number"]),
    (["--methods", "lorra"], ["method 'lorra'", "full, lora, qlora, adapter"]),
    (["--batch-size", "0"], ["batch_size", ">= 1"]),
    (["--lora-targets", "qq_proj"], ["qq_proj", "q_proj"]),
    (["--check", "/nonexistent.json"], ["/nonexistent.json", "not a readable JSON"]),
    (["--check"], ["--check needs at least one file"]),
    (["--mfu", "1.5"], ["--mfu 1.5", "fraction"]),
])
def test_bad_input_exits_2(argv, needles, capsys):
    code, out, err = run_cli(["estimate", *argv], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_parse_memory_units():
    assert parse_memory("80GiB") == 80 * 2**30 and parse_memory("48 GB") == 48 * 10**9
    assert parse_memory("24576MiB") == 24 * 2**30 and parse_memory("1e9") == 10**9
    with pytest.raises(UsageError):
        parse_memory("0GiB")


@pytest.mark.parametrize("name,argv", [
    ("llama-3.1", []), ("llama-3.1-ckpt", ["--activation-checkpointing"]), ("llama-3.1-bf16", ["--master-weights", "bf16"])])
def test_the_committed_estimate_tables_are_current(name, argv, capsys):
    """results/estimate/make.sh's output: remake it when the estimate changes."""
    grid = ["--model", "shape:llama-3.1-8b,shape:llama-3.1-70b", "--methods", "full,lora,qlora", "--gpus", "1,8",
            "--gpu-memory", "80GiB"]
    code, out, err = run_cli(["estimate", *grid, *argv, "--json"], capsys)
    assert code == 0 and json.loads(out) == json.loads((ROOT / f"results/estimate/{name}.json").read_text())


def test_the_committed_claims_are_current(capsys):
    code, out, err = run_cli(["estimate", "--claims", "--json"], capsys)
    assert code == 0 and json.loads(out) == json.loads((ROOT / "results/estimate/claims.json").read_text())


# ---- the scale claims, by calculation ------------------------------------------------------------------

def test_claims_by_calculation_and_their_verdicts():
    from peftbench.report.calculated import check_by_calculation, load_calculated_claims

    claims = {c["id"]: c for c in load_calculated_claims()}
    results = {r["id"]: r for r in check_by_calculation()}
    assert set(results) == set(claims) and all(r["model"] == "by calculation" for r in results.values())
    # the smallest world size that fits: one fewer GPU does not
    need = results["full_70b_needs_8_gpus"]
    args = {k: v for k, v in claims["full_70b_needs_8_gpus"]["args"].items() if k not in ("model", "method")}
    arch = load_architecture("shape:llama-3.1-70b")
    memory = parse_memory(args.pop("gpu_memory"))
    fits = [estimate(arch, Setting("full", gpus=n, gpu_memory=memory, **args)).fits for n in (13, 14)]
    assert need["value"] == 14 and fits == [False, True] and need["verdict"] == "holds (by calculation)"
    assert results["qlora_70b_one_48gb_gpu"]["value"] == pytest.approx(44.4, abs=0.05)
    assert results["full_13b_needs_80gb"]["verdict"] == "does not hold (by calculation)"
    assert results["full_13b_needs_80gb_bf16_8bit"]["verdict"] == "holds (by calculation)"


def test_the_pure_bf16_memory_cut_matches_the_measured_one():
    from peftbench.report.calculated import check_by_calculation

    cut = {r["id"]: r for r in check_by_calculation()}["lora_cuts_memory_60_80_bf16"]["value"]
    peaks = {c.method: c.measured for c in comparisons(ROOT / "results/throughput-gpu/8b-all.json")}
    assert cut == pytest.approx(1 - peaks["lora"] / peaks["full"], abs=0.01)  # 37.8 % measured on the H200


def test_claims_command_prints_each_claim(capsys):
    code, out, err = run_cli(["estimate", "--claims", "--format", "markdown"], capsys)
    assert code == 0, err
    assert "| a 70B full fine-tune needs 8+ A100 80 GB GPUs | shape:llama-3.1-70b | 14 GPUs | >= 8 GPUs |" in out
