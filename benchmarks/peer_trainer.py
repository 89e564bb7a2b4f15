"""The peer benchmark: the same training done the way most users do it, with transformers' ``Trainer`` + peft.

``benchmarks/train_throughput.py`` runs it as the variant ``trainer+peft`` (or ``--peer``) beside peftbench's own
loop, on the same model weights, data and batches, so its ratios compare the two loops and nothing else:

  data      the same examples in the same order: peftbench's own ``batches`` decides which examples form each
            step's batch (it is run over the example indices), and Trainer reads them in that order
            (``train_sampling_strategy="sequential"``) with the same batch size, one batch per optimizer step
  padding   ``DataCollatorForSeq2Seq(padding="longest")``: each batch right-padded to its longest example,
            labels padded with -100 (dynamic padding, what users run). A padding-only tokenizer carries the
            data's pad id: the collator's padding reads nothing else of a tokenizer. The batches are
            token for token those of peftbench's naive loop (``peftbench.train.batching.collate``)
  labels    the loss on the same tokens (prompt tokens masked with -100), through the model's own loss
  methods   lora: ``peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")``,
            peftbench's lora defaults (plugins/lora/config.py; a test checks they agree);
            full: the plain model, every weight trained;
            qlora: ``from_pretrained(quantization_config=BitsAndBytesConfig(nf4, double quantization, bf16
            compute))`` + the same LoRA, CUDA only; ``prepare_model_for_kbit_training`` is not called (it
            turns on activation checkpointing and upcasts the norms to fp32, which peftbench's qlora does not);
            adapter: peft has no bottleneck (Houlsby) adapter, so the peer is Trainer over peftbench's own
            adapter layers (the loop compared, not the library; recorded in ``peer``); other methods: none
  training  fused AdamW on CUDA (``optim="adamw_torch_fused"``; ``adamw_torch`` on CPU, as peftbench's loop),
            betas (0.9, 0.999), no weight decay, clipping at 1.0, cosine decay to 0.1 x lr, no warm-up; bf16
            autocast on CUDA (``bf16=True``), fp32 on CPU; the weights in the dtype the benchmark loads them in;
            the loss logged every step (``logging_steps=1``: peftbench's loop also reads it every step)

Timing: a ``TrainerCallback`` synchronises the GPU at the end of each optimizer step and marks the time and the
real tokens trained so far (padding not counted); ``train_throughput.py`` turns the marks into tokens/s over the
steps after the warm-up, the median step time and the first step's time, as for its own variants. Peak memory is
``peftbench.system.memory.PeakMemory`` around ``trainer.train()`` (CUDA: max_memory_allocated), as peftbench's loop
records it.

Run it alone: ``python benchmarks/peer_trainer.py ARGS`` is ``train_throughput.py --variants trainer+peft ARGS``.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER = "trainer+peft"
# peftbench's lora defaults (plugins/lora/config.py), written out as a peft user would
LORA = {"r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "target_modules": "all-linear", "bias": "none"}
MIN_LR_RATE = 0.1  # peftbench's cosine ends at lr x min_lr_ratio (TrainConfig default 0.1)


class PeerUnavailable(Exception):
    """The peer has no equivalent of this method here (the message says why)."""


def batch_order(n_examples: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """The example indices of each of ``steps`` batches, as peftbench's loop draws them: its own ``batches``
    run over data whose example i is the one token i (so each collated batch spells out its indices)."""
    from peftbench.train.batching import TrainData, batches

    probe = TrainData(input_ids=[[i] for i in range(n_examples)], answer_start=[1] * n_examples, pad_id=-1)
    stream = batches(probe, batch_size, seed)
    return [next(stream)[1]["input_ids"][:, 0].tolist() for _ in range(steps)]


class OrderedExamples(torch.utils.data.Dataset):
    """The examples of ``order`` (batches of indices into ``data``), one after another, as Trainer features:
    input ids, and labels with the prompt masked (-100) as peftbench's collate masks it."""

    def __init__(self, data: Any, order: list[list[int]]) -> None:
        self.data, self.flat = data, [i for batch in order for i in batch]

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        i = self.flat[k]
        ids, start = self.data.input_ids[i], self.data.answer_start[i]
        return {"input_ids": list(ids), "labels": [-100] * start + list(ids[start:])}


