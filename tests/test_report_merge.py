"""Merging result folders: a cell one folder left cancelled and another finished; retention deltas of cells
that ran beside their base row (another shard). Checked on the committed GSM8K sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftbench.report.folders import load_folders
from peftbench.report.leaderboard import rows_for_task

GSM8K = Path(__file__).resolve().parents[1] / "results" / "gsm8k-gpu"


def test_a_cell_cancelled_in_one_folder_is_taken_from_the_folder_that_finished_it():
    merged = load_folders([GSM8K / "base-full", GSM8K / "lora"])
    lora = [r for r in merged["runs"] if r["key"] == "lora--gsm8k--seed0"]
    assert len(lora) == 1 and lora[0]["status"] == "ok"
    assert lora[0]["eval"]["metrics"]["exact_match"] == pytest.approx(0.0478, abs=1e-4)


def test_a_retention_delta_missing_from_a_sharded_cell_comes_from_its_base_row():
    runs = load_folders([GSM8K / "base-full", GSM8K / "lora"])["runs"]
    rows = {r["method"]: r for r in rows_for_task(runs, "gsm8k", "exact_match")}
    full_file = json.loads((GSM8K / "base-full" / "runs" / "full--gsm8k--seed0.json").read_text())
    assert full_file["retention"]["piqa"].get("delta") is None  # ran beside the base row: no base score yet
    base = rows["base"]["retention"]["piqa"]["score"]
    assert rows["full"]["retention"]["piqa"]["delta"] == pytest.approx(full_file["retention"]["piqa"]["score"] - base)
