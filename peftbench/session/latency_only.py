"""``peftbench latency``: the inference-cost grid for each method, without training.

Latency does not depend on the values of the trained weights, only on their shapes and on where they sit,
so each method is prepared on the base model (untrained), saved, loaded back onto a fresh base as a user
would load it, and timed with the same harness ``run`` uses (``timing.time_inference``): ``base``,
``unmerged``, ``merged`` (mergeable methods) and ``stackN`` (stackable methods). One JSON file per method
is written atomically the moment it is done (``OUTPUT/latency/<method>.json``); ``--resume`` keeps the
files already there; one failing method is recorded and the others go on.
"""

from __future__ import annotations

import copy
import gc
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.api.options import build_dataclass, parse_sets, to_jsonable
from peftbench.api.records import SCHEMA_VERSION, RunContext, RunSpec
from peftbench.errors import UsageError
from peftbench.latency.config import SET_PREFIX, LatencyConfig
from peftbench.session.folder import now
from peftbench.session.options import LATENCY_KEYS, OPTION_KEYS
from peftbench.system import memory, meta
from peftbench.system.files import write_json


@dataclass
class LatencySessionConfig:
    methods: list[str]
    model: str
    device: str = "auto"
    output: Path | None = None
    grid: dict[str, Any] = field(default_factory=dict)  # LatencyConfig fields, typed (the command's flags)
    sets: list[str] = field(default_factory=list)       # --set latency_KEY=VALUE and METHOD.KEY=VALUE
    resume: bool = False



