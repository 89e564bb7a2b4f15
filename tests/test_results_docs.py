"""Numbers in the docs come from committed result files: every leaderboard the docs and the result folders'
READMEs show is the verbatim ``peftbench report DIR --markdown`` of a committed session, so a change to either
is caught here."""

from pathlib import Path

import pytest

from peftbench.report.folders import folder_tables
from peftbench.report.markdown import render_markdown
from peftbench.results.store import load_runs

ROOT = Path(__file__).resolve().parent.parent


def _render_docs():
    """benchmarks/render_docs.py: RENDERED, the (doc, results) pairs it re-renders, checked here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RENDER = _render_docs()


@pytest.mark.parametrize(("doc", "source"), [r for r in RENDER.RENDERED if not RENDER.split(r[1])[0].endswith(".json")])
def test_docs_show_the_committed_sessions_leaderboard(doc, source):
    session, part = RENDER.split(source)  # part: only the tables whose title holds it (the rest shown elsewhere)
    folder = ROOT / session
    table = render_markdown(folder_tables(folder)[0])
    table = (table if part is None else RENDER.select(table, part)).strip()
    if "latency" in session:  # latency tables: one row per method x shape, no base row
        assert table.count("\n| ") >= 2, "a latency table with at least one row"
    else:
        assert table.count("\n| ") >= 3, "a leaderboard with a base row and at least one method"
    assert table in (ROOT / doc).read_text(), f"{doc} does not show `peftbench report {session} --markdown`"


def test_a_source_split_between_pages_shows_each_of_its_tables_once():
    parts: dict[str, list[str]] = {}
    for _, source in RENDER.RENDERED:
        path, part = RENDER.split(source)
        if part is not None:
            parts.setdefault(path, []).append(part)
    for path, kept in parts.items():
        titles = [title for title, _, _ in RENDER.blocks(RENDER.render(path))]
        assert titles and all(sum(p in title for p in kept) == 1 for title in titles), (path, kept)


@pytest.mark.parametrize(("doc", "source"), [r for r in RENDER.RENDERED if r[1].endswith(".json")])
def test_docs_show_the_committed_throughput_results(doc, source):
    table = RENDER.render(source).strip()
    assert table.count("\n| ") >= 3
    assert table in (ROOT / doc).read_text(), \
        f"{doc} does not show `python benchmarks/train_throughput.py --markdown {source}`"


def test_gpu_task_sessions_meet_the_bar_they_are_cited_for():
    """docs/tasks.md cites these sessions for: lora beats the zero-shot base by > 2 stderr on sst2, boolq
    and arc_easy; adapter and full ran on the same cells; retention on piqa and winogrande is recorded."""
    for task in ("sst2", "boolq", "arc_easy"):
        runs = {r["method"]: r for r in load_runs(ROOT / "results/tasks-gpu" / task).values()}
        assert {"base", "lora", "adapter", "full"} <= set(runs), task
        base, lora = runs["base"]["eval"], runs["lora"]["eval"]
        assert runs["lora"]["limit"] == 0 and lora["n_samples"] == base["n_samples"] > 800, task
        gain = lora["metrics"]["acc"] - base["metrics"]["acc"]
        assert gain > 2 * max(lora["stderr"]["acc"], base["stderr"]["acc"]), (task, gain)
        for method in ("lora", "adapter", "full"):
            ret = runs[method]["retention"]
            assert set(ret) == {"piqa", "winogrande"}, (task, method)
            for e in ret.values():
                assert e["delta"] == pytest.approx(e["score"] - e["base"], abs=1e-12)


def test_latency_sessions_cited_in_the_docs():
    """docs/latency.md cites: merged within 3 % of base in every static cell (sanity passing there), and the
    static regime reproducing within 5 % between runs A and B; the eager regime's disagreement as quoted."""
    import json
    import subprocess
    import sys

    gpu = ROOT / "results/latency-gpu"
    for run in ("latency-grid-A", "latency-grid-B-static", "latency-stack-fix-A", "latency-stack-fix-B"):
        for f in (gpu / run / "latency").glob("*.json"):
            lat = json.loads(f.read_text())["latency"]
            for cell in lat["regimes"].get("static", []):
                if "merged" in cell["overhead"]:
                    assert abs(cell["overhead"]["merged"]["ratio"]) <= 0.03, (run, f.stem, cell["batch_size"])
            assert all(s["ok"] for s in lat["sanity"] if s["regime"] == "static"), (run, f.stem)
    for a, b in (("latency-grid-A", "latency-grid-B-static"), ("latency-stack-fix-A", "latency-stack-fix-B")):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks/latency_agreement.py"), str(gpu / a), str(gpu / b)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
        assert done.stdout.strip().splitlines()[-1] in (ROOT / "docs/latency.md").read_text()
    # the eager regime does not reproduce: the docs quote the comparison's summary, all modes and without the stacks
    for extra in ([], ["--modes", "unmerged,merged"], ["--statistic", "min"]):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks/latency_agreement.py"), str(gpu / "latency-grid-A"),
                               str(gpu / "latency-grid-eager-B"), *extra], capture_output=True, text=True)
        assert done.returncode == 1, done.stdout
        assert done.stdout.strip().splitlines()[-1] in (ROOT / "docs/latency.md").read_text()


