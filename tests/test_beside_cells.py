"""A --jobs cell's training time never backs a verdict, and the leaderboard says which costs were measured
alone (issue 22). Read from results/speed-gpu/main: a real --jobs session on an H200 (4 cells at once),
cut before its cost phase."""

from __future__ import annotations

from pathlib import Path

from peftbench.report.doubts import contention, runs_timing_doubts

FOLDER = Path(__file__).parents[1] / "results" / "speed-gpu" / "main"
QUIET = {"gpu_others_bytes": 0, "host_others_cores": 0.0}


def test_a_cell_beside_other_cells_is_contended_below_the_neighbour_thresholds():
    beside = {**QUIET, "env": {"jobs": {"jobs": 2, "beside_workers": 1}}}
    assert contention(beside) == ["beside 1 other cell (--jobs)"]
    assert contention({**QUIET, "env": {"jobs": {"jobs": 2, "beside_workers": 0}}}) == []  # the last cell, alone
    assert contention(QUIET) == []
    assert runs_timing_doubts([QUIET, {**QUIET, "env": {"jobs": {"beside_workers": 3}}}]) == \
        ["beside 3 other cells (--jobs)"]


def test_the_leaderboard_flags_jobs_rows_and_says_no_cost_phase_measured_them_alone():
    from peftbench.report.folders import folder_data
    from peftbench.report.leaderboard import rows_for_task
    from peftbench.report.leaderboard_table import _title_warnings

    data = folder_data(FOLDER)
    rows = {r["method"]: r for r in rows_for_task(data["runs"], "sst2")}
    assert rows["full"]["beside_cells"] and rows["adapter"]["beside_cells"]
    assert not rows["full"]["costs_alone"]  # the session was cut before its cost phase
    title = "".join(_title_warnings(data["session"], [r for r in data["runs"] if r["task"] == "sst2"],
                                    list(rows.values())))
    assert "train s and tok/s are not the method's alone (no cost phase" in title
    assert "time, tok/s and latency are not the method's alone" in title  # 'GPU shared' keeps its whole warning