def padding_collator(pad_id: int) -> Any:
    """``DataCollatorForSeq2Seq`` padding each batch to its longest example, on the right, with ``pad_id``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

    pad = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": pad_id}, unk_token="<pad>")),
                                  pad_token="<pad>", padding_side="right")
    return DataCollatorForSeq2Seq(pad, padding="longest", label_pad_token_id=-100, return_tensors="pt")


def peft_lora_config() -> Any:
    import peft

    return peft.LoraConfig(task_type="CAUSAL_LM", **LORA)


def build_model(method: str, resolved: Any, device: str, dtype: torch.dtype) -> tuple[Any, str]:
    """The model Trainer trains for ``method``, and what the peer is. Raises PeerUnavailable."""
    import peft

    if method == "qlora":
        return _qlora_model(resolved, device, dtype), "Trainer + peft LoRA on a bitsandbytes 4-bit base"
    if method not in ("full", "lora", "adapter"):
        raise PeerUnavailable(f"no Trainer + peft peer for method {method!r} (peers: full, lora, qlora, adapter)")
    base, _ = resolved.load(device, dtype)
    if method == "full":
        return base.train(), "Trainer (no peft: every weight trains)"
    if method == "lora":
        return peft.get_peft_model(base, peft_lora_config()), "Trainer + peft LoRA"
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.api.registry import collect_methods

    adapter = collect_methods(make_plugin_manager()).get("adapter")
    return adapter.prepare(base, adapter.make_config({})), \
        "Trainer over peftbench's adapter layers (peft has no bottleneck adapter)"


def _qlora_model(resolved: Any, device: str, dtype: torch.dtype) -> Any:
    """LoRA on the base loaded 4-bit by ``from_pretrained`` (the model's folder; a tiny or shape model is
    written to a temporary one first)."""
    import peft
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if device != "cuda":
        raise PeerUnavailable("the QLoRA peer loads a 4-bit base through BitsAndBytesConfig: CUDA only")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix="pb-peer-") as tmp:
        folder = resolved.path
        if not folder:
            resolved.load("cpu", dtype)[0].save_pretrained(tmp)
            folder = tmp
        base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                                    device_map={"": torch.cuda.current_device()},
                                                    local_files_only=True)
    return peft.get_peft_model(base, peft_lora_config())


class StepClock(TrainerCallback):
    """At each optimizer step's end, the GPU synchronised: (time, real tokens trained so far)."""

    def __init__(self, tokens_per_step: list[int], device: str) -> None:
        super().__init__()
        self.cumulative = [sum(tokens_per_step[:k + 1]) for k in range(len(tokens_per_step))]
        self.device = device
        self.t0: float | None = None
        self.marks: list[tuple[float, int]] = []

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync()
        self.t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync()
        self.marks.append((time.perf_counter(), self.cumulative[state.global_step - 1]))  # counted from 1


def checkpointing_args() -> dict[str, Any]:
    """TrainingArguments turning on activation checkpointing (non-reentrant, as peftbench's loop), under the
    name this transformers has (``activation_checkpointing`` since 5.2x, ``gradient_checkpointing`` before)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    name = "activation" if "activation_checkpointing" in {f.name for f in fields(TrainingArguments)} else "gradient"
    return {f"{name}_checkpointing": True, f"{name}_checkpointing_kwargs": {"use_reentrant": False}}


def run_peer(method: str, resolved: Any, data: Any, *, device: str, dtype: torch.dtype, autocast: str,
             batch_size: int, steps: int, lr: float, seed: int = 0, max_grad_norm: float = 1.0,
             gradient_checkpointing: bool = False, count_tokens: bool = False,
             on_batch: Callable[[dict[str, torch.Tensor]], None] | None = None) -> dict[str, Any]:
    """Train ``method`` on ``data`` for ``steps`` optimizer steps with Trainer; return the raw figures:
    ``t0`` and ``marks`` (per step: time, cumulative real tokens), ``peak_memory_bytes``, ``losses``, ``model``
    (for parameter counts), ``trainable``, ``peer``, ``settings``. ``count_tokens``: also let Trainer count the
    non-padding tokens it saw (``trainer_tokens_seen``; one more device sync per step, so off when timing);
    ``on_batch`` sees every batch the collator makes."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from peftbench.system.memory import PeakMemory

    if device == "cuda" and torch.cuda.device_count() > 1:
        raise PeerUnavailable("Trainer would wrap the model in DataParallel over every visible GPU: set "
                              "CUDA_VISIBLE_DEVICES to one GPU")
    order = batch_order(len(data), batch_size, seed, steps)
    tokens_per_step = [sum(len(data.input_ids[i]) for i in batch) for batch in order]
    torch.manual_seed(seed)
    model, peer = build_model(method, resolved, device, dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    collate = padding_collator(data.pad_id)
    if on_batch is not None:
        inner = collate

        def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            batch = inner(features)
            on_batch(batch)
            return batch

    clock = StepClock(tokens_per_step, device)
    bf16 = autocast == "bf16" or (autocast == "auto" and device == "cuda")
    with tempfile.TemporaryDirectory(prefix="pb-peer-out-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
            learning_rate=lr, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATE},
            warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=max_grad_norm,
            optim="adamw_torch_fused" if device == "cuda" else "adamw_torch", bf16=bf16, use_cpu=device != "cuda",
            train_sampling_strategy="sequential", remove_unused_columns=False, dataloader_drop_last=True,
            **(checkpointing_args() if gradient_checkpointing else {}),
            logging_strategy="steps", logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
            seed=seed, include_num_input_tokens_seen="non_padding" if count_tokens else "no")
        trainer = Trainer(model=model, args=args, train_dataset=OrderedExamples(data, order), data_collator=collate,
                          callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # a dict printed per logged step
        with PeakMemory(device) as mem:
            trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens_seen = int(trainer.state.num_input_tokens_seen) if count_tokens else None
    # the optimizer state and gradients go now, not whenever the collector finds them: the next variant's peak
    # memory must not hold them
    trainer.accelerator.free_memory()
    model.zero_grad(set_to_none=True)
    del trainer
    gc.collect()
    return {"t0": clock.t0, "marks": clock.marks, "peak_memory_bytes": mem.peak, "losses": losses, "model": model,
            "trainable": trainable, "peer": peer, "tokens_per_step": tokens_per_step,
            "trainer_tokens_seen": tokens_seen,
            "settings": {"optim": str(args.optim.value), "bf16": bf16, "padding": "DataCollatorForSeq2Seq, longest",
                         "logging_steps": 1, "transformers_trainer": True}}


if __name__ == "__main__":
    from train_throughput import main

    main(["--variants", PEER, *sys.argv[1:]])