GPU_TASKS = ["results/tasks-gpu/sst2", "results/tasks-gpu/boolq", "results/tasks-gpu/arc_easy"]


@pytest.mark.parametrize(("fmt", "path"), [("markdown", "docs/results/tasks-gpu.md"), ("latex", "docs/results/tasks-gpu.tex"),
                                           ("csv", "docs/results/tasks-gpu.csv")])
def test_committed_exports_are_current(fmt, path, capsys):
    from peftbench.testing import run_cli

    code, out, err = run_cli(["report", *(str(ROOT / d) for d in GPU_TASKS), "--format", fmt], capsys)
    assert code == 0, err
    assert out == (ROOT / path).read_text(), f"{path} is stale: peftbench report ... --format {fmt} > {path}"


def test_docs_claims_table_is_current(capsys):
    import json

    from peftbench.testing import run_cli

    folders = [str(ROOT / d) for d in [*GPU_TASKS, "results/latency-gpu/latency-grid-A"]]
    code, out, err = run_cli(["claims", *folders, "--format", "markdown"], capsys)
    assert code == 0, err
    assert out.strip() in (ROOT / "docs/claims.md").read_text()
    code, out, err = run_cli(["claims", *folders, "--format", "json"], capsys)
    assert json.loads(out) == json.loads((ROOT / "docs/results/claims.json").read_text())


def test_collector_freeze_figures_cited_in_performance_doc():
    """docs/performance.md cites: with the freeze skipped, full collections of over half a second inside timed
    CUDA-graph steps (LoRA and QLoRA); with it, at most 0.7 ms of collection in any timed step and every mean
    within 2 % of its steady rate; and the quoted tokens/s, as the files hold them."""
    import json

    gpu, doc = ROOT / "results/throughput-gpu", (ROOT / "docs/performance.md").read_text()

    def rows(name):
        data = json.loads((gpu / name).read_text())
        warm = data["settings"]["warmup"]
        for r in data["results"]:
            for variant, v in r["variants"].items():
                yield r["method"], variant, v, v["gc_s"][warm:]

    skipped = {(m, var): (v, timed) for f in ("ablate-gc-skipped.json", "smol-qa-gc-skipped.json")
               for m, var, v, timed in rows(f)}
    frozen = {(m, var): (v, timed) for m, var, v, timed in rows("gc-freeze.json")}
    for method in ("lora", "qlora"):
        v, timed = skipped[(method, "fast-graphs")]
        assert max(timed) > 0.5 and "gc" not in v["loop"], method
        v2, _ = frozen[(method, "fast-graphs")]
        for run in (v, v2):
            assert f"{run['tokens_per_s']:,.0f} vs {run['steady_tokens_per_s']:,.0f}" in doc, method
    assert len(frozen) == 8
    for (method, variant), (v, timed) in frozen.items():
        assert v["loop"]["gc"].startswith("frozen after steps 1 and 3"), (method, variant)
        assert max(timed) <= 0.0007, (method, variant)
        assert abs(v["tokens_per_s"] / v["steady_tokens_per_s"] - 1) <= 0.02, (method, variant)
    assert "375 objects frozen before training" in frozen[("full", "fast")][0]["loop"]["gc"]


