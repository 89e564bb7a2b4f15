"""``peftbench serve-bench``: one base model serving K adapters at once, timed the way the latency grid is.

For each method the session builds, on fresh copies of the base model: the **multi-adapter model** (the
method's own adapter plus K - 1 more under distinct names, all random-initialised: latency depends on the
adapters' shapes, not their values, and untrained LoRA adapters would all compute the base model), the
method's adapter saved and loaded back alone (``one``), and the same adapter merged into the base
(``merged``, lossless mergeable methods). Before anything is timed, each mixed batch (rows asking for K
different adapters) is checked against each adapter alone (``serving_check``); a K that fails is not timed.

Then each point of the sweep (one batch size: ``ServePlan.points``) is timed by the latency harness
(``timer.measure``): base, merged, one, single (one adapter active on the model holding all K) and mixedK
for each K that fits the batch, in the same rotated rounds. The time to load, swap and merge/unmerge an
adapter and the memory each extra adapter takes are measured once per method.

Files: ``OUTPUT/latency/serving-<method>.json`` once a method is done (a latency folder: ``peftbench
report`` and ``peftbench claims`` read it), ``OUTPUT/serving-partial/<method>.json`` after each point
until then; ``--resume`` keeps finished methods and finished points. Methods that cannot serve per-row
adapters are listed in ``session.json`` (``unsupported``) with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
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
from peftbench.latency.serving_config import ServePlan, mixed_k
from peftbench.latency.serving_section import join_points, kept_points
from peftbench.session.folder import now
from peftbench.system import memory, meta
from peftbench.system.files import write_json

FILE_PREFIX = "serving-"   # latency/serving-<method>.json: a latency folder's entry, apart from a grid's <method>
ADAPTERS = "random-initialised"  # what the timed adapters are (their values do not change a timing)
OPERATION_REPEATS = 3  # a load on a model holding 32 adapters takes seconds (PEFT walks them all)


@dataclass
class ServeSessionConfig:
    methods: list[str]
    model: str
    device: str = "auto"
    output: Path | None = None
    plan: dict[str, Any] = field(default_factory=dict)  # ServePlan fields, typed (the command's flags)
    sets: list[str] = field(default_factory=list)       # METHOD.KEY=VALUE
    resume: bool = False


class Unsupported(Exception):
    """The method cannot serve several adapters per batch; the message says why."""


class ServeSession:
    def __init__(self, config: ServeSessionConfig, host: Any, say: Any = print) -> None:
        from peftbench.api.registry import collect_methods

        self.config, self.host, self.say = config, host, say
        self.hook = host.hook
        self.registry = collect_methods(host)

    # ---- checking the request ------------------------------------------------------------------------
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
        _, method_sets = parse_sets(c.sets, [*self.registry.entries, *self.registry.aliases], [])
        method_sets = {self.registry.canonical(k): v for k, v in method_sets.items()}
        unused = set(method_sets) - set(self.methods)
        if unused:
            raise UsageError(f"--set gives options for {', '.join(sorted(unused))}, which --methods does not time.")
        self.serve = build_dataclass(ServePlan, dict(c.plan), where="serve-bench options")
        self.method_configs = {m: self.registry.get(m).make_config(method_sets.get(m, {})) for m in self.methods}
        self.id = datetime.now(timezone.utc).strftime("serve-%Y%m%d-%H%M%S")
        self.output = Path(c.output) if c.output else Path("peftbench-results") / self.id
        self.earlier: dict[str, Any] = {}
        self._check_output()
        self.model = resolve_model(c.model, progress=self.say, cache_dir=default_cache_dir())

    def _check_output(self) -> None:
        """A folder that holds serving results is continued only with ``--resume``, and only for the same
        model and sweep: results of different sweeps or models cannot be mixed."""
        c = self.config
        held = any(any((self.output / d).glob("*.json")) for d in ("latency", "serving-partial"))
        if held and not c.resume:
            raise UsageError(f"--output {self.output} already holds latency results. Pass --resume to keep them and "
                             "time only what is missing there, or choose an empty folder.")
        old = self.output / "session.json"
        if not (c.resume and old.is_file()):
            return
        before = json.loads(old.read_text())
        plan = to_jsonable(self.serve)
        if before.get("bench") != "serving":
            raise UsageError(f"--resume: {self.output} holds a `peftbench latency` grid, not serve-bench results; "
                             "use a new --output.")
        if before.get("plan") != plan or (before.get("model") or {}).get("source") != c.model:
            diff = sorted(k for k in plan if (before.get("plan") or {}).get(k) != plan[k])
            raise UsageError(f"--resume: {self.output} was timed with another "
                             f"{'model' if not diff else 'sweep (' + ', '.join(diff) + ')'}; results of different "
                             "sweeps or models cannot be mixed. Use the same options, or a new --output.")
        self.id = before.get("session_id", self.id)
        self.earlier = before

    # ---- the session record ------------------------------------------------------------------------------
    def record(self, status: str) -> dict[str, Any]:
        """session.json; resumed, it keeps the earlier commands' methods, unsupported methods and command lines,
        and the methods that failed (until a later command finishes them)."""
        earlier = self.earlier
        methods = [*[m for m in earlier.get("methods", []) if m not in self.methods], *self.methods]
        commands = [*(earlier.get("commands") or []), meta.command_line()]
        return {"schema_version": SCHEMA_VERSION, "kind": "latency", "bench": "serving", "status": status,
                "session_id": self.id, "command": meta.command_line(), "commands": commands, "updated": now(),
                "model": to_jsonable(self.model.info), "methods": methods, "adapters": ADAPTERS,
                "unsupported": {**(earlier.get("unsupported") or {}), **self.unsupported},
                "failed": {m: e for m, e in {**(earlier.get("failed") or {}), **self.failed}.items()
                           if m not in self.done},
                "method_configs": {**(earlier.get("method_configs") or {}), **to_jsonable(self.method_configs)},
                "plan": to_jsonable(self.serve),
                "env": {**meta.device_info(self.device), "versions": meta.versions(), "git": meta.git_hash(),
                        "source_sha256": meta.source_digest()}}

    # ---- the session ------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        import torch

        if not hasattr(self, "methods"):
            self.plan()
        self.unsupported: dict[str, str] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        self.done: set[str] = set()
        (self.output / "latency").mkdir(parents=True, exist_ok=True)
        write_json(self.output / "session.json", self.record("running"))
        results, status = [], "finished"
        try:
            for name in self.methods:
                path = self.output / "latency" / f"{FILE_PREFIX}{name}.json"
                if self.config.resume and path.is_file():
                    self.say(f"{name}: kept from the earlier run")
                    self.done.add(name)
                    continue
                result = self.serve_method(name)
                if result["status"] == "unsupported":
                    self.unsupported[name] = result["reason"]
                    self.say(f"{name}: cannot serve per-row adapters: {result['reason']}")
                    continue
                if result["status"] == "ok":
                    self.done.add(name)
                    write_json(path, result)
                    self._check_schema(path, result)
                    (self.output / "serving-partial" / f"{name}.json").unlink(missing_ok=True)
                else:  # recorded in session.json; --resume tries it again (its finished points kept)
                    self.failed[name] = {"status": result["status"], **result["error"]}
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

    def _check_schema(self, path: Path, result: dict[str, Any]) -> None:
        """A file that does not match its schema (a bug) is reported, and kept; without jsonschema, not checked."""
        from peftbench.errors import PeftbenchError
        from peftbench.results.store import schema_errors

        try:
            errors = schema_errors(result, "serving")
        except PeftbenchError:
            return
        if errors:
            self.say(f"{path}: does not match the serving schema (peftbench/results/schema/serving.schema.json): "
                     f"{errors[0]}")

    def serve_method(self, name: str) -> dict[str, Any]:
        """One method's sweep: its file's contents (status ok, unsupported, oom or error)."""
        import torch

        method = self.registry.get(name)
        config = to_jsonable(self.method_configs[name])
        result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "serving", "method": name,
                                  "status": "ok", "adapters": ADAPTERS,
                                  "capabilities": to_jsonable(method.capabilities), "method_config": config,
                                  "started": now()}
        partial = self.output / "serving-partial" / f"{name}.json"
        plan = to_jsonable(self.serve)
        earlier = json.loads(partial.read_text()) if self.config.resume and partial.is_file() else None
        points = kept_points(earlier, config, plan)
        if points:
            self.say(f"{name}: continuing; {len(points)} point(s) kept from the interrupted run")
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="peftbench-serve-") as tmp:
                models = self._models(name, method, Path(tmp))
                serving = self._time_points(name, models, points, result, partial, plan)
            result["latency"] = join_points(points, serving)
        except Unsupported as e:
            return {**result, "status": "unsupported", "reason": str(e)}
        except torch.cuda.OutOfMemoryError as e:
            result.update(status="oom", error={"type": "OutOfMemoryError", "message": str(e)[:500]})
        except Exception as e:  # one method failing never loses the others
            result.update(status="error", error={"type": type(e).__name__, "message": str(e)[:1000],
                                                 "traceback": traceback.format_exc()[-4000:]})
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["finished"] = now()
        return result

    # ---- the models a method is served with -----------------------------------------------------------
    def _models(self, name: str, method: Any, art: Path) -> dict[str, Any]:
        """Build and check the models (multi, one, merged, base); measure the operations and memory."""
        import torch

        from peftbench.latency.casting import cast_floating, latency_dtype
        from peftbench.latency.serving import (
            FIRST,
            adapter_names,
            add_adapters,
            is_multi_adapter,
            randomize_adapter,
            to_inference,
        )
        from peftbench.latency.serving_ops import operation_times

        if method.capabilities.trains_all_parameters:
            raise Unsupported("full fine-tuning changes every weight: each variant is a whole model (K variants "
                              "hold K models' memory), with no adapter to choose per row")
        run = RunContext(spec=RunSpec(name, "serve-bench", 0), method=method, method_config=self.method_configs[name],
                         task=None, train_config=None, device=self.device, hook=self.hook)
        dtype = latency_dtype(self.serve.dtype, self.device)
        names = adapter_names(self.serve.most_adapters)
        multi = self.hook.prepare_model(run=run, base_model=self._base(dtype))
        if not is_multi_adapter(multi):
            raise Unsupported(f"its model ({type(multi).__name__}) holds one set of adapter weights, with no named "
                              "adapters to load side by side or choose per row (not a PEFT model)")
        self.say(f"{name}: building {len(names)} adapters")
        cast_floating(multi, dtype)
        randomize_adapter(multi, FIRST, self.serve.seed)
        to_inference(multi, FIRST)
        self.hook.save_artifact(run=run, prepared=multi, directory=art)
        adapters_memory = add_adapters(multi, names, dtype, self.serve.seed, self.device)
        checks = self._checks(multi, names)
        one = self.hook.load_artifact(run=run, directory=art, base_model=self._base(dtype))
        cast_floating(one, dtype)
        to_inference(one, FIRST)
        lossless = method.capabilities.mergeable and not method.capabilities.merge_lossy
        models = {"base": self._base(dtype), "one": method.inference_model(one),
                  "single": method.inference_model(multi), "multi": multi, "names": names, "checks": checks,
                  "memory": adapters_memory}
        if lossless:  # merged in fp32, its wrappers removed, then cast: as the latency grid serves it
            merged = self.hook.merge_adapter(run=run, prepared=self.hook.load_artifact(
                run=run, directory=art, base_model=self._base(torch.float32)))
            models["merged"] = method.inference_model(cast_floating(method.unload(merged), dtype))
        skipped = None if lossless else ("merging into this method's base is lossy or not possible "
                                         "(capabilities.mergeable / merge_lossy): not a way to switch adapters")
        models["operations"] = operation_times(multi, art, names, self.device, OPERATION_REPEATS, skipped)
        return models

    def _base(self, dtype: Any) -> Any:
        """A fresh base model on the device in ``dtype``: built directly (``shape:``, ``tiny:``), else read
        from disk once (kept on the CPU) and copied."""
        from peftbench.latency.casting import cast_floating

        if self.model.info.kind in ("shape", "tiny"):
            return cast_floating(self.model.load(self.device, dtype=dtype)[0], dtype)
        if not hasattr(self, "_pristine"):
            self._pristine = self.model.load("cpu")[0]
        return cast_floating(copy.deepcopy(self._pristine).to(self.device), dtype)

    def _checks(self, multi: Any, names: list[str]) -> list[dict[str, Any]]:
        """The mixed-batch check for every K, on one batch of 2 x the largest K rows (each adapter serves
        two or more; a short prompt). A tuner PEFT refuses to mix per row (it raises), or mixes wrongly at every
        K > 1, is unsupported, with the reason."""
        from peftbench.latency.serving import FIRST
        from peftbench.latency.serving_check import check_mixed_batches
        from peftbench.latency.timer import _prompt

        ids = _prompt(multi.config.vocab_size, 2 * self.serve.most_adapters, 16, self.device, self.serve.seed)
        try:
            checks = check_mixed_batches(multi, names, self.serve.adapters, ids, FIRST)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise Unsupported(f"PEFT cannot mix its adapters per row: {type(e).__name__}: {str(e)[:300]}") from e
        for c in checks:
            if not c["ok"]:
                self.say(f"  K={c['adapters']}: a mixed batch does not give each adapter's logits ({c}): not timed")
        mixed = [c for c in checks if c["adapters"] > 1]
        if mixed and not any(c["ok"] for c in mixed):  # e.g. PEFT's IA3, LoHa, VeRA take adapter_names, ignore them
            c = mixed[0]
            raise Unsupported(f"PEFT takes adapter_names for it, but a mixed batch's rows do not get their own "
                              f"adapter's logits (K={c['adapters']}: rows off by {c['max_abs_error']:.2g} in logits, "
                              f"the adapters {c['min_adapter_effect']:.2g} apart): per-row serving is wrong, not timed")
        return checks

    # ---- the sweep ----------------------------------------------------------------------------------------
    def _time_points(self, name: str, models: dict[str, Any], points: dict[str, Any], result: dict[str, Any],
                     partial: Path, plan: dict[str, Any]) -> dict[str, Any]:
        """Time each point not kept; after each, save the points so far (the partial file). Returns the
        ``serving`` part of the section."""
        from peftbench.latency.timer import measure

        wrong = {c["adapters"] for c in models["checks"] if not c["ok"]}
        vocab = models["multi"].config.vocab_size
        not_timed = {}
        for point in self.serve.points():
            not_timed[point.key] = {"larger_than_batch": point.not_timed,
                                    "wrong_logits": [k for k in point.mixed if k in wrong]}
            if point.key in points:
                continue
            modes = self._modes(models, [m for m in point.modes("merged" in models)
                                         if mixed_k(m) not in wrong])
            self.say(f"{name}: batch {point.batch_size}: {', '.join(modes)}")
            others: dict[str, Any] = {}
            with memory.watch_neighbours(others):
                section = measure(modes, self.serve.latency_plan(point.batch_size), self.device, vocab,
                                  same_as_base=("merged",), progress=self.say)
                section["peak_extra_bytes"] = self._peaks(modes, point.batch_size, vocab)
            section["dtype"] = str(next(p.dtype for p in models["base"].parameters())).replace("torch.", "")
            memory.keep_most(section, others)
            for key in memory.NEIGHBOUR_KEYS:
                section.setdefault(key, None)  # looked at; None where not measurable (no GPU)
            points[point.key] = section
            write_json(partial, {**result, "status": "partial", "updated": now(),
                                 "serving": {"plan": plan, "points": points}})
        return {"plan": plan, "adapter_names": models["names"], "adapters": ADAPTERS, "memory": models["memory"],
                "operations": models["operations"], "checks": models["checks"], "not_timed": not_timed}

    def _modes(self, models: dict[str, Any], names: list[str]) -> dict[str, Any]:
        from peftbench.latency.serving import RowAdapters

        modes = {}
        for mode in names:
            k = mixed_k(mode)
            model = models[mode] if k is None else RowAdapters(models["multi"], models["names"], k)
            modes[mode] = lambda model=model: contextlib.nullcontext(model)
        return modes

    def _peaks(self, modes: dict[str, Any], batch: int, vocab: int) -> dict[str, int]:
        from peftbench.latency.serving import mode_peaks
        from peftbench.latency.timer import _prompt

        length = self.serve.prompt_lengths[0]
        return mode_peaks(modes, _prompt(vocab, batch, length, self.device, self.serve.seed), self.device)


def load_serving(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(session record, {method: result}) of a serve-bench folder: each finished method's file, and for a
    method interrupted mid-sweep its partial file's points joined (status ``partial``)."""
    folder = Path(folder)
    if not (folder / "session.json").is_file():
        raise UsageError(f"{folder}: not a serve-bench results folder (no session.json).")
    session = json.loads((folder / "session.json").read_text())
    if session.get("bench") != "serving":
        raise UsageError(f"{folder}: a results folder, but not of `peftbench serve-bench` (its session.json has no "
                         "bench: serving); show it with `peftbench report`.")
    results = {p.stem[len(FILE_PREFIX):]: json.loads(p.read_text())
               for p in sorted((folder / "latency").glob(f"{FILE_PREFIX}*.json"))}
    for p in sorted((folder / "serving-partial").glob("*.json")):
        partial = json.loads(p.read_text())
        serving = partial.get("serving") or {}
        if p.stem in results or not serving.get("points"):
            continue
        results[p.stem] = {**partial, "latency": join_points(serving["points"], {"plan": serving.get("plan"),
                                                                                 "adapters": ADAPTERS})}
    return session, results
