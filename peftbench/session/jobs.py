"""``peftbench run --jobs N``: several cells at once, in worker processes that take cells from a queue in the
output folder, then the cost phase alone.

The parent plans, prepares the folder and writes ``session.json``; then it starts N workers (fresh
processes: a child forked after CUDA was touched could not use it), each pinned to its place
(``system.topology``: a GPU and that GPU's NUMA-node CPUs). A worker plans the same session again, and claims
the next cell by creating ``<queue>/claims/<key>`` (exclusive: every cell runs once, whatever the cells'
lengths); a tuned method's final seeds are claimed only once its grid cells are done. A worker writes each
run file and adds its sha256 to ``session.json`` (under the folder's lock) at once, then marks the cell done.

A worker that dies (killed, out of memory) loses its current cell only: the parent queues it once more, and
records it as failed the second time; nothing finished is lost, and a fresh worker takes the dead one's place.
Ctrl-C or SIGTERM stops every worker and marks the cells left cancelled; ``--resume`` keeps the finished cells
and clears the claims of the workers that are gone. Cells measured beside other cells do not time their own
latency (``latency_rounds=0`` for the cell; the run file keeps the session's options) and record the workers
beside them (``env.jobs``); the cost phase then measures every method's latency and training throughput
with the device to itself (``session.cost``). ``jobs.json`` records where each worker ran, and when.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.api.records import RunSpec
from peftbench.results.record import ErrorInfo
from peftbench.results.store import run_json
from peftbench.session.folder import WriteFailed, folder_lock, now
from peftbench.session.options import CellOptions
from peftbench.session.policies import BUDGET_REASON, CellBudget, shard_share
from peftbench.session.process import die_with_parent, free_memory, pin, sigterm_as_interrupt
from peftbench.session.tuning import awaits_choice, choose_for, grid_cells, resolved
from peftbench.system.files import write_json
from peftbench.system.topology import WorkerPlace

POLL_S = 0.3            # how often a waiting worker and the parent look at the queue
STOP_GRACE_S = 30.0     # how long stopped workers get to end before they are killed
LOST_TWICE = 2          # a cell whose worker died this many times is recorded as failed
JOBS_LOG = "jobs.json"


@dataclass(frozen=True)
class WorkerJob:
    """What a worker is told: its place, the queue, the session it continues and what the parent decided."""

    place: WorkerPlace
    queue: Path
    session_id: str
    jobs: int
    parent_pid: int
    defer_latency: bool              # the cost phase times latency: cells do not
    time_budget_s: float | None
    started_unix: float              # the session's start (the time budget counts from it)


def queue_folder(output: Path, shard: tuple[int, int] | None) -> Path:
    return output / (".jobs" if shard is None else f".jobs-shard{shard[0] + 1}of{shard[1]}")


def jobs_log(output: Path, shard: tuple[int, int] | None) -> Path:
    return output / (JOBS_LOG if shard is None else f"jobs-shard{shard[0] + 1}of{shard[1]}.json")


class JobQueue:
    """The cells' claims in a folder: ``claims/<key>`` (which worker took it), ``done/<key>`` (its final run
    file is written), ``lost/<key>`` (how often its worker died) and ``workers/<n>`` (each worker's pid)."""

    def __init__(self, folder: Path, worker: int = -1) -> None:
        self.folder, self.worker = folder, worker  # the worker that claims through it (-1: the parent)

    def reset(self, done_keys: list[str]) -> None:
        """A new queue: an earlier session's claims are cleared (their workers are gone: the folder's writer
        claim is this process's), the cells kept from it are done."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for sub in ("claims", "done", "lost", "workers"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        for key in done_keys:
            self.mark_done(key, "kept")

    def claim(self, key: str, worker: int) -> bool:
        """Take ``key`` for ``worker`` (this process); False when another took it first."""
        try:
            fd = os.open(self.folder / "claims" / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"worker": worker, "pid": os.getpid(), "since": time.time()}, f)
        return True

    def claimed(self, key: str) -> bool:
        return (self.folder / "claims" / key).exists()

    def claim_of(self, key: str) -> dict[str, Any]:
        try:
            return json.loads((self.folder / "claims" / key).read_text())
        except (OSError, ValueError):
            return {}

    def release(self, key: str) -> None:
        (self.folder / "claims" / key).unlink(missing_ok=True)

    def mark_done(self, key: str, how: str = "run") -> None:
        write_json(self.folder / "done" / key, {"how": how, "pid": os.getpid(), "at": time.time()})

    def done(self, key: str) -> bool:
        return (self.folder / "done" / key).exists()

    def done_how(self, key: str) -> str | None:
        try:
            return json.loads((self.folder / "done" / key).read_text()).get("how")
        except (OSError, ValueError):
            return None

    def unfinished_claims(self, pid: int) -> list[str]:
        """The cells ``pid`` claimed and did not finish."""
        return [p.name for p in (self.folder / "claims").iterdir()
                if not self.done(p.name) and self.claim_of(p.name).get("pid") == pid]

    def note_lost(self, key: str) -> int:
        """Count one more worker that died running ``key``; the count so far."""
        path = self.folder / "lost" / key
        count = (json.loads(path.read_text()) if path.is_file() else 0) + 1
        write_json(path, count)
        return count

    def register(self, worker: int) -> None:
        write_json(self.folder / "workers" / str(worker), {"pid": os.getpid(), "since": time.time()})

    def unregister(self, worker: int) -> None:
        (self.folder / "workers" / str(worker)).unlink(missing_ok=True)

    def siblings(self) -> int:
        """How many other workers of this session are alive now."""
        count = 0
        for path in (self.folder / "workers").iterdir():
            try:
                pid = json.loads(path.read_text())["pid"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid != os.getpid() and _alive(pid):
                count += 1
        return count

    def next_cell(self, cells: list[RunSpec], grid_of: Any) -> tuple[RunSpec | None, bool]:
        """The first cell no one claimed whose grid (a tuned method's final seed) is done, claimed for this
        process; (None, True) while only cells waiting for a grid are left, (None, False) once none is."""
        waiting = False
        for spec in cells:
            if self.done(spec.key) or self.claimed(spec.key):
                continue
            if awaits_choice(spec) and not all(self.done(c.key) for c in grid_of(spec)):
                waiting = True
                continue
            if self.claim(spec.key, self.worker):
                return spec, False
        return None, waiting


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_run_files(output: Path, files: dict[str, str]) -> None:
    """Add ``files`` (run file name -> sha256) to ``session.json``'s ``run_files``, under the folder's lock:
    the workers of one session each add theirs, and the parent's session record is left as it wrote it."""
    with folder_lock(output):
        path = output / "session.json"
        data = json.loads(path.read_text())
        data["run_files"] = dict(sorted({**(data.get("run_files") or {}), **files}.items()))
        data["updated"] = now()
        write_json(path, data)


def recorded_run_files(output: Path) -> dict[str, str]:
    try:
        files = json.loads((output / "session.json").read_text()).get("run_files")
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


TINY_MODEL_BYTES = 1024**2  # a ``tiny:`` model built in code: a few MB at most


def weight_bytes(model: Any) -> int | None:
    """About how many bytes the base model's weights take in bf16 (what ``auto_jobs`` sizes cells by): from
    its parameter count once loaded, a ``shape:`` or hub model's config (a Llama-style decoder's), or the
    weight files (None: not known)."""
    from peftbench.system.topology import model_bytes

    info = model.info
    if info.parameters:
        return 2 * info.parameters
    if info.kind == "tiny":
        return TINY_MODEL_BYTES
    if info.kind == "shape":
        from peftbench.models.shape import shape_config

        return 2 * decoder_parameters(shape_config(info.resolved.removeprefix("shape:")))
    if info.kind == "hub":  # the weights are in the hub's cache: count from the cached config
        with contextlib.suppress(Exception):
            from transformers import AutoConfig

            return 2 * decoder_parameters(AutoConfig.from_pretrained(model.path, local_files_only=True).to_dict())
        return None
    return model_bytes(getattr(model, "path", ""))  # a folder (a GGUF's is its dequantized copy)


def decoder_parameters(c: dict[str, Any]) -> int:
    """The parameters of a Llama-style decoder config (embeddings, attention, SwiGLU MLP, norms, head)."""
    h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    head = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head, c.get("num_key_value_heads", c["num_attention_heads"]) * head
    block = h * q + 2 * h * kv + q * h + 3 * h * c["intermediate_size"] + 2 * h
    return vocab * h * (1 if c.get("tie_word_embeddings") else 2) + layers * block + h


def without_latency(plan: Any) -> Any:
    """The plan with ``latency_rounds=0`` in every cell's options: the cells a worker runs beside others
    leave latency to the cost phase."""
    options = {k: CellOptions.build({**o.flat(), "latency_rounds": 0}, where=f"options of {k}")
               for k, o in plan.options.items()}
    return dataclasses.replace(plan, options=options)


# ---- a worker ----------------------------------------------------------------------------------------------
def worker_main(session_cls: Any, config: Any, job: WorkerJob) -> None:
    """A worker's life: take its place, plan the session again, then run cells until none is left."""
    pin(job.place)
    die_with_parent()
    queue = JobQueue(job.queue, job.place.index)
    queue.register(job.place.index)
    code = 0
    try:
        with sigterm_as_interrupt():
            Worker(session_cls, config, job, queue).run()
    except KeyboardInterrupt:
        code = 130
    except WriteFailed as e:
        print(f"peftbench worker {job.place.index}: {e}", file=sys.stderr)
        code = 3
    except Exception as e:  # planning again failed: say why, and let the parent decide
        print(f"peftbench worker {job.place.index} stopped: {type(e).__name__}: {e}\n"
              f"{traceback.format_exc()[-2000:]}", file=sys.stderr)
        code = 4
    finally:
        queue.unregister(job.place.index)
    sys.exit(code)


class Worker:
    def __init__(self, session_cls: Any, config: Any, job: WorkerJob, queue: JobQueue) -> None:
        from peftbench.system.progress import NullProgress

        self.job, self.queue = job, queue
        # the folder holds the session now: plan it as a continued one (the same cells, checked the same way)
        self.session = session_cls(dataclasses.replace(config, resume=True, restart=False), progress=NullProgress())
        self.session.worker = job

    def run(self) -> None:
        from peftbench.session.cache import CellCache

        session = self.session
        plan = self.plan = dataclasses.replace(session.plan(), session_id=self.job.session_id)
        self.cells = shard_share(plan.all_cells(), session.config.shard)
        self.cell_plan = without_latency(plan) if self.job.defer_latency else plan
        self.env = session.cell_env(plan)
        self.cache = CellCache.from_runs([], plan.output)  # reads the folder for what the others measured
        self.budget = CellBudget(self.job.time_budget_s, time.time, self.job.started_unix)
        self.records: list[dict[str, Any]] = []
        while True:
            if os.getppid() != self.job.parent_pid:
                return  # the parent is gone: a later --resume runs what is left
            spec, waiting = self.queue.next_cell(self.cells, lambda s: grid_cells(plan.tuning, s.method, s.task))
            if spec is None:
                if not waiting:
                    return
                time.sleep(POLL_S)
                continue
            self.run_one(spec)

    def run_one(self, spec: RunSpec) -> None:
        from peftbench.session.cell import blank_record

        plan, session = self.plan, self.session
        if awaits_choice(spec):  # its grid is done: train with what it chose
            choice = choose_for(plan, spec, read_runs(plan.output, grid_cells(plan.tuning, spec.method, spec.task)))
            if choice.values is None:
                if choice.waiting:
                    record = blank_record(plan, spec, "cancelled")
                    record.reason = f"{BUDGET_REASON}: its tuning grid is not finished ({choice.why_not})"
                else:
                    record = session.no_choice(plan, spec, choice.why_not)
                return self.finish(spec, record)
            spec = resolved(spec, choice)
        why = self.budget.too_long(spec)
        if why:
            record = blank_record(plan, spec, "cancelled")
            record.reason = why
            return self.finish(spec, record)
        self.learn_base_scores()
        beside, started = self.queue.siblings(), time.time()
        try:
            record = session.run_cell(self.cell_plan, spec, self.cache, self.env)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a cell that raises loses itself only
            record = blank_record(plan, spec, "ok")
            record.failed("error", ErrorInfo(type(e).__name__, str(e), traceback.format_exc()))
        if record.status == "ok":
            self.budget.record(spec.method, spec.task, time.time() - started)
        record.config = blank_record(plan, spec, record.status).config  # the session's options, as planned
        record.env["jobs"] = {**self.job.place.describe(), "jobs": self.job.jobs, "pid": os.getpid(),
                              "beside_workers": max(beside, self.queue.siblings()),
                              "started_unix": round(started, 3), "ended_unix": round(time.time(), 3),
                              **({"latency": "timed alone in the cost phase (cost/)"}
                                 if self.job.defer_latency and spec.method != "base"
                                 and plan.options_of(spec).latency.rounds else {})}
        self.finish(spec, record)
        free_memory(plan.device)

    def learn_base_scores(self) -> None:
        """The base rows' retention scores, once another worker has written them: a cell's retention then
        carries its change against the base, as in one process."""
        from peftbench.session.cache import CellCache

        base = [s for s in self.cells if s.method == "base" and self.queue.done(s.key)]
        learnt = CellCache.from_runs(read_runs(self.plan.output, base).values())
        for name, score in learnt.base_retention.items():
            self.cache.base_retention.setdefault(name, score)

    def finish(self, spec: RunSpec, record: Any) -> None:
        self.session.finish(self.plan, spec, record, self.records)
        self.queue.mark_done(spec.key)


def read_runs(output: Path, cells: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """The run files of ``cells`` that are in the folder, by key."""
    runs = {}
    for spec in cells:
        try:
            runs[spec.key] = json.loads((output / "runs" / f"{spec.key}.json").read_text())
        except (OSError, ValueError):
            continue
    return runs


# ---- the parent ----------------------------------------------------------------------------------------------
class Parent:
    """Starts the workers, watches them (a dead one's cell is queued again or failed; its place is taken by a
    fresh worker), shows progress, then runs the cost phase alone."""

    def __init__(self, session: Any, plan: Any, kept: dict[str, Any], places: list[WorkerPlace], why: str) -> None:
        self.session, self.plan, self.kept, self.places = session, plan, kept, places
        self.shard = session.config.shard
        self.cells = shard_share(plan.all_cells(), self.shard)
        self.queue = JobQueue(queue_folder(plan.output, self.shard))
        self.context = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.respawns = len(places)  # fresh workers for dead ones, at most one per place in all
        self.log: dict[str, Any] = {"jobs": len(places), "why": why, "started": now(), "workers": [],
                                    "lost": [], "cost_phase": None}
        self.shown: set[str] = set()
        self.started = time.time()

    def job(self, place: WorkerPlace) -> WorkerJob:
        return WorkerJob(place=place, queue=self.queue.folder, session_id=self.plan.session_id,
                         jobs=len(self.places), parent_pid=os.getpid(), defer_latency=True,
                         time_budget_s=self.session.config.time_budget_s,
                         started_unix=self.started - (self.session.clock() - self.session.created))

    def run(self, records: list[dict[str, Any]]) -> str:
        """Run every cell of this process's share; 'finished', or 'interrupted' when cells were left."""
        from peftbench.session.policies import kept

        self.queue.reset([s.key for s in self.cells if kept(self.kept, s)])
        self.tokenize_once([s for s in self.cells if not kept(self.kept, s)])
        self.session.progress.start(len(self.cells))
        self.session.workers_live = True
        try:
            for place in self.places if self.cells_left() else []:
                self.start(place)
            self.watch()
        except KeyboardInterrupt:
            self.stop_all()
            self.collect(records)
            raise
        finally:
            self.stop_all()
            self.session.workers_live = False
            self.session.files = {**recorded_run_files(self.plan.output), **self.session.files}
            self.write_log()
        left = self.collect(records)
        if left:
            self.leave(left, records)
            return "interrupted"
        if any(r.get("status") == "cancelled" for r in records):
            return "interrupted"  # left for later by --time-budget
        self.cost_phase()
        return "finished"

    def tokenize_once(self, cells: list[RunSpec]) -> None:
        """Tokenize each training split the cells need here, once, into the token cache, before the workers
        start: they read it instead of all building it at the same moment (26-28 s each for SST-2 on the H200
        host). A split that cannot be built is left to its cells, which record why."""
        from peftbench.session.cell import train_split

        needed = {}
        for spec in cells:
            if self.plan.method(spec.method) is not None:
                task, max_length = self.plan.scored_task(spec), self.plan.options_of(spec).train.max_length
                needed[(task.lm_eval_name, max_length)] = (task, max_length)
        if not needed:
            return
        env = self.session.cell_env(self.plan)
        for task, max_length in needed.values():
            try:
                train_split(task, env, max_length, self.plan.cache_dir)
            except Exception:  # the same error reaches the cell that trains on it
                continue

    def start(self, place: WorkerPlace) -> None:
        proc = self.context.Process(target=worker_main, args=(type(self.session), self.session.config,
                                                             self.job(place)), name=f"peftbench-worker-{place.index}")
        proc.start()
        self.procs[place.index] = proc
        self.log["workers"].append({**place.describe(), "pid": proc.pid, "started_unix": round(time.time(), 3),
                                    "ended_unix": None, "exitcode": None})

    def watch(self) -> None:
        while self.procs:
            for index, proc in list(self.procs.items()):
                if proc.is_alive():
                    continue
                proc.join()
                del self.procs[index]
                self.ended(index, proc)
            self.show_progress()
            time.sleep(POLL_S)
        self.show_progress()

    def ended(self, index: int, proc: Any) -> None:
        """A worker ended: note it; a cell it did not finish is queued again (or failed, the second time), and
        a fresh worker takes its place while cells are left."""
        entry = next(w for w in reversed(self.log["workers"]) if w["pid"] == proc.pid)
        entry.update(ended_unix=round(time.time(), 3), exitcode=proc.exitcode)
        lost = self.queue.unfinished_claims(proc.pid)
        for key in lost:
            self.lost(key, proc)
        if (lost or proc.exitcode) and self.respawns > 0 and self.cells_left():
            self.respawns -= 1
            self.start(self.places[index])

    def lost(self, key: str, proc: Any) -> None:
        from peftbench.session.cell import blank_record

        how = _how_it_ended(proc.exitcode)
        times = self.queue.note_lost(key)
        self.log["lost"].append({"cell": key, "pid": proc.pid, "how": how, "time": times})
        if times < LOST_TWICE:
            self.session.progress.message(f"{key}: its worker (pid {proc.pid}) {how}; the cell is queued again")
            self.queue.release(key)
            return
        spec = next(s for s in self.cells if s.key == key)
        record = blank_record(self.plan, spec, "ok")
        record.failed("error", ErrorInfo("WorkerDied", f"the worker process running this cell {how}, "
                                                       f"{times} times (its cell is queued once more after the "
                                                       "first); e.g. out of host memory: try fewer --jobs"))
        self.session.finish(self.plan, spec, record, [])  # shows it too
        self.shown.add(key)
        self.queue.mark_done(key, "failed")

    def cells_left(self) -> bool:
        return any(not self.queue.done(s.key) and not self.queue.claimed(s.key) for s in self.cells)

    def show_progress(self) -> None:
        for spec in self.cells:
            if spec.key in self.shown or not self.queue.done(spec.key):
                continue
            data = read_runs(self.plan.output, [spec]).get(spec.key)
            if data is not None:
                self.shown.add(spec.key)
                self.session.progress.cell_done(spec, data, resumed=self.queue.done_how(spec.key) == "kept")

    def stop_all(self) -> None:
        """SIGTERM every worker still running (each ends as on Ctrl-C), then kill what has not ended."""
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        for index, proc in list(self.procs.items()):
            proc.join(max(0.1, deadline - time.time()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            entry = next(w for w in reversed(self.log["workers"]) if w["pid"] == proc.pid)
            entry.update(ended_unix=round(time.time(), 3), exitcode=proc.exitcode)
            del self.procs[index]

    def collect(self, records: list[dict[str, Any]]) -> list[RunSpec]:
        """Put the share's finished run files into ``records``; the cells that have none."""
        have = {r["key"] for r in records}
        left = []
        for spec in self.cells:
            if spec.key in have:
                continue
            data = read_runs(self.plan.output, [spec]).get(spec.key) if self.queue.done(spec.key) else None
            if data is None:
                left.append(spec)
            else:
                records.append(data)
        return left

    def leave(self, left: list[RunSpec], records: list[dict[str, Any]]) -> None:
        """Cells no worker finished (every worker ended first): cancelled, for --resume."""
        from peftbench.session.cell import blank_record

        for spec in left:
            record = blank_record(self.plan, spec, "cancelled")
            record.reason = "no worker was left to run it (see jobs.json); --resume runs it"
            data = run_json(record)
            self.session.write_file(self.plan, spec, data)
            records.append(data)

    def cost_phase(self) -> None:
        """Every worker has ended: time each method's latency and training throughput alone."""
        first = self.places[0]  # alone now: the first GPU with all its node's CPUs (on the CPU: every core)
        cpus = first.cpus if first.gpu_index is not None else None
        place = dataclasses.replace(first, index=0, cpus=cpus, threads=len(cpus) if cpus else None,
                                    how=first.how if cpus else "not pinned: every CPU this process may use")
        proc = self.context.Process(target=type(self.session).cost_main, args=(type(self.session), self.session.config,
                                                            self.job(place)), name="peftbench-cost")
        alive = [p.pid for p in self.procs.values() if p.is_alive()]
        entry = {**place.describe(), "workers_alive": alive, "started_unix": round(time.time(), 3)}
        self.log["cost_phase"] = entry
        self.session.progress.message("cost phase: timing each method's latency and training throughput alone")
        proc.start()
        entry["pid"] = proc.pid
        try:
            proc.join()
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(STOP_GRACE_S)
            raise
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
            entry.update(ended_unix=round(time.time(), 3), exitcode=proc.exitcode)
            self.write_log()
        if proc.exitcode:
            self.session.progress.message(f"the cost phase ended with code {proc.exitcode}: see the messages above; "
                                          "--resume runs it again")

    def write_log(self) -> None:
        with contextlib.suppress(OSError):
            write_json(jobs_log(self.plan.output, self.shard), {**self.log, "updated": now()})


def _how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"was killed by {name}" + (" (e.g. the out-of-memory killer)" if code == -signal.SIGKILL else "")
    return f"ended with exit code {code}"