def test_merge_fidelity_figures_cited_in_latency_doc():
    """docs/latency.md quotes the 24 LoRA and QLoRA reference cells' merge fidelity; the files hold it."""
    import json

    doc = (ROOT / "docs/latency.md").read_text()
    cells: dict[str, list[dict]] = {"lora": [], "qlora": []}
    for f in (ROOT / "results/reference").glob("*/runs/*.json"):
        r = json.loads(f.read_text())
        if r["method"] in cells:
            assert r["status"] == "ok", f.name
            cells[r["method"]].append(r["merge"])
    assert [len(v) for v in cells.values()] == [12, 12]
    lora, qlora = cells["lora"], cells["qlora"]
    assert max(m["max_abs_logit_diff"] for m in lora) < 1.6e-4 and "logits within 1.6e-4" in doc
    assert all(m["greedy_agreement"] == 1.0 and m["eval"]["delta"] == 0 for m in lora)

    def span(ms, way):
        deltas = [100 * m["precision"][way]["eval"]["delta"] for m in ms]
        return f"{min(deltas):+.2f} to {max(deltas):+.2f}".replace("-", "−")

    assert f"LoRA {span(lora, 'merge_fp32_then_cast')} points merging in fp32" in doc.replace("\n  ", " ")
    assert f"{span(lora, 'merge_in_bf16')} merging in bf16" in doc.replace("\n  ", " ")
    assert min(m["precision"][w]["greedy_agreement"] for m in lora for w in ("merge_fp32_then_cast", "merge_in_bf16")) >= 0.94
    assert f"logits differ by up to {max(m['max_abs_logit_diff'] for m in qlora):.2f}" in doc
    assert min(m["greedy_agreement"] for m in qlora) >= 0.95
    deltas = [100 * m["eval"]["delta"] for m in qlora]
    assert f"{min(deltas):+.2f} to {max(deltas):+.2f} points".replace("-", "−") in doc
    assert sum(m["ok"] is False for m in qlora) == 2 and "Two of the 12 merges" in doc
    logged = {k: sum(bool(m["eval"].get("samples")) for m in v) for k, v in cells.items()}
    assert logged == {"lora": 5, "qlora": 7}


def test_reference_verdicts_cited_in_claims_doc():
    """docs/claims.md cites the three-seed reference verdicts on the share-of-full claims, with their values and
    CIs as docs/results.md's claims table shows them (that table is itself checked against results/reference by
    test_render_results): the gain share inconclusive on arc_easy and sst2, boolq and openbookqa excluded."""
    results = (ROOT / "docs/results.md").read_text()
    claims = (ROOT / "docs/claims.md").read_text().replace("\n  ", " ")

    def rows(claim):
        cells = [line.split("|") for line in results.splitlines() if line.startswith(f"| {claim} |")]
        return {c[2].strip(): (c[3].strip(), c[4].strip(), c[6].strip()) for c in cells}

    gain = rows("LoRA reaches 97–99 % of full fine-tuning (gain over the base model)")
    score = rows("LoRA reaches 97–99 % of full fine-tuning (raw score)")
    assert {t: v for t, (_, _, v) in gain.items()} == {
        "arc_easy": "inconclusive", "sst2": "inconclusive",
        "boolq": "excluded (uninformative: no method's 95 % CI clears the majority class (0.622))",
        "openbookqa": "excluded (uninformative: no method's 95 % CI clears the majority class (0.276))"}
    assert score["arc_easy"][2] == "inconclusive"
    for task in ("arc_easy", "sst2"):  # both CIs reach into the 97-99 % band from below
        value, ci, _ = gain[task]
        low, high = (float(x.strip().rstrip("%")) for x in ci.strip("[]").split(","))
        assert low < 97 < high < 99, (task, ci)
        assert f"on {task} ({value}, CI {ci})" in claims, task
    assert f"inconclusive on arc_easy too ({score['arc_easy'][0]}, CI {score['arc_easy'][1]})" in claims

    def seeds_span(task):  # every seed of every trained method, on the test split
        accs = [r["eval"]["metrics"]["acc"] for r in load_runs(ROOT / "results/reference" / task).values()
                if r["status"] == "ok" and r["method"] != "base"]
        return f"{min(accs):.3f}–{max(accs):.3f}"

    assert f"boolq (every seed of every method at {seeds_span('boolq')} against a majority class of 0.622)" in claims
    assert f"openbookqa ({seeds_span('openbookqa')} against 0.276) are excluded as uninformative" in claims


