"""session.json records each scored task's chance and majority-class baselines over the examples scored."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fakes import fake_cells

from peftbench.testing import run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("limit", [None, 7])
def test_session_json_records_the_baselines_of_the_scored_test_examples(limit, monkeypatch, capsys, tmp_path):
    fake_cells(monkeypatch)
    out = tmp_path / "s"
    more = ["--limit", str(limit)] if limit else []
    code, _, err = run_cli(["run", "--methods", "lora", "--model", "tiny:llama", "--device", "cpu", "--output",
                            str(out), *more], capsys)
    assert code == 0, err
    session = json.loads((out / "session.json").read_text())
    got = session["tasks"]["quickstart"]["baselines"]
    folder = next((tmp_path / "cache" / "data" / "quickstart").iterdir())
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()][: limit or None]
    top = Counter(r["label"] for r in rows).most_common(1)[0][1]
    assert got["n"] == len(rows) == (limit or session["tasks"]["quickstart"]["sizes"]["test"])
    assert got["majority"] == pytest.approx(top / len(rows))
    assert got["chance"] == pytest.approx(sum(1 / len(r["choices"]) for r in rows) / len(rows))
