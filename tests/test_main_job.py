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