class LatencySession:
    def __init__(self, config: LatencySessionConfig, host: Any, say: Any = print) -> None:
        from peftbench.api.registry import collect_methods

        self.config, self.host, self.say = config, host, say
        self.hook = host.hook
        self.registry = collect_methods(host)

    def plan(self) -> None:
        from peftbench.models.sources import default_cache_dir, resolve_model
        from peftbench.session.plan import resolve_device

        c = self.config
        self.methods = [self.registry.canonical(m, "--methods") for m in c.methods]
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"--methods names a method twice: {', '.join(c.methods)}.")
        self.device = resolve_device(c.device)
        for m in self.methods:
            ok = self.registry.get(m).availability(self.device)
            if not ok:
                raise UsageError(f"method {m!r} cannot run on {self.device}: {ok.reason}.")
        train_sets, method_sets = parse_sets(c.sets, [*self.registry.entries, *self.registry.aliases], OPTION_KEYS)
        other = sorted(set(train_sets) - set(LATENCY_KEYS))
        if other:
            raise UsageError(f"--set {', '.join(other)}: peftbench latency takes only the latency options "
                             f"({', '.join(LATENCY_KEYS)}) and method options (METHOD.KEY=VALUE).")
        method_sets = {self.registry.canonical(k): v for k, v in method_sets.items()}
        unused = set(method_sets) - set(self.methods)
        if unused:
            raise UsageError(f"--set gives options for {', '.join(sorted(unused))}, which --methods does not time.")
        defaults = {"batch_sizes": [1, 8, 32], "prompt_lengths": [128, 1024], "new_tokens": 64,
                    "regimes": ["eager", "static"], "stack": [2, 4]}
        sets = {k[len(SET_PREFIX):]: v for k, v in train_sets.items()}
        self.latency = build_dataclass(LatencyConfig, {**defaults, **c.grid, **sets}, where="latency options")
        if not self.latency.rounds:
            raise UsageError("--rounds 0 would time nothing; give at least 1 round.")
        self.method_configs = {m: self.registry.get(m).make_config(method_sets.get(m, {})) for m in self.methods}
        self.id = datetime.now(timezone.utc).strftime("latency-%Y%m%d-%H%M%S")
        self.output = Path(c.output) if c.output else Path("peftbench-results") / self.id
        held = [d for d in ("latency", "latency-partial") if any((self.output / d).glob("*.json"))]
        if held and not c.resume:
            raise UsageError(f"--output {self.output} already holds latency results. Pass --resume to keep them and "
                             "time only the methods missing there, or choose an empty folder.")
        old = self.output / "session.json"
        if c.resume and old.is_file():  # resuming: the kept files must come from the same model and grid
            import json

            before = json.loads(old.read_text())
            plan = to_jsonable(self.latency.grid())
            if before.get("plan") != plan or (before.get("model") or {}).get("source") not in (None, c.model):
                diff = sorted(k for k in plan if (before.get("plan") or {}).get(k) != plan[k])
                raise UsageError(f"--resume: {self.output} was timed with another "
                                 f"{'model' if not diff else 'grid (' + ', '.join(diff) + ')'}; results of different "
                                 "grids or models cannot be mixed. Use the same options, or a new --output.")
            self.id = before.get("session_id", self.id)
            self.earlier = before   # the record keeps the earlier commands' methods and command lines
        self.model = resolve_model(c.model, progress=self.say, cache_dir=default_cache_dir())

    def record(self, status: str) -> dict[str, Any]:
        """session.json. Resumed, it still names what the earlier commands timed: ``methods`` and
        ``method_configs`` are theirs and this command's together, ``commands`` every command line so far."""
        earlier = getattr(self, "earlier", {})
        methods = [*[m for m in earlier.get("methods", []) if m not in self.methods], *self.methods]
        configs = {**(earlier.get("method_configs") or {}), **to_jsonable(self.method_configs)}
        commands = [*(earlier.get("commands") or ([earlier["command"]] if earlier.get("command") else [])),
                    meta.command_line()]
        return {"schema_version": SCHEMA_VERSION, "kind": "latency", "status": status, "session_id": self.id,
                "command": meta.command_line(), "commands": commands, "updated": now(),
                "model": to_jsonable(self.model.info), "methods": methods, "train_config": {SET_PREFIX + k: v for k, v in to_jsonable(self.latency).items()},
                "method_configs": configs,
                "plan": to_jsonable(self.latency.grid()),
                "env": {**meta.device_info(self.device), "versions": meta.versions(), "git": meta.git_hash(),
                    "source_sha256": meta.source_digest()}}

    def run(self) -> list[dict[str, Any]]:
        import torch

        if not hasattr(self, "methods"):
            self.plan()
        folder = self.output / "latency"
        folder.mkdir(parents=True, exist_ok=True)
        write_json(self.output / "session.json", self.record("running"))
        results = []
        status = "finished"
        try:
            for name in self.methods:
                path = folder / f"{name}.json"
                if self.config.resume and path.is_file():
                    self.say(f"{name}: kept from the earlier run")
                    continue
                result = self.time_method(name)
                write_json(path, result)
                results.append(result)
                self.say(f"{name}: {result['status']}" + (f" ({result['error']['message'][:200]})"
                                                         if result.get("error") else ""))
                gc.collect()
                if self.device == "cuda":
                    torch.cuda.empty_cache()
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            write_json(self.output / "session.json", self.record(status))
        return results

    def _partial_section(self, name: str, partial: Path, result: dict[str, Any]) -> dict[str, Any] | None:
        """The latency section an interrupted earlier run of this method left, when ``--resume`` may keep it:
        the same method configuration (the grid was checked against session.json already)."""
        import json

        if not (self.config.resume and partial.is_file()):
            return None
        try:
            old = json.loads(partial.read_text())
        except ValueError:
            return None
        section = old.get("latency") or {}
        if old.get("method_config") != result["method_config"] or not section.get("regimes"):
            return None
        self.say(f"{name}: continuing; {sum(len(c) for c in section['regimes'].values())} shapes kept from the "
                 "interrupted run")
        return section

    def time_method(self, name: str) -> dict[str, Any]:
        import torch

        method = self.registry.get(name)
        run = RunContext(spec=RunSpec(name, "latency", 0), method=method, method_config=self.method_configs[name],
                         task=None, train_config=None, latency_config=self.latency, device=self.device,
                         hook=self.hook)
        result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "latency", "method": name,
                                  "status": "ok", "capabilities": to_jsonable(method.capabilities),
                                  "method_config": to_jsonable(self.method_configs[name]), "started": now()}

        load_base = self._base_loader()
        # an interrupted method's finished shapes, kept under latency-partial/ until the method is done
        partial = self.output / "latency-partial" / f"{name}.json"
        run.latency_done = self._partial_section(name, partial, result)
        run.latency_checkpoint = _checkpointer(partial, result, run.latency_done)
        seconds: dict[str, float] = {}   # where the method's wall time went (the timing phase includes
        t0 = time.perf_counter()          # loading the base and merged models it times)
        try:
            result["latency"] = time_untrained(self.hook, run, load_base, seconds, say=self.say)
            memory.keep_most(result["latency"], run.latency_done or {})  # the kept shapes' too
            partial.unlink(missing_ok=True)
        except torch.cuda.OutOfMemoryError as e:
            result.update(status="oom", error={"type": "OutOfMemoryError", "message": str(e)[:500]})
        except Exception as e:  # one method failing never loses the others
            result.update(status="error", error={"type": type(e).__name__, "message": str(e)[:1000],
                                                 "traceback": traceback.format_exc()[-4000:]})
        seconds["total"] = round(time.perf_counter() - t0, 2)
        result["seconds"] = seconds
        result["finished"] = now()
        return result


    def _base_loader(self) -> Any:
        return base_loader(self.model, self.device)


