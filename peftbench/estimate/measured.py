"""The estimate against measured peaks: the training-throughput benchmark's result files
(``benchmarks/train_throughput.py --json``: ``settings`` and, per method and variant, ``peak_memory_bytes`` =
``torch.cuda.max_memory_allocated``), where the estimate can model the run: a ``shape:`` model on random
rows of one length, a built-in method with its default options, AdamW (torch or 8-bit). Also the FSDP2
files of ``results/estimate/measured/fsdp_one_rank.py`` (one run each, ``shard`` and ``peak_memory_bytes``):
eager blocks and the full logits, as ``peftbench estimate --fsdp --naive`` models them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.estimate.architecture import load_architecture
from peftbench.estimate.memory import Estimate, estimate
from peftbench.estimate.setting import METHODS, OPTIMIZERS, Setting


@dataclass(frozen=True)
class Comparison:
    file: str
    method: str
    variant: str
    measured: int
    estimated: Estimate
    trainable_measured: int | None

    @property
    def error(self) -> float:
        """(estimate - measured) / measured."""
        return self.estimated.peak / self.measured - 1


def setting_of(settings: dict[str, Any], method: str, loop: dict[str, Any]) -> Setting | None:
    """The estimate's setting for one measured run, or ``None`` when the run is outside what it models."""
    if not str(settings.get("model", "")).startswith("shape:") or settings.get("task") or settings.get("lengths"):
        return None  # real examples or varying lengths: the batch's tokens are not known from the settings
    if method not in METHODS or settings.get("optimizer", "adamw") not in OPTIMIZERS or settings.get("device") != "cuda":
        return None
    naive = loop.get("loop") == "naive"
    return Setting(method=method, batch_size=settings["batch_size"], seq_len=settings["seq_len"],
                   activation_checkpointing=bool(settings.get("gradient_checkpointing")),
                   master_weights="fp32" if settings.get("weights_dtype") == "fp32" else "bf16",
                   optimizer=settings.get("optimizer", "adamw"),
                   compiled=not naive and str(loop.get("compile", "off")).startswith("blocks"),
                   chunked_loss=not naive and bool(loop.get("chunked_loss")))


def comparisons(path: Path) -> list[Comparison]:
    """Every run of one result file the estimate models, with its measured peak."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--check {path}: not a readable JSON file ({e}).") from None
    if isinstance(data, dict) and "shard" in data and "peak_memory_bytes" in data:
        return [fsdp_comparison(path, data)]
    if not isinstance(data, dict) or "settings" not in data or "results" not in data:
        raise UsageError(f"--check {path}: not a benchmarks/train_throughput.py result file (no settings/results) "
                         "nor a results/estimate/measured/fsdp_one_rank.py one (no shard/peak_memory_bytes).")
    settings = data["settings"]
    out = []
    for row in data["results"]:
        for variant, v in row.get("variants", {}).items():
            if v.get("status") != "ok" or not v.get("peak_memory_bytes"):
                continue
            setting = setting_of(settings, row["method"], v.get("loop") or {})
            if setting is None:
                continue
            est = estimate(load_architecture(settings["model"]), setting)
            out.append(Comparison(str(path), row["method"], variant, int(v["peak_memory_bytes"]), est,
                                  v.get("trainable")))
    return out


def fsdp_comparison(path: Path, run: dict[str, Any]) -> Comparison:
    """One ``fsdp_one_rank.py`` run against ``peftbench estimate --fsdp --naive`` in its setting."""
    try:
        setting = Setting(method=run["method"], gpus=int(run["world_size"]), fsdp=True,
                          batch_size=int(run["batch_size"]), seq_len=int(run["seq_len"]),
                          activation_checkpointing=bool(run["activation_checkpointing"]),
                          optimizer_offload=bool(run["cpu_offload"]),
                          master_weights="fp32" if run["shard"].get("trainable_dtype") == "float32" else "bf16",
                          compiled=False, chunked_loss=False)
        est = estimate(load_architecture(run["model"]), setting)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"--check {path}: an FSDP run file without {e} (fsdp_one_rank.py writes model, method, "
                         "world_size, batch_size, seq_len, activation_checkpointing, cpu_offload, shard).") from None
    variant = "fsdp naive" + (", offload" if setting.optimizer_offload else "")
    return Comparison(str(path), setting.method, variant, int(run["peak_memory_bytes"]), est, run.get("trainable"))