def test_loss_floor_figures_cited_in_the_docs():
    """docs/performance.md quotes the bf16 noise floor as benchmarks/loss_floor.py prints it; the throughput-cpu
    README quotes the fp32-weights comparison."""
    import subprocess
    import sys

    cpu = "results/throughput-cpu/"

    def floor(*specs):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks/loss_floor.py"), *specs], capture_output=True,
                              text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()

    doc = (ROOT / "docs/performance.md").read_text()
    for line in floor(cpu + "sst2-floor-bf16.json:naive", cpu + "sst2-floor-bf16-1thread.json:naive",
                      cpu + "sst2-floor-bf16.json:compile"):
        assert f"    {line}\n" in doc, line
    readme = (ROOT / cpu / "README.md").read_text().replace("\n  ", " ")
    lines = floor(cpu + "sst2-floor-fp32w-bf16ac.json:naive", cpu + "sst2-floor-fp32w-bf16ac.json:compile")
    for method, line in zip(("LoRA", "full fine-tuning"), lines[1:], strict=True):
        step, window = (part.split()[-1].rstrip("%") for part in line.split(": ", 1)[1].split(", "))
        assert f"{method} {step} % / {window} %" in readme, line


def test_eight_b_ratios_cited_in_performance_doc():
    """docs/performance.md quotes LoRA's tokens/s over full fine-tuning's on the 8B shape, without and with
    activation checkpointing (the LoRA >= 1.3x target)."""
    import json

    doc = (ROOT / "docs/performance.md").read_text().replace("\n", " ")

    def ratio(name):
        rows = {r["method"]: r["variants"]["fast"] for r in json.loads((ROOT / "results/throughput-gpu" / name)
                                                                        .read_text())["results"]}
        return rows["lora"]["tokens_per_s"] / rows["full"]["tokens_per_s"]

    plain, ckpt = ratio("8b-all.json"), ratio("8b-all-ckpt.json")
    assert plain >= 1.3 > ckpt
    assert f"{plain:.2f}× without activation checkpointing, {ckpt:.2f}× with it" in doc


def test_gpu_serving_claims_and_figures_cited_in_the_docs(capsys):
    """docs/claims.md shows `peftbench claims` of results/serve-gpu verbatim (the measured tables), and
    docs/latency.md quotes the batch-32 figures that decide them: merged LoRA against base (the sanity check
    that marks LoRA's section) and 32 adapters' decode time, as the files hold them."""
    import json
    import statistics

    from peftbench.testing import run_cli

    folders = [str(ROOT / "results/serve-gpu" / d) for d in ("serve-smol", "serve-8b")]
    code, out, err = run_cli(["claims", *folders, "--format", "markdown"], capsys)
    assert code == 0, err
    measured = out.split("**by calculation")[0].strip()
    assert "does not hold" in measured and measured in (ROOT / "docs/claims.md").read_text()
    latency_doc = (ROOT / "docs/latency.md").read_text()
    for folder, merged, mixed32 in (("serve-smol", "+12.7 %", "1,263"), ("serve-8b", "−6.5 %", "1,211")):
        lat = json.loads((ROOT / "results/serve-gpu" / folder / "latency/serving-lora.json").read_text())["latency"]
        cell = next(c for c in lat["regimes"]["eager"] if c["batch_size"] == 32)
        median = {mode: statistics.median(m["samples"]["decode"]) for mode, m in cell["modes"].items()}
        assert f"{median['mixed32']:,.0f}" == mixed32 and mixed32 in latency_doc
        shown = f"{100 * (median['merged'] / median['base'] - 1):+.1f} %".replace("-", "−")
        assert shown == merged and merged in latency_doc
