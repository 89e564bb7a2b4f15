"""Numbers in the docs come from committed result files: every leaderboard the docs show is the verbatim
``peftbench report DIR --markdown`` of a committed session, so a change to either is caught here."""

from pathlib import Path

import pytest

from peftbench.report import markdown_table
from peftbench.results import load_runs, load_session

ROOT = Path(__file__).resolve().parent.parent

# (doc, session folder): each session's rendered leaderboard must appear in the doc, verbatim
RENDERED = [
    ("README.md", "results/quickstart-cpu"),
    ("docs/tasks.md", "results/tasks-gpu/sst2"),
    ("docs/tasks.md", "results/tasks-gpu/boolq"),
    ("docs/tasks.md", "results/tasks-gpu/arc_easy"),
]


@pytest.mark.parametrize(("doc", "session"), RENDERED)
def test_docs_show_the_committed_sessions_leaderboard(doc, session):
    folder = ROOT / session
    table = markdown_table(load_session(folder), list(load_runs(folder).values())).strip()
    assert table.count("\n| ") >= 3, "a leaderboard with a base row and at least one method"
    assert table in (ROOT / doc).read_text(), f"{doc} does not show `peftbench report {session} --markdown`"


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
