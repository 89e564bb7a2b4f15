"""``peftbench run --jobs`` (issue 22): cells in worker processes that claim them from a queue in the output
folder, then the cost phase alone. The workers are real processes (spawned, as on a GPU); their cells are
faked (a short sleep, ``ok``) by the session class they are given, and do what the test asks through
``JOBS_BEHAVE`` (raise, or kill their worker). Every cell logs its start and end (pid, time) to ``JOBS_LOG``."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftbench.session.cell import blank_record
from peftbench.session.runner import Session, SessionConfig
from peftbench.system import topology

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JOBS_LOG", str(tmp_path / "log.jsonl"))
    monkeypatch.setenv("JOBS_BEHAVE", "{}")


# ---- what the workers run (module level: a spawned worker imports it by name) ----------------------------
def _log(**entry) -> None:
    with open(os.environ["JOBS_LOG"], "a") as f:
        f.write(json.dumps({**entry, "pid": os.getpid(), "t": time.time()}) + "\n")


def fake_cell(plan, spec, cache, env):
    from peftbench.api.records import TrainResult

    behave = json.loads(os.environ["JOBS_BEHAVE"])
    _log(key=spec.key, event="start", lr=plan.options_of(spec).train.lr,
         latency_rounds=plan.options_of(spec).latency.rounds)
    what = behave.get(spec.key)
    once = Path(os.environ["JOBS_LOG"]).with_name(f"killed-{spec.key}")
    if what == "raise":
        raise RuntimeError("this cell fails")
    if what == "kill" or (what == "kill_once" and not once.exists()):
        once.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(behave.get("sleep", 0.3)))
    record = blank_record(plan, spec, "ok")
    lr = plan.options_of(spec).train.lr
    acc = 0.9 - 0.1 * abs(math.log10(lr / 1e-3)) if spec.method != "base" else 0.5  # best at lr 1e-3
    record.eval = {"task": spec.task, "metrics": {"acc": acc}, "stderr": {"acc": 0.01}, "n_samples": 10}
    if spec.method != "base":
        record.train = TrainResult(steps=3, tokens=300, examples=12, epochs=0.1, wall_time_s=1.0, tokens_per_s=300.0,
                                   peak_memory_bytes=1, peak_memory_kind="cpu_peak_rss", lr=lr, losses=[(3, 1.0)],
                                   final_loss=1.0)
    record.timings = {"train": 1.0}
    _log(key=spec.key, event="end")
    return record


def fake_cost(session_cls, config, job):
    """The cost phase, faked: it notes when it ran and which of the workers were alive then."""
    workers = [w["pid"] for w in json.loads((job.queue.parent / "jobs.json").read_text())["workers"]]
    _log(event="cost", alive=[p for p in workers if topology_alive(p)], workers=workers)
    sys.exit(0)


def topology_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no one has reaped yet has ended)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


class FakeSession(Session):
    run_cell = staticmethod(fake_cell)
    cost_main = staticmethod(fake_cost)


class RealCostSession(Session):
    run_cell = staticmethod(fake_cell)


# ---- helpers ----------------------------------------------------------------------------------------------
TINY = {"model": "tiny:llama", "device": "cpu"}


def config(out: Path, **more) -> SessionConfig:
    return SessionConfig(**{"methods": ["lora", "full"], "seeds": [0, 1, 2], **TINY, "output": out, **more})


def behave(monkeypatch, **what) -> None:
    monkeypatch.setenv("JOBS_BEHAVE", json.dumps({k.replace("__", "--"): v for k, v in what.items()}))


def log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def starts(tmp_path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in log(tmp_path):
        if e.get("event") == "start":
            out[e["key"]] = out.get(e["key"], 0) + 1
    return out


def runs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def verified(out: Path) -> dict[str, dict]:
    """The run files as the report reads them: each must match the sha256 session.json lists."""
    from peftbench.results.store import load_session, verify_run_files

    check = verify_run_files(out, load_session(out))
    assert not check.unrecorded
    return check.runs


CELLS = ["base--quickstart--seed0"] + [f"{m}--quickstart--seed{s}" for s in range(3) for m in ("lora", "full")]


# ---- every cell once ---------------------------------------------------------------------------------------
def test_every_cell_runs_exactly_once_with_two_jobs_then_the_cost_phase_alone(tmp_path, monkeypatch):
    behave(monkeypatch, sleep=0.6)
    out = tmp_path / "o"
    records = FakeSession(config(out), jobs=2).run()
    assert sorted(r["key"] for r in records) == sorted(CELLS)
    assert starts(tmp_path) == dict.fromkeys(CELLS, 1)
    files = verified(out)
    assert sorted(files) == sorted(CELLS) and all(r["status"] == "ok" for r in files.values())
    session = json.loads((out / "session.json").read_text())
    assert session["status"] == "finished" and len(session["run_files"]) == len(CELLS)
    jobs = json.loads((out / "jobs.json").read_text())
    assert jobs["jobs"] == 2 and {w["exitcode"] for w in jobs["workers"]} == {0}
    pids = {w["pid"] for w in jobs["workers"]}
    assert {e["pid"] for e in log(tmp_path) if e.get("event") == "start"} == pids  # both workers took cells
    lora = files["lora--quickstart--seed1"]
    assert lora["env"]["jobs"]["jobs"] == 2 and lora["env"]["jobs"]["pid"] in pids
    assert lora["config"]["train"]["latency_rounds"] > 0  # the session's options, as planned ...
    assert {e["latency_rounds"] for e in log(tmp_path) if e.get("event") == "start"} == {0}  # ... timed later
    # the cost phase ran once, after every cell had ended and every worker had exited
    cost = [e for e in log(tmp_path) if e.get("event") == "cost"]
    assert len(cost) == 1 and sorted(cost[0]["workers"]) == sorted(pids) and cost[0]["alive"] == []
    assert cost[0]["t"] > max(e["t"] for e in log(tmp_path) if e.get("event") == "end")
    assert cost[0]["t"] > max(w["ended_unix"] for w in jobs["workers"])
    assert cost[0]["pid"] == jobs["cost_phase"]["pid"] not in pids and jobs["cost_phase"]["workers_alive"] == []
    # the training split was tokenized once, by the parent, before any worker started
    [tokens] = (tmp_path / "cache" / "tokens").glob("peftbench_quickstart-*.pt")
    assert tokens.stat().st_mtime < min(w["started_unix"] for w in jobs["workers"])
    # continued with nothing left to run: no worker starts, the cost phase runs again (it keeps what is done)
    FakeSession(config(out, resume=True), jobs=2).run()
    assert starts(tmp_path) == dict.fromkeys(CELLS, 1)
    assert len([e for e in log(tmp_path) if e.get("event") == "cost"]) == 2
    assert json.loads((out / "jobs.json").read_text())["workers"] == []


def test_jobs_1_is_the_one_process_session(tmp_path, monkeypatch):
    out = tmp_path / "o"
    FakeSession(config(out, seeds=[0]), jobs=1).run()
    assert {e["pid"] for e in log(tmp_path)} == {os.getpid()}
    assert not (out / "jobs.json").exists() and not (out / ".jobs").exists()
    assert "jobs" not in runs(out)["lora--quickstart--seed0"]["env"]


# ---- failures lose nothing else ------------------------------------------------------------------------------
def test_a_cell_that_raises_or_whose_worker_is_killed_loses_nothing_else(tmp_path, monkeypatch):
    behave(monkeypatch, lora__quickstart__seed0="raise", full__quickstart__seed0="kill_once",
           lora__quickstart__seed1="kill")
    out = tmp_path / "o"
    FakeSession(config(out), jobs=2).run()
    files = verified(out)
    assert sorted(files) == sorted(CELLS)
    status = {k: r["status"] for k, r in files.items()}
    assert status.pop("lora--quickstart--seed0") == "error"
    assert files["lora--quickstart--seed0"]["error"]["message"] == "this cell fails"
    died = files["lora--quickstart--seed1"]   # killed each time: queued once more, then failed
    assert status.pop("lora--quickstart--seed1") == "error" and died["error"]["type"] == "WorkerDied"
    assert "SIGKILL" in died["error"]["message"]
    assert set(status.values()) == {"ok"}  # the killed-once cell ran again and finished
    ran = starts(tmp_path)
    assert ran.pop("full--quickstart--seed0") == 2 and ran.pop("lora--quickstart--seed1") == 2
    assert set(ran.values()) == {1}
    jobs = json.loads((out / "jobs.json").read_text())
    assert [e["cell"] for e in jobs["lost"]].count("lora--quickstart--seed1") == 2
    assert json.loads((out / "session.json").read_text())["status"] == "finished"


# ---- a killed parent, then --resume ---------------------------------------------------------------------------
PARENT = """
import sys
from pathlib import Path
sys.path.insert(0, {here!r})
from test_jobs import FakeSession, config
if __name__ == "__main__":
    FakeSession(config(Path({out!r})), jobs=2).run()
