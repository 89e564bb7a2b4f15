"""Fault injection on the run side of a session folder (issue 20): tampered, truncated, damaged and copied-in run
files on --resume, a changed plan, --resume on nothing, names that would escape the folder, a full disk, SIGTERM,
two writers at once and the temp files interrupted writes leave. Cells are faked (instant, ``ok``) unless a test
needs more; the session, its files and the command line are the real ones."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from fakes import fake_cells

from peftbench.system.files import sha256
from peftbench.testing import run_cli

TINY = ["--model", "tiny:llama", "--device", "cpu"]
CELLS = ["base--quickstart--seed0", "lora--quickstart--seed0", "full--quickstart--seed0"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def ran(monkeypatch):
    """Session.run_cell replaced by an instant ok cell (its training 'took' 1 s); the keys run, in order."""
    return fake_cells(monkeypatch)


def args(out: Path, *more: str) -> list[str]:
    return ["run", "--methods", "lora,full", *TINY, "--output", str(out), *more]


def session_json(out: Path) -> dict:
    return json.loads((out / "session.json").read_text())


def run_file(out: Path, key: str) -> Path:
    return out / "runs" / f"{key}.json"


def first_run(out: Path, capsys, *more: str) -> None:
    code, _, err = run_cli(args(out, *more), capsys)
    assert code == 0, err


# ---- 1. --resume keeps only run files that prove themselves ----------------------------------------------

def _edit(path: Path, out: Path) -> None:    # one number changed, as in the issue (acc 0.25 -> 0.95)
    path.write_text(path.read_text().replace('"train": 1.0', '"train": 9.5'))


def _truncate(path: Path, out: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _damaged_but_rehashed(path: Path, out: Path) -> None:  # session.json laundered too (what resume used to do)
    path.write_text("{not json")
    record = session_json(out)
    record["run_files"][path.name] = sha256(path)
    (out / "session.json").write_text(json.dumps(record))


def _other_config_rehashed(path: Path, out: Path) -> None:
    data = json.loads(path.read_text())
    data["config"]["train"]["steps"] = 999
    path.write_text(json.dumps(data))
    record = session_json(out)
    record["run_files"][path.name] = sha256(path)
    (out / "session.json").write_text(json.dumps(record))


def _not_listed(path: Path, out: Path) -> None:   # a file copied in, or written after the last record
    record = session_json(out)
    del record["run_files"][path.name]
    (out / "session.json").write_text(json.dumps(record))


@pytest.mark.parametrize(("spoil", "why"), [
    (_edit, "sha256 differs from the one session.json recorded"),
    (_truncate, "sha256 differs from the one session.json recorded"),
    (_damaged_but_rehashed, "not valid JSON"),
    (_other_config_rehashed, "does not hold what the plan gives this cell (it differs in config)"),
    (_not_listed, "not listed in session.json"),
])
def test_resume_reruns_a_run_file_that_does_not_prove_itself(spoil, why, ran, capsys, tmp_path):
    from peftbench.results.store import load_session, verify_run_files

    out = tmp_path / "s"
    first_run(out, capsys)
    lora = run_file(out, "lora--quickstart--seed0")
    spoil(lora, out)
    spoiled = lora.read_bytes()
    ran.clear()
    code, _, err = run_cli(args(out, "--resume"), capsys)
    assert code == 0, err
    flat = " ".join(err.split())
    assert f"{lora} is not kept" in flat and why in flat and "its cell runs again" in flat, flat
    assert ran == ["lora--quickstart--seed0"]                      # only the spoiled cell ran again
    assert (out / "runs" / ".rejected" / lora.name).read_bytes() == spoiled   # set aside, not destroyed
    assert json.loads(lora.read_text())["timings"]["train"] == 1.0
    session = load_session(out)
    assert session["run_files"][lora.name] == sha256(lora) and session["status"] == "finished"
    verify_run_files(out, session)                                 # the folder proves itself again
    assert "lora--quickstart--seed0 (kept" not in flat and "full--quickstart--seed0 (kept" in flat


def test_a_kept_file_keeps_the_hash_recorded_when_it_was_written(ran, capsys, tmp_path):
    out = tmp_path / "s"
    first_run(out, capsys)
    before = session_json(out)["run_files"]
    ran.clear()
    code, _, err = run_cli(args(out, "--resume"), capsys)
    assert code == 0 and ran == [] and "not kept" not in err
    assert session_json(out)["run_files"] == before


# ---- 2. a changed plan is refused ----------------------------------------------------------------------

@pytest.mark.parametrize(("first", "second", "needles"), [
    (["--set", "steps=20"], ["--set", "steps=25"], ["training options of lora on quickstart: steps 20 -> 25"]),
    (["--set", "lora.r=16"], ["--set", "lora.r=4"], ["options of lora: r 16 -> 4"]),
    (["--seeds", "0,1"], ["--seeds", "0"], ["cells of the earlier plan left out: lora--quickstart--seed1"]),
])
def test_resume_refuses_a_changed_plan(first, second, needles, ran, capsys, tmp_path):
    out = tmp_path / "s"
    first_run(out, capsys, *first)
    before = {p.name: p.read_bytes() for p in [out / "session.json", *(out / "runs").glob("*.json")]}
    ran.clear()
    code, _, err = run_cli(args(out, "--resume", *second), capsys)
    flat = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert f"--resume: {out} was run with another plan" in flat and "--restart" in flat
    for n in needles:
        assert n in flat, (n, flat)
    assert ran == []
    assert {p.name: p.read_bytes() for p in [out / "session.json", *(out / "runs").glob("*.json")]} == before


def test_resume_may_add_cells_and_restart_starts_over(ran, capsys, tmp_path):
    out = tmp_path / "s"
    first_run(out, capsys, "--set", "steps=20")
    ran.clear()
    code, _, err = run_cli(args(out, "--resume", "--set", "steps=20", "--seeds", "0,1"), capsys)
    assert code == 0, err
    assert ran == ["lora--quickstart--seed1", "full--quickstart--seed1"]   # the earlier cells are kept
    old_id = session_json(out)["session_id"]
    ran.clear()
    code, _, err = run_cli(args(out, "--restart", "--set", "steps=25"), capsys)
    assert code == 0, err
    assert ran == CELLS                                                   # nothing kept
    session = session_json(out)
    assert session["session_id"] != old_id and set(session["run_files"]) == {f"{k}.json" for k in CELLS}
    assert json.loads(run_file(out, "lora--quickstart--seed0").read_text())["config"]["train"]["steps"] == 25
    aside = next((out / ".restarted").iterdir())                          # the earlier session, moved aside
    assert aside.name.startswith(old_id) and json.loads((aside / "session.json").read_text())["session_id"] == old_id
    assert len(list((aside / "runs").glob("*.json"))) == 5
    code, _, err = run_cli(args(out, "--restart", "--resume"), capsys)
    assert code == 2 and "choose one" in err


# ---- 3. --resume on nothing, an empty --output -----------------------------------------------------------

@pytest.mark.parametrize(("prepare", "needle"), [
    (lambda out: None, "does not exist, so there is no session to resume"),
    (lambda out: out.mkdir(), "holds no peftbench session (no session.json)"),
    (lambda out: (out / "runs").mkdir(parents=True) or (out / "runs" / "x.json").write_text("{}"),
     "holds run files but no session.json"),
])
def test_resume_on_a_folder_without_a_session_is_refused(prepare, needle, ran, capsys, tmp_path):
    out = tmp_path / "s"
    prepare(out)
    code, _, err = run_cli(args(out, "--resume"), capsys)
    assert code == 2 and needle in " ".join(err.split()) and "Traceback" not in err, err
    assert ran == [] and not (out / "session.json").exists()


def test_an_empty_output_or_resume_without_output_is_refused(ran, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--output", ""], capsys)
    assert code == 2 and "--output is empty" in err
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--resume"], capsys)
    assert code == 2 and "--resume needs --output" in err
    assert ran == [] and not (tmp_path / "session.json").exists() and not (tmp_path / "peftbench-results").exists()


# ---- 4. names that become file names stay inside their folders ------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("name", "../../../x/ESC"), ("name", ".hidden"), ("name", "a--b"), ("version", "../../1"),
    ("lm_eval", "../../x/ESC"),
])
def test_a_task_name_that_would_escape_the_folder_is_refused(field, value, ran, capsys, tmp_path):
    """Whether the task file's own checks (peftbench.tasks) or the plan's (check_names) catch it first, the run
    exits 2 naming the file, the key and the value, and writes nothing anywhere."""
    tasks = tmp_path / "tasks"
    shutil.copytree(Path(__file__).resolve().parents[1] / "tasks" / "quickstart", tasks / "esc")
    name = value if field == "name" else "esc"
    text = (tasks / "esc" / "task.yaml").read_text().replace("name: quickstart", f"name: {json.dumps(name)}")
    if field == "version":
        text = text.replace("version: 1", f"version: {json.dumps(value)}")
    (tasks / "esc" / "task.yaml").write_text(text)
    if field == "lm_eval":
        lm = tasks / "esc" / "lm_eval.yaml"
        lm.write_text(lm.read_text().replace("task: peftbench_quickstart", f"task: {json.dumps(value)}"))
    out = tmp_path / "deep" / "er" / "s"
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--tasks", name, "--tasks-dir", str(tasks),
                            "--output", str(out)], capsys)
    flat = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    where = tasks / "esc" / ("lm_eval.yaml" if field == "lm_eval" else "task.yaml")
    assert f"Task file {where}: {field if field != 'lm_eval' else 'task'} {value!r}" in flat, flat
    assert ran == [] and not out.exists() and not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()
    assert not (tmp_path / "cache" / "data").exists() or not any((tmp_path / "cache" / "data").iterdir())


def test_the_plan_checks_every_name_that_becomes_a_file_name(tmp_path):
    """The plan's own check, for tasks that did not come through a task file's checks (a plugin's Task object)
    and for method names a plugin registered."""
    import dataclasses

    from peftbench.errors import UsageError
    from peftbench.session.plan import check_names
    from peftbench.tasks.task import builtin_tasks_dir, discover_tasks

    task = discover_tasks([builtin_tasks_dir()])["quickstart"]
    check_names(["lora", "adapter@pf"], [task])
    for change, needle in ((dict(name="../../x/ESC"), f"Task file {task.folder / 'task.yaml'}: name '../../x/ESC'"),
                           (dict(version="../1"), "version '../1' cannot name a file or folder"),
                           (dict(lm_eval_name="a/b"), f"Task file {task.lm_eval_file}: task 'a/b'")):
        with pytest.raises(UsageError, match="cannot name a file or folder") as e:
            check_names(["lora"], [dataclasses.replace(task, **change)])
        assert needle in str(e.value)
    with pytest.raises(UsageError, match="method '../evil' cannot name a run file"):
        check_names(["../evil"], [task])


def test_unsafe_names():
    from peftbench.system.files import unsafe_name

    for ok in ("quickstart", "sst2", "adapter@pf", "lora@r64", "my_task-2", "v1.2"):
        assert unsafe_name(ok) is None, ok
    for bad in ("../x", "a/b", ".x", "-x", "a..b", "a--b", "", "a b", "x\\y"):
        assert unsafe_name(bad), bad


# ---- 5. a full disk ------------------------------------------------------------------------------------

def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("transient", [False, True])
def test_a_full_disk_on_a_run_file_keeps_everything_written_and_stops_cleanly(transient, ran, capsys, tmp_path,
                                                                             monkeypatch):
    import peftbench.session.runner as runner

    real, failures = runner.write_run, []

    def write_run(output, key, data):
        if key == "lora--quickstart--seed0" and (not transient or not failures):
            failures.append(key)
            raise _enospc(output / "runs" / f"{key}.json")
        return real(output, key, data)

    monkeypatch.setattr(runner, "write_run", write_run)
    out = tmp_path / "s"
    code, _, err = run_cli(args(out), capsys)
    flat = " ".join(err.split())
    assert code == 1 and "Traceback" not in err, err
    assert "No space left on device" in flat and "the session stopped" in flat and "--resume" in flat
    assert ran == CELLS[:2]                            # nothing started after the failed write
    session = session_json(out)
    assert session["status"] == "interrupted"
    base = run_file(out, "base--quickstart--seed0")
    assert session["run_files"][base.name] == sha256(base)   # what finished before is kept and listed
    full = json.loads(run_file(out, "full--quickstart--seed0").read_text())
    assert full["status"] == "cancelled"               # what did not run is recorded
    lora = run_file(out, "lora--quickstart--seed0")
    if transient:                                      # written on the second try: the finished cell is not lost
        assert json.loads(lora.read_text())["status"] == "ok" and session["run_files"][lora.name] == sha256(lora)
    else:
        assert not lora.exists() and "lora--quickstart--seed0 finished but its run file could not be written" in flat
    monkeypatch.setattr(runner, "write_run", real)     # space freed: --resume runs what is missing, keeps the rest
    ran.clear()
    code, _, err = run_cli(args(out, "--resume"), capsys)
    assert code == 0, err
    assert ran == ([] if transient else ["lora--quickstart--seed0"]) + ["full--quickstart--seed0"]


def test_a_full_disk_on_session_json_stops_cleanly_and_resume_recovers(ran, capsys, tmp_path, monkeypatch):
    import peftbench.session.folder as folder

    real, calls = folder.write_json, []

    def write_json(path, data):
        if Path(path).name == "session.json":
            calls.append(path)
            if len(calls) > 2:                         # the start and the base cell's record, then a full disk
                raise _enospc(path)
        return real(path, data)

    monkeypatch.setattr(folder, "write_json", write_json)
    out = tmp_path / "s"
    code, _, err = run_cli(args(out), capsys)
    flat = " ".join(err.split())
    assert code == 1 and "Traceback" not in err and "No space left on device" in flat, err
    assert ran == CELLS[:2]
    assert set(session_json(out)["run_files"]) == {"base--quickstart--seed0.json"}
    monkeypatch.setattr(folder, "write_json", real)
    ran.clear()
    code, _, err = run_cli(args(out, "--resume"), capsys)
    assert code == 0, err
    assert "lora--quickstart--seed0.json is not kept" in " ".join(err.split())   # written, but never recorded
    assert ran == CELLS[1:] and session_json(out)["status"] == "finished"


# ---- 6. SIGTERM is Ctrl-C --------------------------------------------------------------------------------

def test_sigterm_writes_the_remaining_cells_as_cancelled(capsys, tmp_path, monkeypatch):
    from peftbench.session.cell import blank_record
    from peftbench.session.runner import Session

    ran = []

    def fake_cell(plan, spec, cache, env):
        ran.append(spec.key)
        if spec.method == "lora":
            os.kill(os.getpid(), signal.SIGTERM)       # the job's time limit, mid-cell
        return blank_record(plan, spec, "ok")

    monkeypatch.setattr(Session, "run_cell", staticmethod(fake_cell))
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "s"
    code, _, err = run_cli(args(out), capsys)
    assert code == 1 and "Traceback" not in err, err
    assert ran == CELLS[:2]
    assert session_json(out)["status"] == "interrupted"
    status = {k: json.loads(run_file(out, k).read_text())["status"] for k in CELLS}
    assert status == {CELLS[0]: "ok", CELLS[1]: "cancelled", CELLS[2]: "cancelled"}
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the session's only while it runs


# ---- 7. one writer per folder (the shards of one session together) --------------------------------------

def _writer_file(out: Path, pid: int, shard=None) -> None:
    import socket

    out.mkdir(parents=True, exist_ok=True)
    (out / ".peftbench-writer").write_text(json.dumps([{"pid": pid, "host": socket.gethostname(), "shard": shard,
                                                        "since": "2025-01-01T00:00:00+00:00"}]))


def test_a_second_writer_is_refused_naming_the_live_one(ran, capsys, tmp_path):
    out = tmp_path / "s"
    other = subprocess.Popen(["sleep", "60"])
    try:
        _writer_file(out, other.pid)
        code, _, err = run_cli(args(out), capsys)
        flat = " ".join(err.split())
        assert code == 2 and f"is being written by another peftbench process (pid {other.pid}" in flat, err
        assert ran == [] and not (out / "session.json").exists()
        code, _, err = run_cli(args(out, "--shard", "1/2"), capsys)   # a shard beside a whole session: refused
        assert code == 2 and "give every process --shard K/N" in " ".join(err.split())
        _writer_file(out, other.pid, shard=[1, 2])                    # shards of one session work together
        code, _, err = run_cli(args(out, "--shard", "1/2"), capsys)
        assert code == 0, err
        assert [w["pid"] for w in json.loads((out / ".peftbench-writer").read_text())] == [other.pid]
    finally:
        other.kill()
        other.wait()


def test_a_writer_that_has_ended_is_taken_over(ran, capsys, tmp_path):
    out = tmp_path / "s"
    gone = subprocess.Popen(["true"])
    gone.wait()
    _writer_file(out, gone.pid)
    code, _, err = run_cli(args(out), capsys)
    assert code == 0, err
    assert f"pid {gone.pid} was writing this folder and has ended" in " ".join(err.split())
    assert ran == CELLS and not (out / ".peftbench-writer").exists()   # released when the session ends


# ---- 8. temp files of interrupted atomic writes ------------------------------------------------------------

def test_continuing_a_folder_removes_the_temp_files_interrupted_writes_left(ran, capsys, tmp_path):
    out = tmp_path / "s"
    first_run(out, capsys)
    left = [out / "runs" / ".lora--quickstart--seed0.json.k3_x9q2z.tmp", out / ".session.json.abcd1234.tmp"]
    others = [out / "runs" / "notes.tmp", out / ".keep.tmp", out / "runs" / ".x.json.TOOLONG123.tmp"]
    for p in [*left, *others]:
        p.write_text("{")
    code, _, err = run_cli(args(out, "--resume"), capsys)
    assert code == 0, err
    assert "removed 2 temp file(s) interrupted writes left" in " ".join(err.split())
    assert not any(p.exists() for p in left) and all(p.exists() for p in others)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_a_host_allocation_failure_is_recorded_as_oom(tmp_path, error):
    """An allocation failure on the CPU is an out-of-memory cell (status oom), not a generic error."""
    from peftbench import hookimpl
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.session.runner import Session, SessionConfig

    class Starved:
        @hookimpl(tryfirst=True)
        def train_model(self, run, prepared, train_data):
            raise error

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(Starved(), name="starved")
    (res,) = Session(SessionConfig(methods=["lora"], model="tiny:llama", device="cpu", output=tmp_path / "o",
                                   cache_dir=tmp_path / "c", base_row=False,
                                   sets=["steps=1", "batch_size=2", "limit=4", "latency_rounds=0"]), host=host).run()
    assert res["status"] == "oom" and res["error"]["type"] == type(error).__name__


def test_a_resumed_base_rows_retention_scores_serve_the_next_cells():
    """A continued session reuses the kept base row's retention scores (read back from its run file) as the
    baseline of the cells it still runs: the delta against base is computed, not an error."""
    import dataclasses
    import types

    from peftbench.session.cache import CellCache
    from peftbench.session.scores import score_retention

    @dataclasses.dataclass
    class Run:  # what score_retention reads of a RunContext
        method: object
        task: object
        hook: object

    base_run = {"method": "base", "status": "ok", "retention": {
        "piqa": {"metric": "acc", "score": 0.6, "stderr": 0.01, "n_samples": 10, "eval": {}}}}
    cache = CellCache.from_runs([base_run])
    task = types.SimpleNamespace(name="piqa", metric="acc")
    scored = {"metrics": {"acc": 0.65}, "stderr": {"acc": 0.02}, "n_samples": 10}
    hook = types.SimpleNamespace(evaluate_model=lambda run, model, tokenizer: scored)
    out = score_retention(Run(object(), task, hook), [task], None, None, cache.base_retention)
    assert out["piqa"].base == 0.6 and out["piqa"].base_stderr == 0.01
    assert out["piqa"].delta == pytest.approx(0.05)
