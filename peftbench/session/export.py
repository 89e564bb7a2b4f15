"""``peftbench export``: turn kept artifacts into folders that transformers or PEFT load alone.

- a PEFT method (LoRA, QLoRA, a PEFT plugin such as IA3): its PEFT folder, with ``base_model_name_or_path``
  naming the base where the base has a name transformers can load, and the base's tokenizer;
- full fine-tuning: a ``from_pretrained`` folder (config, weights, generation config, tokenizer);
- ``--merge`` (mergeable methods): the method folded into the base and unloaded, saved as a plain
  ``from_pretrained`` folder with the tokenizer;
- the bottleneck adapter has no such form (not PEFT, not mergeable): load it with ``peftbench.load_artifact``.

The export is written into a temporary folder beside ``--to`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.session.artifacts import MANIFEST, describe, load_artifact, method_of

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def artifact_folders(source: Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` of each artifact ``source`` holds: a run folder's kept artifacts (by cell), or
    ``source`` itself."""
    source = Path(source)
    if not source.is_dir():
        raise UsageError(f"{str(source)!r} is not a folder: give a run folder (--output of peftbench run "
                         "--keep-artifacts) or one artifact folder (OUTPUT/artifacts/<cell>).")
    kept = source / "artifacts"
    if kept.is_dir():
        cells = sorted(d for d in kept.iterdir() if d.is_dir() and (d / MANIFEST).is_file())
        if not cells:
            raise UsageError(f"{kept} holds no complete artifact (each has a {MANIFEST}).")
        return [(d.name, d) for d in cells]
    if (source / "session.json").is_file():
        raise UsageError(f"{source} is a run folder without kept artifacts: run it with --keep-artifacts "
                         "(they are kept under OUTPUT/artifacts/<cell>/).")
    return [(source.name, source)]


def export(source: Path, dest: Path, merge: bool = False, base: str | None = None, device: str = "cpu",
           say: Callable[[str], None] = print, host: Any = None) -> list[Path]:
    """Export every artifact in ``source`` to ``dest`` (one artifact: ``dest`` itself; a run folder:
    ``dest/<cell>/``); returns the folders written."""
    found = artifact_folders(source)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"--to {dest} exists and is not an empty folder; choose a new folder.")
    plans = _exportable([(name, folder, describe(folder, base)) for name, folder in found], merge, host, say)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        written = []
        for name, folder, data in plans:
            out = tmp if len(plans) == 1 and folder == Path(source) else tmp / name
            kind = _export_one(folder, data, out, merge, device, host)
            say(f"exported {name} ({data['method']}) as {kind}")
            written.append(dest if out == tmp else dest / name)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _exportable(plans: list[tuple[str, Path, dict[str, Any]]], merge: bool, host: Any,
                say: Callable[[str], None]) -> list[tuple[str, Path, dict[str, Any]]]:
    """The artifacts that can be exported, every one checked before anything loads. One artifact that cannot
    is an error; of a run folder's, those that cannot are skipped, saying why (an error if none can)."""
    if len(plans) == 1:
        _check_exportable(plans[0][1], plans[0][2], merge, host)
        return plans
    keep, skipped = [], []
    for name, folder, data in plans:
        try:
            _check_exportable(folder, data, merge, host)
            keep.append((name, folder, data))
        except UsageError as e:
            skipped.append(f"{name}: {e}")
    if not keep:
        raise UsageError("no artifact of the run folder can be exported: " + " ".join(skipped))
    for line in skipped:
        say(f"skipped {line}")
    return keep


def _check_exportable(folder: Path, data: dict[str, Any], merge: bool, host: Any) -> None:
    method, _ = method_of(data, host)
    caps = method.capabilities
    if caps.trains_all_parameters:
        return   # a whole model: exported as it is, with or without --merge (nothing to merge)
    if merge and not caps.mergeable:
        how = "" if _is_peft(folder) else (
            " It has no form transformers loads alone: load it with peftbench.load_artifact(folder).")
        raise UsageError(f"--merge: the artifact of method {data['method']!r} ({folder}) cannot be merged into "
                         f"its base; export it without --merge.{how}")
    if not merge and not _is_peft(folder):
        hint = ("pass --merge to fold it into the base model" if caps.mergeable else
                "load it with peftbench.load_artifact(folder) (it cannot be merged either)")
        raise UsageError(f"the artifact of method {data['method']!r} ({folder}) is neither a PEFT folder nor a "
                         f"whole model, so transformers/PEFT cannot load it alone: {hint}.")


def _is_peft(folder: Path) -> bool:
    path = folder / "adapter_config.json"
    try:
        return path.is_file() and "peft_type" in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError):
        return False


def _export_one(folder: Path, data: dict[str, Any], out: Path, merge: bool, device: str, host: Any) -> str:
    """Write one artifact's standalone folder into ``out``; a phrase saying what was written."""
    method, _ = method_of(data, host)
    if not merge and _is_peft(folder):
        out.mkdir(parents=True, exist_ok=True)
        for name in PEFT_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, out / name)
        _point_at_base(out / "adapter_config.json", data["base_model"])
        _base_tokenizer(data["base_model"]).save_pretrained(str(out))
        return "a PEFT folder (PeftModel.from_pretrained(base, folder))"
    model, tokenizer = load_artifact(folder, base=data["base_model"], device=device, host=host)
    if merge and not method.capabilities.trains_all_parameters:
        model = method.inference_model(method.unload(method.merge(model)))
        left = sorted({type(m).__module__ for m in model.modules() if type(m).__module__.startswith("bitsandbytes")})
        if left:
            raise UsageError(f"--merge: {folder} still has quantized layers after merging ({', '.join(left)}): its "
                             "target_modules did not cover every quantized layer; export it without --merge.")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return "a from_pretrained folder (AutoModelForCausalLM.from_pretrained(folder))"


def _point_at_base(config: Path, base: str) -> None:
    """Name the base in the PEFT config where transformers can load it by that name (hub id or folder)."""
    from peftbench.models.sources import resolve_model

    resolved = resolve_model(base)
    if resolved.info.kind in ("hub", "local"):
        values = json.loads(config.read_text(encoding="utf-8"))
        values["base_model_name_or_path"] = resolved.info.resolved
        config.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def _base_tokenizer(base: str) -> Any:
    from peftbench.models.sources import resolve_model

    return resolve_model(base).load_tokenizer()
