"""Tuning on the validation split (``peftbench run --tune``): the grids, the choice, the cells it makes, resume
and shards. Cells are faked here (instant, scored by a known function of their learning rate) so that the
choice is known; ``test_tuning_end_to_end`` runs the real cells on tiny:llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftbench.api.method import lr_grid
from peftbench.api.records import RunSpec
from peftbench.errors import UsageError
from peftbench.session.policies import shard_share
from peftbench.session.tuning import choose, grid_cells, parse_grid
from peftbench.testing import run_cli

TINY = ["--model", "tiny:llama", "--device", "cpu"]
# validation accuracy the fake cells report: LoRA peaks at lr 1e-3, full fine-tuning at 1e-4
PEAK = {"lora": 1e-3, "full": 1e-4}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def scored(monkeypatch):
    """Session.run_cell replaced by an instant ok cell whose accuracy falls off with |log10(lr / PEAK)|;
    returns the cells run: (key, lr, split)."""
    import math

    from peftbench.session.cell import blank_record
    from peftbench.session.runner import Session

    ran: list[tuple[str, float, str]] = []

    def fake_cell(plan, spec, cache, env):
        record = blank_record(plan, spec, "ok")
        lr = plan.options_of(spec).train.lr
        split = spec.tuning.split if spec.tuning else "test"
        acc = 0.9 - 0.1 * abs(math.log10(lr / PEAK.get(spec.method, 1.0))) if spec.method != "base" else 0.5
        record.eval = {"task": spec.task, "metrics": {"acc": acc}, "stderr": {"acc": 0.01}, "n_samples": 10}
        record.timings = {"train": 1.0}
        ran.append((spec.key, lr, split))
        return record

    monkeypatch.setattr(Session, "run_cell", staticmethod(fake_cell))
    return ran


def run(out: Path, capsys, *more: str) -> tuple[int, str]:
    code, _, err = run_cli(["run", "--methods", "lora,full", *TINY, "--output", str(out), *more], capsys)
    return code, err


def runs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


# ---- the protocol ---------------------------------------------------------------------------------------
def test_grid_cells_are_scored_on_validation_and_the_seeds_train_the_best_point(scored, capsys, tmp_path):
    out = tmp_path / "s"
    code, err = run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3", "--seeds", "0,1")
    assert code == 0, err
    files = runs(out)
    grid = {k: r for k, r in files.items() if (r.get("tuning") or {}).get("role") == "grid"}
    assert sorted(grid) == ["full--quickstart--seed0--lr=0.0001", "full--quickstart--seed0--lr=0.001",
                            "lora--quickstart--seed0--lr=0.0001", "lora--quickstart--seed0--lr=0.001"]
    assert all(r["tuning"]["split"] == "validation" for r in grid.values())
    assert [s for k, _, s in scored if "--lr=" in k] == ["validation"] * 4
    finals = {k: r for k, r in files.items() if (r.get("tuning") or {}).get("role") == "final"}
    assert sorted(finals) == ["full--quickstart--seed0", "full--quickstart--seed1", "lora--quickstart--seed0",
                              "lora--quickstart--seed1"]
    for r in finals.values():
        want = PEAK[r["method"]]
        assert r["config"]["train"]["lr"] == pytest.approx(want)
        assert r["tuning"]["values"] == {"lr": pytest.approx(want)}
        assert r["tuning"]["split"] == "test" and r["tuning"]["grid"] == {"lr": [1e-4, 1e-3]}
        assert r["tuning"]["on_edge"] == ["lr"]  # two points: any choice is an end of the grid
        assert "best acc on validation (0.9000), seed 0, over 2 grid points" in r["tuning"]["chosen_by"]
    # grid cells skip what does not rank them; the base row is not tuned
    lora_grid = grid["lora--quickstart--seed0--lr=0.001"]["config"]["train"]
    assert (lora_grid["latency_rounds"], lora_grid["merge_eval"], lora_grid["merge_precisions"]) == (0, False, False)
    assert "tuning" not in files["base--quickstart--seed0"]
    session = json.loads((out / "session.json").read_text())
    assert session["tuning"]["grids"]["lora--quickstart"] == {"lr": [1e-4, 1e-3]}


def test_the_default_lr_grid_spans_two_decades_around_each_methods_rate(scored, capsys, tmp_path):
    out = tmp_path / "s"
    code, err = run(out, capsys, "--tune", "lr")
    assert code == 0, err
    grids = json.loads((out / "session.json").read_text())["tuning"]["grids"]
    lora_lr = runs(out)["lora--quickstart--seed0"]["tuning"]["grid"]["lr"]
    assert grids["lora--quickstart"]["lr"] == lora_lr == list(lr_grid(lora_lr[2]))
    for values in (g["lr"] for g in grids.values()):
        assert len(values) == 5 and values[-1] / values[0] == pytest.approx(100.0, rel=0.01)
    assert grids["full--quickstart"]["lr"] != grids["lora--quickstart"]["lr"]  # centred on each method's own


def test_resume_after_a_kill_continues_the_grid_and_keeps_the_choice(scored, capsys, tmp_path, monkeypatch):
    from peftbench.session.runner import Session

    out = tmp_path / "s"
    real = Session.run_cell
    calls = {"n": 0}

    def killed_after_three(plan, spec, cache, env):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(plan, spec, cache, env)

    monkeypatch.setattr(Session, "run_cell", staticmethod(killed_after_three))
    code, err = run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3", "--seeds", "0,1")
    assert code != 0
    before = {k: r["status"] for k, r in runs(out).items()}
    assert sum(s == "ok" for s in before.values()) == 3 and "cancelled" in before.values()
    monkeypatch.setattr(Session, "run_cell", staticmethod(real))
    scored.clear()
    code, err = run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3", "--seeds", "0,1", "--resume")
    assert code == 0, err
    assert len(scored) == 9 - 3  # base + 4 grid + 4 final, less the three kept
    files = runs(out)
    assert all(r["status"] == "ok" for r in files.values())
    assert files["lora--quickstart--seed1"]["config"]["train"]["lr"] == pytest.approx(1e-3)
    # a second resume keeps every file, finals included (their choice is made again from the kept grid)
    scored.clear()
    code, err = run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3", "--seeds", "0,1", "--resume")
    assert code == 0 and scored == [] and "not kept" not in err


def test_resume_with_another_grid_is_refused(scored, capsys, tmp_path):
    out = tmp_path / "s"
    assert run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3")[0] == 0
    code, err = run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,3e-4", "--resume")
    assert code == 2 and ("another plan" in err or "tuned otherwise" in err), err


def test_when_every_grid_point_fails_the_seeds_are_skipped_with_the_reason(capsys, tmp_path, monkeypatch):
    from peftbench.results.record import ErrorInfo
    from peftbench.session.cell import blank_record
    from peftbench.session.runner import Session

    def failing_grid(plan, spec, cache, env):
        record = blank_record(plan, spec, "ok")
        if spec.tuning is not None and spec.tuning.role == "grid" and spec.method == "lora":
            record.failed("error", ErrorInfo("Diverged", "training loss became NaN/inf"))
        else:
            record.eval = {"task": spec.task, "metrics": {"acc": 0.5}, "stderr": {}, "n_samples": 1}
        return record

    monkeypatch.setattr(Session, "run_cell", staticmethod(failing_grid))
    out = tmp_path / "s"
    run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3")
    lora = runs(out)["lora--quickstart--seed0"]
    assert lora["status"] == "skipped"
    assert "no grid point of lora on quickstart was scored on validation" in lora["reason"]
    assert "training loss became NaN/inf" in lora["reason"]
    assert runs(out)["full--quickstart--seed0"]["status"] == "ok"


@pytest.mark.parametrize(("more", "needle"), [
    (["--grid", "lr=1e-4"], "--tune names no key"),
    (["--tune", "lrr"], "not a training option"),
    (["--tune", "lr", "--set", "lr=1e-4"], "tune it or fix it"),
    (["--tune", "lr", "--grid", "steps=1,2"], "--tune does not name 'steps'"),
    (["--tune", "lr", "--grid", "lr=fast,1e-3"], "lr"),
    (["--tune", "lora.rank"], "has no option 'rank'"),
    (["--tune", "lora.r"], "no default grid for 'r'"),
    (["--tune", "lr", "--grid", "lr="], "expected KEY=V1,V2"),
])
def test_bad_tuning_flags_are_usage_errors(more, needle, scored, capsys, tmp_path):
    code, err = run(tmp_path / "s", capsys, *more)
    assert code == 2 and needle in err, err
    assert "Traceback" not in err and scored == []


def test_a_method_option_is_tuned_for_its_method_only(scored, capsys, tmp_path):
    out = tmp_path / "s"
    code, err = run(out, capsys, "--tune", "lora.r", "--grid", "lora.r=2,4")
    assert code == 0, err
    files = runs(out)
    assert sorted(k for k in files if "--lora.r=" in k) == ["lora--quickstart--seed0--lora.r=2",
                                                          "lora--quickstart--seed0--lora.r=4"]
    assert files["lora--quickstart--seed0--lora.r=4"]["config"]["method"]["r"] == 4
    assert "tuning" not in files["full--quickstart--seed0"]  # full has no lora.r: trained as asked


# ---- the pieces -----------------------------------------------------------------------------------------
def test_choose_takes_the_best_breaks_ties_by_grid_order_and_flags_the_edges():
    from peftbench.session.tuning import TuningPlan

    plan = TuningPlan(keys=("lr",), grids={("lora", "t"): {"lr": (1e-4, 3e-4, 1e-3)}}, seed=0)
    cells = grid_cells(plan, "lora", "t")

    def files(*accs):
        return {c.key: {"status": "ok", "eval": {"metrics": {"acc": a}}} for c, a in zip(cells, accs, strict=True)}

    middle = choose(plan, "lora", "t", "acc", files(0.5, 0.7, 0.6))
    assert middle.values == {"lr": 3e-4} and middle.on_edge == ()
    tie = choose(plan, "lora", "t", "acc", files(0.7, 0.7, 0.6))
    assert tie.values == {"lr": 1e-4} and tie.on_edge == ("lr",)
    waiting = choose(plan, "lora", "t", "acc", dict(list(files(0.5, 0.7, 0.6).items())[:2]))
    assert waiting.values is None and waiting.waiting and "1 of its 3 grid cells" in waiting.why_not
    one_failed = files(0.5, 0.7, 0.6)
    one_failed[cells[1].key] = {"status": "error", "error": {"message": "oom"}}
    assert choose(plan, "lora", "t", "acc", one_failed).values == {"lr": 1e-3}
    assert "(1 failed)" in choose(plan, "lora", "t", "acc", one_failed).chosen_by


def test_shards_keep_a_tuned_methods_grid_and_seeds_together():
    from peftbench.session.tuning import TuningPlan, final_cell

    plan = TuningPlan(keys=("lr",), grids={("lora", "t"): {"lr": (1e-4, 1e-3)}, ("full", "t"): {"lr": (1e-5, 1e-4)}},
                      seed=0)
    cells = [RunSpec("base", "t", 0), *grid_cells(plan, "lora", "t"), *grid_cells(plan, "full", "t"),
             *(final_cell(plan, m, "t", s) for s in (0, 1) for m in ("lora", "full"))]
    shares = [shard_share(cells, (k, 2)) for k in range(2)]
    assert sorted(c.key for s in shares for c in s) == sorted(c.key for c in cells)
    for share in shares:
        methods = {c.method for c in share if c.method != "base"}
        assert len(methods) == 1  # each shard holds whole (method, task) groups
        assert len([c for c in share if c.method != "base"]) == 4


def test_parse_grid():
    assert parse_grid(["lr=1e-4, 3e-4", "lora.r=4,8"]) == {"lr": ["1e-4", "3e-4"], "lora.r": ["4", "8"]}
    for bad in (["lr"], ["=1"], ["lr=1,1"], ["lr=1", "lr=2"]):
        with pytest.raises(UsageError):
            parse_grid(bad)


def test_tuning_end_to_end_on_tiny_llama(capsys, tmp_path):
    """The issue's command on real cells: grid cells scored by lm-eval on the validation split, the choice
    per method, the seeds trained with it and scored on test, and a report that names the choice."""
    out = tmp_path / "s"
    code, err = run(out, capsys, "--tune", "lr", "--grid", "lr=1e-4,1e-3", "--seeds", "0,1", "--set", "steps=3",
                    "--limit", "8", "--retention", "none", "--set", "latency_rounds=0",
                    "--set", "merge_precisions=false")
    assert code == 0, err
    files = runs(out)
    assert len(files) == 9 and all(r["status"] == "ok" for r in files.values())
    for key, r in files.items():
        scored_as = list(r["eval"]["lm_eval"]["results"])
        if "--lr=" in key:
            assert scored_as == ["peftbench_quickstart_validation"] and r["eval"]["n_samples"] == 8
        else:
            assert scored_as == ["peftbench_quickstart"]
    for method in ("lora", "full"):
        grid = {lr: files[f"{method}--quickstart--seed0--lr={lr}"]["eval"]["metrics"]["acc"] for lr in (0.0001, 0.001)}
        best = max(grid, key=lambda lr: (grid[lr], -list(grid).index(lr)))
        for seed in (0, 1):
            final = files[f"{method}--quickstart--seed{seed}"]
            assert final["config"]["train"]["lr"] == pytest.approx(best)
            assert final["tuning"]["values"] == {"lr": pytest.approx(best)}


def test_the_tuning_table_shows_every_grid_point_and_marks_the_choice(scored, capsys, tmp_path):
    from peftbench.report.leaderboard_table import _method_text
    from peftbench.report.markdown import render_markdown
    from peftbench.report.tuning_table import tuning_tables

    out = tmp_path / "s"
    assert run(out, capsys, "--tune", "lr", "--grid", "lr=1e-5,1e-4,1e-3")[0] == 0
    files = list(runs(out).values())
    text = render_markdown(tuning_tables(files))
    lines = [line for line in text.splitlines() if line.startswith("| quickstart")]
    assert len(lines) == 6  # 3 points x 2 methods
    assert "| quickstart | full | lr=0.0001 | 0.900 acc | ✓ |" in text  # full's peak: inside the grid
    assert "| quickstart | lora | lr=0.001 | 0.900 acc | ✓ (edge: lr) |" in text  # lora's: its end
    assert "| quickstart | lora | lr=1e-05 | 0.700 acc | — |" in text
    lora = next(r for r in files if r["key"] == "lora--quickstart--seed0")
    assert _method_text({"method": "lora", "tuning": lora["tuning"]}) == (  # the leaderboard names the choice
        "lora (lr 1e-3; tuned: best acc on validation (0.9000), seed 0, over 3 grid points; lr on grid edge)")
    assert tuning_tables([r for r in files if "tuning" not in r]) == []


def test_a_methods_alias_names_the_same_tuned_key_in_tune_and_grid(scored, capsys, tmp_path):
    out = tmp_path / "s"
    code, _, err = run_cli(["run", "--methods", "peft:vera", *TINY, "--output", str(out), "--tune", "peft:vera.r",
                            "--grid", "peft:vera.r=8,16"], capsys)
    assert code == 0, err
    assert sorted(k for k in runs(out) if "--peft-vera.r=" in k) == ["peft-vera--quickstart--seed0--peft-vera.r=16",
                                                                   "peft-vera--quickstart--seed0--peft-vera.r=8"]


def test_exports_say_what_was_tuned_over_which_grid_on_which_split(scored, capsys, tmp_path):
    from peftbench.report.export import export_rows

    out = tmp_path / "s"
    assert run(out, capsys, "--tune", "lr", "--grid", "lr=1e-5,1e-4,1e-3")[0] == 0
    session = json.loads((out / "session.json").read_text())
    rows = {r["method"]: r for r in export_rows(session, list(runs(out).values()))}
    assert rows["full"]["tuned_values"] == "lr=0.0001" and rows["full"]["tuned_on_edge"] is None
    assert rows["lora"]["tuning_grid"] == "lr=1e-05|0.0001|0.001" and rows["lora"]["tuned_on_edge"] == "lr"
    assert rows["lora"]["tuned_on"] == "validation" and rows["lora"]["seeds"] == 1  # grid cells left out
    assert "tuned_values" not in rows["base"]