"""


def test_resume_after_a_killed_parent_keeps_what_finished(tmp_path, monkeypatch):
    behave(monkeypatch, sleep=1.0)
    out = tmp_path / "o"
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(here=str(HERE), out=str(out)))
    parent = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
        time.sleep(0.2)
    parent.kill()
    parent.wait()
    workers = {e["pid"] for e in log(tmp_path)}
    assert len(workers) == 2
    deadline = time.time() + 20
    while time.time() < deadline and any(topology_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(topology_alive(p) for p in workers)  # the workers ended with their parent
    before = {k for k, r in runs(out).items() if r["status"] == "ok"}
    assert 2 <= len(before) < len(CELLS)
    ran_before = starts(tmp_path)

    FakeSession(config(out, resume=True), jobs=2).run()
    files = verified(out)
    assert sorted(files) == sorted(CELLS) and {r["status"] for r in files.values()} == {"ok"}
    again = {k: n - ran_before.get(k, 0) for k, n in starts(tmp_path).items()}
    assert all(again.get(k, 0) == 0 for k in before)  # what finished before the kill is kept
    assert all(again.get(k, 0) == 1 for k in CELLS if k not in before)
    assert json.loads((out / "session.json").read_text())["status"] == "finished"


def test_sigterm_stops_every_worker_and_marks_the_cells_left_cancelled(tmp_path, monkeypatch):
    behave(monkeypatch, sleep=1.0)
    out = tmp_path / "o"
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(here=str(HERE), out=str(out)))
    parent = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)  # as Ctrl-C
    assert parent.wait(timeout=60) == 0
    assert not any(topology_alive(p) for p in {e["pid"] for e in log(tmp_path)})
    files = verified(out)
    assert sorted(files) == sorted(CELLS)  # every cell has its file: finished, or cancelled for --resume
    status = {r["status"] for r in files.values()}
    assert status == {"ok", "cancelled"}
    assert json.loads((out / "session.json").read_text())["status"] == "interrupted"
    assert not (out / "cost").exists()  # no cost phase for an interrupted session: --resume runs it


# ---- the cost phase -------------------------------------------------------------------------------------------
@pytest.mark.slow  # real cells' costs on tiny:llama, or two sessions
def test_the_real_cost_phase_times_each_method_alone_and_the_report_reads_it(tmp_path, monkeypatch):
    from peftbench.report.folders import folder_data
    from peftbench.report.leaderboard import rows_for_task

    out = tmp_path / "o"
    grid = ["latency_rounds=1", "latency_new_tokens=2", "latency_prompt_lengths=8", "steps=3"]
    RealCostSession(config(out, methods=["lora"], seeds=[0, 1], sets=grid), jobs=2).run()
    jobs = json.loads((out / "jobs.json").read_text())
    cost = json.loads((out / "cost" / "lora--quickstart.json").read_text())
    assert cost["status"] == "ok", cost.get("errors")
    assert cost["started_unix"] > max(w["ended_unix"] for w in jobs["workers"])
    assert cost["pid"] == jobs["cost_phase"]["pid"]
    assert cost["train"]["steps"] == 3 and cost["train"]["tokens_per_s"] > 0  # as many steps as the cell trained
    assert cost["latency"]["regimes"]["eager"] and "host_others_cores" in cost["latency"]
    assert sorted(p.name for p in (out / "cost").iterdir()) == ["lora--quickstart.json"]  # methods only, once
    data = folder_data(out)
    lora = [r for r in data["runs"] if r["method"] == "lora"]
    assert {r["train"]["tokens_per_s"] for r in lora} == {cost["train"]["tokens_per_s"]}
    assert {r["train"]["tokens_per_s_beside_others"] for r in lora} == {300.0}
    assert sorted(r["latency"]["measured_in"] for r in lora) == ["cost/lora--quickstart.json",
                                                                 "lora--quickstart--seed0"]
    row = next(r for r in rows_for_task(data["runs"], "quickstart") if r["method"] == "lora")
    assert row["tokens_per_s"] == pytest.approx(cost["train"]["tokens_per_s"])
    assert row["costs_alone"]  # the leaderboard says tok/s and latency were measured alone
    assert row["latency_unmerged"] is not None


@pytest.mark.slow  # two sessions, one per shard
def test_shards_each_run_their_share_with_jobs(tmp_path, monkeypatch):
    out = tmp_path / "o"
    for k in (0, 1):
        FakeSession(config(out, seeds=[0, 1], shard=(k, 2)), jobs=2).run()
        assert (out / f"jobs-shard{k + 1}of2.json").is_file() and (out / f".jobs-shard{k + 1}of2").is_dir()
    cells = ["base--quickstart--seed0"] + [f"{m}--quickstart--seed{s}" for s in range(2) for m in ("lora", "full")]
    assert starts(tmp_path) == dict.fromkeys(cells, 1)
    assert sorted(verified(out)) == sorted(cells)
    assert json.loads((out / "session.json").read_text())["status"] == "finished"


# ---- tuning: the finals wait for their grid ------------------------------------------------------------------
def test_tuned_finals_start_only_after_their_grid_is_done(tmp_path, monkeypatch):
    behave(monkeypatch, sleep=0.3)
    out = tmp_path / "o"
    FakeSession(config(out, seeds=[0, 1], tune=["lr"], grid=["lr=1e-4,1e-3,1e-2"], base_row=False), jobs=2).run()
    files = verified(out)
    events = log(tmp_path)
    for method in ("lora", "full"):
        grid_end = max(e["t"] for e in events if e.get("event") == "end" and e["key"].startswith(f"{method}--")
                       and "--lr=" in e["key"])
        finals = [e for e in events if e.get("event") == "start" and e["key"].startswith(f"{method}--")
                  and "--lr=" not in e["key"]]
        assert len(finals) == 2 and min(e["t"] for e in finals) > grid_end
        assert {e["lr"] for e in finals} == {1e-3}  # the grid's best
        for seed in (0, 1):
            assert files[f"{method}--quickstart--seed{seed}"]["tuning"]["values"] == {"lr": 1e-3}
    assert set(starts(tmp_path).values()) == {1}


# ---- where workers go -----------------------------------------------------------------------------------------
SMI = """0, GPU-aaaa, 00000000:18:00.0, 143771, 140000
1, GPU-bbbb, 00000000:2A:00.0, 143771, 100000
2, GPU-cccc, 00000000:9A:00.0, 143771, 143000
"""


@pytest.fixture
def sysfs(tmp_path):
    for bus, cpus in (("0000:18:00.0", "0-7,64-71"), ("0000:2a:00.0", "0-7,64-71"), ("0000:9a:00.0", "32-39")):
        (tmp_path / "pci" / bus).mkdir(parents=True)
        (tmp_path / "pci" / bus / "local_cpulist").write_text(cpus + "\n")
    return tmp_path / "pci"


def test_gpus_are_found_with_their_numa_cpus_and_cuda_visible_devices_order(sysfs):
    allowed = set(range(0, 8)) | set(range(64, 72)) | set(range(32, 40))
    gpus = topology.visible_gpus(lambda: SMI, env={}, devices=sysfs, allowed=allowed)
    assert [g.uuid for g in gpus] == ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]
    assert gpus[1].pci_bus_id == "0000:2a:00.0" and gpus[1].free_bytes == 100000 * 1024**2
    assert gpus[0].cpus == (*range(0, 8), *range(64, 72)) and gpus[2].cpus == tuple(range(32, 40))
    chosen = topology.visible_gpus(lambda: SMI, env={"CUDA_VISIBLE_DEVICES": "2,GPU-aa"}, devices=sysfs,
                                   allowed=allowed)
    assert [g.index for g in chosen] == [2, 0]
    # a CPU set the container does not allow, an unknown entry, no nvidia-smi: nothing is guessed
    assert topology.visible_gpus(lambda: SMI, env={}, devices=sysfs, allowed={100})[0].cpus is None
    assert topology.visible_gpus(lambda: SMI, env={"CUDA_VISIBLE_DEVICES": "MIG-1"}, devices=sysfs) is None
    assert topology.visible_gpus(lambda: None, env={}) is None


def test_workers_are_placed_round_robin_and_pinned_to_their_gpus_node(sysfs):
    allowed = set(range(0, 8)) | set(range(64, 72)) | set(range(32, 40))
    gpus = topology.visible_gpus(lambda: SMI, env={}, devices=sysfs, allowed=allowed)
    places = topology.place_workers(6, "cuda", gpus, allowed)
    assert [p.gpu_index for p in places] == [0, 1, 2, 0, 1, 2]
    assert [p.cuda_visible for p in places[:3]] == ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]
    assert places[0].cpus == gpus[0].cpus and places[2].cpus == tuple(range(32, 40))
    assert places[0].threads == 16 // 4 and places[2].threads == 8 // 2  # GPUs 0 and 1 share one node
    assert "NUMA" in places[0].how and places[0].describe()["cpus"] == "0-7,64-71"
    unknown = topology.place_workers(2, "cuda", None, allowed)
    assert {p.cuda_visible for p in unknown} == {None} and "not pinned" in unknown[0].how
    cpu = topology.place_workers(2, "cpu", None, {0, 1, 2, 3})
    assert [p.cpus for p in cpu] == [(0, 1), (2, 3)] and [p.threads for p in cpu] == [2, 2]


def test_a_hub_models_size_is_counted_from_its_cached_config(monkeypatch):
    import types

    import transformers

    from peftbench.models.shape import shape_config
    from peftbench.session.jobs import weight_bytes

    config = types.SimpleNamespace(to_dict=lambda: shape_config("smollm2-135m"))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: config)
    hub = types.SimpleNamespace(info=types.SimpleNamespace(parameters=None, kind="hub"), path="org/name")
    assert weight_bytes(hub) == 2 * 134_515_008
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: 1 / 0)  # not in the cache
    assert weight_bytes(hub) is None  # unknown: auto runs one cell at a time


def test_auto_jobs_is_conservative():
    gib = 1024**3
    big = [topology.Gpu(i, f"GPU-{i}", None, 140 * gib, 140 * gib, tuple(range(16 * i, 16 * i + 16))) for i in range(2)]
    assert topology.auto_jobs("cpu", None, 10, 64)[0] == 1
    assert topology.auto_jobs("cuda", None, 10, 64)[0] == 1          # GPUs not listed
    assert topology.auto_jobs("cuda", big, None, 64)[0] == 1          # size unknown
    assert topology.auto_jobs("cuda", big, 3 * gib, 64)[0] == 2       # a large model: one cell per GPU
    n, why = topology.auto_jobs("cuda", big, 270 * 1024**2, 64)       # SmolLM2-135M in bf16
    assert n == 8 and "4+4" in why                                   # capped at 4 per GPU
    small_free = [topology.Gpu(0, "GPU-0", None, 80 * gib, 12 * gib, tuple(range(16)))]
    assert topology.auto_jobs("cuda", small_free, 270 * 1024**2, 64)[0] == 1  # 6 GiB of 12 free, ~5 GiB a cell
    few_cpus = [topology.Gpu(0, "GPU-0", None, 140 * gib, 140 * gib, (0, 1, 2, 3))]
    assert topology.auto_jobs("cuda", few_cpus, 270 * 1024**2, 4)[0] == 2      # 2 CPUs per cell
    from peftbench.models.sources import resolve_model
    from peftbench.session.jobs import weight_bytes

    assert weight_bytes(resolve_model("shape:smollm2-135m")) == 2 * 134_515_008  # SmolLM2-135M's published count
    assert weight_bytes(resolve_model("shape:llama-3.1-8b")) >= topology.SMALL_MODEL_BYTES  # one cell per GPU
    assert topology.parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert topology.cpu_list_text((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    assert topology.sysfs_bus_id("00000000:9A:00.0") == "0000:9a:00.0"


def test_bad_jobs_flag_is_a_usage_error(capsys, tmp_path):
    from peftbench.testing import run_cli

    code, _, err = run_cli(["run", "--methods", "lora", "--model", "tiny:llama", "--device", "cpu", "--jobs", "0",
                            "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "--jobs '0'" in err and "Traceback" not in err
