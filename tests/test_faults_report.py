"""Issue 20, the report's side: ``peftbench report`` and ``peftbench claims`` never show a file its session
cannot prove, and never hide a cell without a finished result. Sessions are made with instant fake cells
(no training); "kill -9" is a session whose final ``session.json`` write never happens."""

import json
import shutil
from pathlib import Path

import pytest

from peftbench.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
PLAN = ["base--quickstart--seed0", "lora--quickstart--seed0", "full--quickstart--seed0",
        "lora--quickstart--seed1", "full--quickstart--seed1"]


KILL = """
import os, sys
from peftbench.session.cell import blank_record
from peftbench.session.runner import Session, SessionConfig

def fake_cell(plan, spec, cache, env):
    if spec.key == sys.argv[2]:
        os._exit(9)   # kill -9 at this cell: no finally, no session.json written after it
    return blank_record(plan, spec, "ok")

Session.run_cell = staticmethod(fake_cell)
Session(SessionConfig(methods=["lora", "full"], seeds=[0, 1], model="tiny:llama", device="cpu",
                      output=sys.argv[1], cache_dir=sys.argv[3])).run()
"""


@pytest.fixture(scope="module")
def killed_folders(tmp_path_factory):
    """Sessions of fake cells killed (os._exit in a subprocess) at lora seed 1, and at their first cell."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("killed")
    made = {}
    for stop in ("lora--quickstart--seed1", "base--quickstart--seed0"):
        out = root / stop
        done = subprocess.run([sys.executable, "-c", KILL, str(out), stop, str(root / "cache")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 9, done.stderr
        made[stop] = out
    return made


def _killed(killed_folders, tmp_path, stop="lora--quickstart--seed1"):
    """A copy of a killed session's folder (each test may damage its own)."""
    return Path(shutil.copytree(killed_folders[stop], tmp_path / "killed"))


def _session(tmp_path, monkeypatch, name="s", methods=("lora", "full"), seeds=(0, 1), fail=None, stop_at=None,
             base_row=True):
    """Run a session of instant fake cells into ``tmp_path/name``. ``fail``: key -> status recorded with an
    error; ``stop_at``: the cell at which Ctrl-C stops it."""
    from peftbench.results.record import ErrorInfo
    from peftbench.session.cell import blank_record
    from peftbench.session.runner import Session, SessionConfig

    def fake_cell(plan, spec, cache, env):
        if spec.key == stop_at:
            raise KeyboardInterrupt()
        record = blank_record(plan, spec, "ok")
        if fail and spec.key in fail:
            record.failed(fail[spec.key], ErrorInfo("RuntimeError", f"{spec.key} broke\nsecond line"))
        return record

    monkeypatch.setattr(Session, "run_cell", staticmethod(fake_cell))
    Session(SessionConfig(methods=list(methods), seeds=list(seeds), model="tiny:llama", device="cpu",
                          output=tmp_path / name, cache_dir=tmp_path / "cache", base_row=base_row)).run()
    return tmp_path / name


def _flat(text):
    return " ".join(text.split())


# ---- the committed folders are complete: exit 0, no gap listing ------------------------------------------------
@pytest.mark.parametrize("folder", ["results/reference/sst2", "results/quickstart-cpu"])
def test_a_complete_committed_folder_reports_with_exit_0(folder, capsys):
    code, out, err = run_cli(["report", str(ROOT / folder)], capsys)
    assert code == 0 and err == "" and "planned cells" not in out and "lora" in out


# ---- case 1: a run file copied in from another session ---------------------------------------------------------
def test_a_run_file_copied_in_from_another_session_is_refused(tmp_path, monkeypatch, capsys):
    mine = _session(tmp_path, monkeypatch, "mine", methods=["lora"], seeds=[0])
    other = _session(tmp_path, monkeypatch, "other", methods=["full"], seeds=[0])
    other_id = json.loads((other / "session.json").read_text())["session_id"]
    assert run_cli(["report", str(mine)], capsys)[0] == 0
    copied = mine / "runs" / "full--quickstart--seed0.json"
    shutil.copy(other / "runs" / copied.name, copied)
    for argv in (["report", str(mine)], ["report", str(mine), "--format", "csv"], ["claims", str(mine)]):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and "Traceback" not in err and out == "", argv
        assert str(copied) in err and "not listed in session.json" in _flat(err)
        assert f"written by another session ({other_id})" in _flat(err) and "Remove it" in err
    # the same file hashed into session.json (as a resume that kept it would): still not this session's
    session = json.loads((mine / "session.json").read_text())
    from peftbench.results.store import sha256
    session["run_files"][copied.name] = sha256(copied)
    (mine / "session.json").write_text(json.dumps(session))
    code, _, err = run_cli(["report", str(mine)], capsys)
    assert code == 2 and f"{copied}: written by another session ({other_id})" in _flat(err)


