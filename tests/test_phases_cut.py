"""The phases after training, cut to what the device needs: the merge-precision study only where bf16 is
served (and sharing the trained model with the merge checks), scoring batch sizes per device, latency rounds
that stop once their interval is narrow enough, scoring quiet outside a git checkout."""

import json

import pytest

from peftbench.evaluate.config import EvalConfig
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
        opts["merge_precisions"] = True
    (out / "session.json").write_text(json.dumps(session))
    run_file = out / "runs" / "lora--quickstart--seed0.json"
    run_file.unlink()  # and run its cell again under --resume, with a second seed added
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--no-base", "--seeds", "0,1", "--output", str(out),
                            "--resume", *QUICK], capsys)
    assert code == 0, err
    for seed in (0, 1):
        run = _runs(out)[f"lora--quickstart--seed{seed}"]
        assert run["config"]["train"]["merge_precisions"] is True and "precision_skipped" not in run["merge"]
        assert run["merge"]["precision"]["merge_in_bf16"]["greedy_agreement"] > 0.5


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