def time_untrained(hook: Any, run: Any, load_base: Any, seconds: dict[str, float], say: Any = None
                   ) -> dict[str, Any]:
    """The latency section of ``run``'s method prepared on the base (untrained), saved, loaded back onto a
    fresh base as a user would load it, and timed (``timing.time_inference``); where the time went goes into
    ``seconds`` (``prepare_save_load``, ``timing``). ``peftbench latency`` and the cost phase of
    ``peftbench run --jobs`` both time so."""
    from peftbench.session.timing import time_inference

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peftbench-latency-") as tmp:
        art = Path(tmp)
        prepared = hook.prepare_model(run=run, base_model=load_base())
        hook.save_artifact(run=run, prepared=prepared, directory=art)
        prepared = None
        trained = hook.load_artifact(run=run, directory=art, base_model=load_base())
        seconds["prepare_save_load"] = round(time.perf_counter() - t0, 2)
        if say is not None:
            modes = run.method.capabilities.latency_modes(tuple(run.latency_config.stack))
            say(f"{run.method.name}: timing {', '.join(['base', *modes])}")
        t1 = time.perf_counter()
        latency = time_inference(load_base, run, art, trained)
        seconds["timing"] = round(time.perf_counter() - t1, 2)
    return latency


def base_loader(model: Any, device: str) -> Any:
    """A function giving a fresh base model on the device. A model read from disk is read once (kept on the
    CPU) and each use gets its own deep copy: the timed base, the artifact's base and the merged model's base
    still share no weights, and three from_pretrained calls (1-2 s each) become copies (a one-shape benchmark
    has a 60 s target). ``shape:`` and ``tiny:`` models are built directly."""
    pristine: list[Any] = []

    def load_base() -> Any:
        if model.info.kind in ("shape", "tiny"):
            return model.load(device)[0]
        if not pristine:
            pristine.append(model.load("cpu")[0])
        return copy.deepcopy(pristine[0]).to(device)

    return load_base


def _checkpointer(partial: Path, result: dict[str, Any], done: dict[str, Any] | None) -> Any:
    """Saves a method's latency section after each shape, with what other processes used in the kept shapes
    and since this method began."""
    cpu0 = memory.cpu_sample()

    def checkpoint(section: dict[str, Any]) -> None:
        section = dict(section)
        memory.keep_most(section, done or {})
        memory.keep_most(section, memory.neighbours_since(cpu0))
        write_json(partial, {**result, "status": "partial", "latency": section, "updated": now()})

    return checkpoint


def load_latency(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(session record, {method: result}) of a ``peftbench latency`` output folder."""
    import json

    session = json.loads((folder / "session.json").read_text()) if (folder / "session.json").is_file() else {}
    results = {p.stem: json.loads(p.read_text()) for p in sorted((folder / "latency").glob("*.json"))}
    for p in sorted((folder / "latency-partial").glob("*.json")):  # a method interrupted mid-grid
        if p.stem in results:
            continue
        partial = json.loads(p.read_text())
        plan = (partial.get("latency") or {}).get("plan") or {}
        done = sum(len(c) for c in ((partial.get("latency") or {}).get("regimes") or {}).values())
        total = (len(plan.get("regimes") or []) * len(plan.get("batch_sizes") or [])
                 * len(plan.get("prompt_lengths") or [])) or "?"
        results[p.stem] = {**partial, "status": "partial", "error": {
            "type": "Interrupted", "message": f"interrupted after {done} of {total} shapes "
                                              f"(latency-partial/{p.name}); peftbench latency --resume continues it"}}
    return session, results
