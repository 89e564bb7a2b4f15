"""Claims checked by calculation (``peftbench.estimate``), not by measurement: the scale claims no single GPU
here can measure ('a 70B full fine-tune needs 8+ A100 80 GB GPUs'). Each quantity takes the claim's ``args``
(the model, the method and the setting it is judged in) and returns ``(value, how)``; ``how`` says what was
calculated, so the setting is never hidden. docs/estimate.md states the formulas and their check against
measured peaks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench.estimate import Setting, estimate, load_architecture, parse_memory

GIB = 2**30
BY_CALCULATION = "by calculation"  # each result's ``model``: its own table in ``peftbench claims``, never a model's
MAX_GPUS = 1024
SETTING_KEYS = ("batch_size", "seq_len", "activation_checkpointing", "optimizer_offload", "master_weights",
                "optimizer", "compiled", "chunked_loss", "lora_rank", "adapter_placement", "adapter_reduction")


def _setting(method: str, args: dict[str, Any], gpus: int = 1) -> Setting:
    return Setting(method=method, gpus=gpus, gpu_memory=parse_memory(args.get("gpu_memory", "80GiB"), "gpu_memory"),
                   **{k: args[k] for k in SETTING_KEYS if k in args})


def _said(args: dict[str, Any]) -> str:
    s = _setting(args.get("method", "full"), args)
    return (f"batch {s.batch_size} x {s.seq_len}, {s.master_weights} weights, {s.optimizer}"
            + (" (offloaded)" if s.optimizer_offload else "")
            + (", activation checkpointing" if s.activation_checkpointing else ""))


def gpus_to_fit(model: str, method: str, **args: Any) -> tuple[float | None, str]:
    """The smallest FSDP world size on which ``method`` fits in ``gpu_memory`` per GPU (with the CUDA context)."""
    arch = load_architecture(model)
    for n in range(1, MAX_GPUS + 1):
        e = estimate(arch, _setting(method, args, gpus=n))
        if e.fits:
            return float(n), (f"by calculation: {method} on {model}, {_said(args)}: {e.with_context / GIB:.1f} GiB "
                              f"per GPU on {n} GPU{'s' if n > 1 else ''} of {args.get('gpu_memory', '80GiB')}")
    return None, f"by calculation: {method} on {model} does not fit on {MAX_GPUS} GPUs"


def peak_gib(model: str, method: str, gpus: int = 1, **args: Any) -> tuple[float | None, str]:
    """The estimated peak per GPU with the CUDA context, in GiB."""
    e = estimate(load_architecture(model), _setting(method, args, gpus=gpus))
    return e.with_context / GIB, (f"by calculation: {method} on {model} on {gpus} GPU{'s' if gpus > 1 else ''}, "
                                  f"{_said(args)}: peak at {e.peak_phase}, GiB with the CUDA context")


def memory_cut(model: str, method: str, reference: str, gpus: int = 1, reference_master_weights: str | None = None,
               **args: Any) -> tuple[float | None, str]:
    """1 - peak(method) / peak(reference): the share of the reference's memory the method saves. The reference
    may store its weights in another dtype (``reference_master_weights``: full fine-tuning in mixed precision
    against LoRA on a bf16 base)."""
    arch = load_architecture(model)
    theirs_args = {**args, "master_weights": reference_master_weights or args.get("master_weights", "fp32")}
    mine = estimate(arch, _setting(method, args, gpus=gpus))
    theirs = estimate(arch, _setting(reference, theirs_args, gpus=gpus))
    return 1 - mine.peak / theirs.peak, (f"by calculation on {model}: {method} ({_said(args)}) "
                                         f"{mine.peak / GIB:.1f} GiB vs {reference} ({_said(theirs_args)}) "
                                         f"{theirs.peak / GIB:.1f} GiB")


CALCULATED: dict[str, Callable[..., tuple[float | None, str]]] = {
    "gpus_to_fit": gpus_to_fit, "peak_gib": peak_gib, "memory_cut": memory_cut}
UNITS = {"gpus_to_fit": "GPUs", "peak_gib": "GiB", "memory_cut": "share"}


def load_calculated_claims(path: Path | None = None) -> list[dict[str, Any]]:
    """``calculated_claims.yaml``: claims.yaml entries whose quantity is one of ``CALCULATED``."""
    import yaml

    path = path or Path(__file__).with_name("calculated_claims.yaml")
    claims = yaml.safe_load(path.read_text())
    for c in claims:
        missing = {"id", "claim", "source", "quantity", "args", "range"} - set(c)
        if missing or c["quantity"] not in CALCULATED:
            raise ValueError(f"{path}: claim {c.get('id')!r} is malformed (missing {sorted(missing)} or unknown "
                             f"quantity {c.get('quantity')!r}; known: {', '.join(CALCULATED)})")
    return claims


def check_by_calculation(claims: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One result per claim, as ``peftbench.report.claims.check`` gives them (model 'by calculation', ``task``
    the model calculated), judged by the point value: a calculation has no CI."""
    from peftbench.report.claims import verdict

    out = []
    for c in claims or load_calculated_claims():
        value, how = CALCULATED[c["quantity"]](**c["args"])
        judged = verdict(value, None, c["range"]).replace("(no CI)", "(by calculation)")
        out.append({"id": c["id"], "claim": c["claim"], "source": c["source"], "model": BY_CALCULATION,
                    "task": c["args"]["model"], "value": value, "ci95": None, "range": c["range"], "how": how,
                    "verdict": judged, "unit": UNITS[c["quantity"]]})
    return out
