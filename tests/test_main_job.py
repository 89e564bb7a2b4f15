"""benchmarks/main_job.py: the README's main job timed end to end (wall, peak RSS, phase sums)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "main_job.py"


@pytest.fixture(scope="module")
def main_job():
    spec = importlib.util.spec_from_file_location("main_job", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_rss_and_wall_time_are_the_subprocess_own(main_job, tmp_path):
    """A child that holds 300 MiB for 0.5 s: its peak RSS is at least that, its wall time at least that long."""
    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    wall, status, peak = main_job._timed([sys.executable, "-c", code], tmp_path / "log")
    assert status == 0 and 0.5 <= wall < 30
    assert 300 * 2**20 <= peak < 1.5 * 2**30


def test_a_failing_job_keeps_its_exit_code_and_log(main_job, tmp_path):
    wall, status, _ = main_job._timed([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "log")
    assert status == 3 and "boom" in (tmp_path / "log").read_text()


def test_phase_sums_and_cells_from_run_files(main_job):
    runs = [{"key": "base--q--seed0", "status": "ok", "timings": {"load": 1.5, "evaluate": 10.0}},
            {"key": "lora--q--seed0", "status": "ok", "timings": {"data": 0.2, "load": 0.5, "train": 30.0,
                                                                  "evaluate": 8.0, "latency": 12.25},
             "merge": {"precision_skipped": "skipped on cpu (...)"},
             "latency": {"regimes": {"eager": [{"rounds": 3}]}}}]
    assert main_job.phase_sums(runs) == {"load": 2.0, "evaluate": 18.0, "data": 0.2, "train": 30.0,
                                         "latency": 12.25}
    cells = main_job.cell_table(runs)
    assert cells[1]["phases_s"] == pytest.approx(50.95) and cells[1]["latency_rounds"] == [3]
    assert cells[1]["skipped"].startswith("skipped on cpu") and cells[0]["skipped"] is None


def test_arguments_after_a_double_dash_go_to_peftbench_run(main_job):
    args, extra = main_job._parse(["--smoke", "--model", "tiny:llama", "--", "--set", "lr=1e-3"])
    assert args.smoke and args.model == "tiny:llama" and extra == ["--set", "lr=1e-3"]


def test_the_scoring_sweep_times_both_scorers_and_compares_their_results(main_job, tmp_path):
    out = tmp_path / "eval.json"
    report = main_job.main(["--eval-batch-sizes", "8", "--limit", "6", "--model", "tiny:llama",
                            "--scorers", "lm_eval,shared_context", "--json", str(out)])
    assert report["same_samples"] is True and report["scorers"] == ["lm_eval", "shared_context"]
    kinds = [(p["pass"], p["scorer"]["kind"]) for p in report["passes"]]
    assert kinds == [(1, "lm_eval"), (1, "shared_context"), (2, "shared_context"), (2, "lm_eval")]
    assert all(p["scorer"]["kind"] != "shared_context" or p["scorer"]["forward_rows"] == 6 for p in report["passes"])
    with pytest.raises(SystemExit, match="--scorers takes"):
        main_job.main(["--eval-batch-sizes", "8", "--scorers", "fast"])


def test_steal_is_the_share_of_a_core_taken_while_the_job_ran(main_job, monkeypatch):
    monkeypatch.setattr(main_job, "_steal_s", lambda: 13.0)
    assert main_job._steal_cores(10.0, 6.0) == pytest.approx(0.5)  # 3 s stolen over 6 s of wall time
    assert main_job._steal_cores(None, 6.0) is None
    monkeypatch.setattr(main_job, "_steal_s", lambda: None)
    assert main_job._steal_cores(10.0, 6.0) is None