def test_a_file_of_this_session_written_after_session_json_is_shown_and_named(tmp_path, monkeypatch, capsys):
    folder = _session(tmp_path, monkeypatch)
    session = json.loads((folder / "session.json").read_text())
    del session["run_files"]["full--quickstart--seed0.json"]   # written after session.json last recorded its files
    (folder / "session.json").write_text(json.dumps(session))
    code, out, err = run_cli(["report", str(folder), "--markdown"], capsys)
    assert code == 1, err
    assert "| lora |" in out and "| full |" in out   # this session's own file is shown ...
    assert ("not yet recorded in session.json (written after the session last recorded its files, so no "
            "sha256 proves them; shown above): full--quickstart--seed0") in _flat(out)      # ... and named
    assert "all 5 planned cells have a result" in _flat(out)


# ---- case 2: a damaged run file -------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_a_damaged_or_missing_run_file_names_the_file_and_the_fix(tmp_path, monkeypatch, capsys, damage):
    folder = _session(tmp_path, monkeypatch)
    path = folder / "runs" / "lora--quickstart--seed1.json"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "edit":
        path.write_text(path.read_text().replace('"seed": 1', '"seed": 1 '))
    else:
        path.unlink()
    code, out, err = run_cli(["report", str(folder)], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert str(path) in err and "`peftbench run --resume` re-runs it, or restore the file" in _flat(err)
    assert {"truncate": "sha256 differs", "edit": "sha256 differs",
            "delete": "listed in session.json but missing"}[damage] in _flat(err)


def test_a_truncated_file_of_a_killed_session_names_the_file_and_the_fix(killed_folders, tmp_path, capsys):
    folder = _killed(killed_folders, tmp_path)
    path = folder / "runs" / "full--quickstart--seed0.json"
    path.write_bytes(path.read_bytes()[:100])
    code, out, err = run_cli(["report", str(folder)], capsys)
    assert code == 2 and out == ""
    assert str(path) in err and ("not valid JSON" in err or "sha256 differs" in err)
    assert "`peftbench run --resume` re-runs it" in _flat(err)


def test_every_file_that_does_not_verify_is_named_at_once(tmp_path, monkeypatch, capsys):
    folder = _session(tmp_path, monkeypatch)
    gone, edited = folder / "runs" / "lora--quickstart--seed0.json", folder / "runs" / "full--quickstart--seed1.json"
    gone.unlink()
    edited.write_text(edited.read_text() + " ")
    code, _, err = run_cli(["report", str(folder)], capsys)
    assert code == 2 and f"{folder} does not verify (2 run files)" in err
    assert f"{gone}: listed in session.json but missing" in _flat(err) and f"{edited}: its sha256 differs" in _flat(err)


# ---- case 3: a session that did not finish ----------------------------------------------------------------------
def test_a_killed_session_lists_the_cells_without_a_result_and_exits_1(killed_folders, tmp_path, capsys):
    folder = _killed(killed_folders, tmp_path)
    assert json.loads((folder / "session.json").read_text())["status"] == "running"
    code, out, err = run_cli(["report", str(folder)], capsys)
    assert code == 1, err
    text = _flat(out)
    assert "lora" in out.split(str(folder) + ":")[0]   # the finished rows, in the tables above the listing
    assert (f"{folder}: 2 of 5 planned cells have no finished result; the session did not finish (session.json "
            "says 'running': the process was stopped before it ended, or is still running).") in text
    assert "no result: lora--quickstart--seed1, full--quickstart--seed1" in text
    assert f"`peftbench run --resume --output {folder}` with the session's other flags re-runs" in text


def test_a_killed_session_with_no_finished_cell_says_so(killed_folders, tmp_path, capsys):
    folder = _killed(killed_folders, tmp_path, "base--quickstart--seed0")
    code, out, err = run_cli(["report", str(folder)], capsys)
    assert code == 1 and out.strip() != ""
    assert "5 of 5 planned cells have no finished result (no cell of this session has finished)" in _flat(out)
    assert "no result: " + ", ".join(PLAN) in _flat(out)


def test_an_interrupted_session_lists_its_cancelled_cells(tmp_path, monkeypatch, capsys):
    folder = _session(tmp_path, monkeypatch, stop_at="full--quickstart--seed0")
    assert json.loads((folder / "session.json").read_text())["status"] == "interrupted"
    code, out, err = run_cli(["report", str(folder), "--markdown"], capsys)
    assert code == 1, err
    text = _flat(out)
    assert "3 of 5 planned cells have no finished result" in text and "says 'interrupted'" in text
    assert "- cancelled: full--quickstart--seed0, lora--quickstart--seed1, full--quickstart--seed1" in text


def test_a_failed_cell_of_a_finished_session_exits_1_and_is_listed(tmp_path, monkeypatch, capsys):
    folder = _session(tmp_path, monkeypatch, fail={"full--quickstart--seed1": "oom"})
    code, out, err = run_cli(["report", str(folder)], capsys)
    assert code == 1, err
    text = _flat(out)
    assert "1 of 5 planned cells have no finished result." in text and "did not finish" not in text
    assert "failed: full--quickstart--seed1 (oom: full--quickstart--seed1 broke)" in text


def test_machine_formats_keep_stdout_data_and_say_the_gaps_too(killed_folders, tmp_path, monkeypatch, capsys):
    folder = _killed(killed_folders, tmp_path)
    code, out, err = run_cli(["report", str(folder), "--format", "csv"], capsys)
    assert code == 1 and out.splitlines()[0].startswith("task,method,") and "no result:" in err
    code, out, _ = run_cli(["report", str(folder), "--json"], capsys)     # the raw files, and the gaps
    data = json.loads(out)
    assert code == 1 and data["gaps"][0]["no_result"] == PLAN[3:] and data["gaps"][0]["status"] == "running"
    other = _session(tmp_path, monkeypatch, "b", methods=["adapter"], base_row=False)
    code, out, _ = run_cli(["report", str(folder), str(other), "--format", "json"], capsys)  # merged: export, gaps
    data = json.loads(out)
    assert code == 1 and [g["folder"] for g in data["gaps"]] == [str(folder)]
    assert data["gaps"][0]["no_result"] == PLAN[3:]


def test_claims_say_the_gaps_of_their_folders(killed_folders, tmp_path, capsys):
    folder = _killed(killed_folders, tmp_path)
    code, out, err = run_cli(["claims", str(folder)], capsys)
    assert code in (1, 2) and "Traceback" not in err
    assert "no result: lora--quickstart--seed1, full--quickstart--seed1" in _flat(out + err)


# ---- case 4: --tasks / --methods that name nothing in the folders -----------------------------------------------
@pytest.mark.parametrize(("argv", "needles"), [
    (["--tasks", "bogus"], ["Unknown task 'bogus' (--tasks).", "The folder has: sst2."]),
    (["--tasks", "sst"], ["Unknown task 'sst' (--tasks). Did you mean 'sst2'?"]),
    (["--methods", "lora,bogus"], ["Unknown method 'bogus' (--methods).",
                                   "The folder has: adapter, adapter@pfeiffer, base, full, lora, qlora."]),
    (["--methods", "lorra", "--format", "csv"], ["Did you mean 'lora'"]),
])
def test_report_tasks_and_methods_must_name_what_the_folder_holds(argv, needles, capsys):
    code, out, err = run_cli(["report", str(ROOT / "results/reference/sst2"), *argv], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    for needle in needles:
        assert needle in _flat(err), (needle, err)


def test_tasks_of_several_folders_and_of_planned_cells_are_known(killed_folders, tmp_path, capsys):
    code, _, err = run_cli(["report", *(str(ROOT / "results/reference" / t) for t in ("sst2", "boolq")),
                            "--tasks", "bogus"], capsys)
    assert code == 2 and "The folders have: boolq, sst2." in err
    folder = _killed(killed_folders, tmp_path, "base--quickstart--seed0")
    code, out, _ = run_cli(["report", str(folder), "--tasks", "quickstart"], capsys)   # planned, no result yet
    assert code == 1 and "5 of 5 planned cells have no finished result" in _flat(out)
