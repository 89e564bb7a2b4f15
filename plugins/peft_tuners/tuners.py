"""What peftbench adds to each PEFT tuner: its default learning rate (with where it comes from), its default
tuning grid, and, for the tuners it does not offer for a reason no measurement can show, that reason.

Learning rates: the ``optimizer_kwargs.lr`` of the tuner's best-scoring experiment (test accuracy) in PEFT's
own benchmark, ``method_comparison/MetaMathQA`` of huggingface/peft at commit 5d602fd (Llama-3.2-3B, 5000
steps of batch 4, AdamW, cosine schedule); an experiment without ``training_params.json`` runs at the suite's
``default_training_params.json`` lr, 1e-4. The score is quoted so that a reader sees how well that lr did.
These are a starting point for a fair race, not a tuned value for your model: ``--tune lr`` searches two
decades around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUITE = "PEFT method_comparison/MetaMathQA"
SUITE_DEFAULT = f"{SUITE} default_training_params.json (no experiment sets its own lr)"


@dataclass(frozen=True)
class Tuner:
    lr: float
    lr_source: str
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # a method option's values for --tune
    not_offered: str = ""  # why peftbench cannot run it faithfully, whatever a measurement shows
    base: str = ""  # a tuner of its own name that is another's config with other defaults (dora: lora's)
    defaults: dict[str, Any] = field(default_factory=dict)  # those defaults


def _exp(name: str, accuracy: float) -> str:
    return f"{SUITE} experiment {name} (test accuracy {accuracy:.3f})"


RANK = {"r": (4, 8, 16, 32)}

NEEDS_STEP_HOOK = ("AdaLoRA reallocates its ranks through update_and_allocate() after every optimizer step; "
                   "peftbench's shared training loop does not call it, so it would train as plain LoRA on an "
                   "SVD parametrisation, not as AdaLoRA")
MULTI_TASK = ("a multi-task tuner: every example needs a task id (task_ids), and a peftbench run trains on one "
              "task")
TUNERS: dict[str, Tuner] = {
    "lora": Tuner(1e-4, _exp("lora/llama-3.2-3B-rank64-rslora", 0.513), RANK),
    "dora": Tuner(1e-4, _exp("lora/llama-3.2-3B-rank32-dora", 0.469), RANK, base="lora",
                  defaults={"use_dora": True}),  # PEFT has DoRA as a LoRA switch; users ask for it by name
    "adalora": Tuner(1e-4, _exp("adalora/llama-3.2-3B-rank32", 0.373), RANK, not_offered=NEEDS_STEP_HOOK),
    "adamss": Tuner(1e-4, _exp("adamss/llama-3.2-3B-rank32", 0.345), RANK),
    "adaption_prompt": Tuner(5e-3, _exp("adaptionprompt/llama-3.2-3B-lr_5e-3", 0.384),
                             {"adapter_len": (5, 10, 20)}),
    "beft": Tuner(1e-4, _exp("beft/llama-3.2-3B-target-v_proj", 0.321)),
    "boft": Tuner(1e-4, _exp("boft/llama-3.2-3B-default", 0.343), {"boft_block_size": (2, 4, 8)}),
    "c3a": Tuner(0.3, _exp("c3a/llama-3.2-3B-default", 0.487)),
    "cartridge": Tuner(1e-4, SUITE_DEFAULT),
    "cpt": Tuner(1e-4, SUITE_DEFAULT, not_offered=(
        "CPT (context-aware prompt tuning) needs the token ids and type masks of its few-shot context "
        "(cpt_token_ids, cpt_mask, cpt_tokens_type_mask), built from the task's examples")),
    "deft": Tuner(1e-4, _exp("deft/llama-3.2-3B-rank32", 0.482), RANK),
    "delora": Tuner(1e-3, _exp("delora/llama-3.2-3B-rank32", 0.468), RANK),
    "fourierft": Tuner(1e-4, _exp("fourierft/llama-3.2-3B-n_frequency-5000", 0.096),
                       {"n_frequency": (250, 1000, 4000)}),
    "frod": Tuner(1e-4, _exp("frod/llama-3.2-3B-default", 0.509)),
    "glora": Tuner(1e-4, _exp("glora/llama-3.2-3B-default", 0.418), RANK),
    "gralora": Tuner(2e-4, _exp("gralora/llama-3.2-3B-rank32", 0.495), RANK),
    "hira": Tuner(4.5e-3, _exp("hira/llama-3.2-3B-rank32-lr4.5e-3", 0.513), RANK),
    "hra": Tuner(1e-4, f"{SUITE} experiment hra/llama-3.2-3B-rank32 (default lr; no result file)", RANK),
    "ia3": Tuner(5e-3, _exp("ia3/llama-3.2-3B-all-attn-5k-lr0.005", 0.455)),
    "lily": Tuner(1e-4, _exp("lily/llama-3.2-3B-rank140-mlp-a2-b2-s8.0", 0.526), RANK),
    "ln_tuning": Tuner(1e-4, _exp("ln_tuning/llama-3.2-3B-default", 0.0)),
    "loha": Tuner(1e-4, _exp("loha/llama-3.2-3B-rank32", 0.393), RANK),
    "lokr": Tuner(3e-3, _exp("lokr/llama-3.2-3B-rank32-factor4-lr0.003", 0.466), RANK),
    "miss": Tuner(1e-4, _exp("miss/llama-3.2-3B-bat", 0.504), RANK),
    "multitask_prompt_tuning": Tuner(1e-3, SUITE_DEFAULT, not_offered=MULTI_TASK),
    "oft": Tuner(1e-4, _exp("oft/llama-3.2-3B-rank32", 0.491), RANK),
    "osf": Tuner(5e-5, _exp("osf/llama-3.2-3B-rank128", 0.427)),
    "p_tuning": Tuner(1e-4, _exp("ptuning/llama-3.2-3B-default", 0.350)),
    "peanut": Tuner(1e-4, _exp("peanut/llama-3.2-3B-rank32-relu-depth0-s2.0", 0.449), RANK),
    "poly": Tuner(1e-4, SUITE_DEFAULT, not_offered=MULTI_TASK),
    "prefix_tuning": Tuner(5e-3, _exp("prefixtuning/llama-3.2-3B-tokens50-init_prefix-lr_0.005", 0.416)),
    "prompt_tuning": Tuner(1e-3, _exp("prompt_tuning/llama-3.2-3B-sample_vocab-lr_0.001", 0.343)),
    "psoft": Tuner(1e-4, _exp("psoft/llama-3.2-3B-fast", 0.450), RANK),
    "pvera": Tuner(3e-3, _exp("pvera/llama-3.2-3B-rank64", 0.356)),
    "randlora": Tuner(1e-4, _exp("randlora/llama-3.2-3B-default", 0.478)),
    "road": Tuner(1e-3, _exp("road/llama-3.2-3B-lr_0.001", 0.385)),
    "shadow": Tuner(1e-4, SUITE_DEFAULT),
    "shira": Tuner(3e-4, _exp("shira/llama-3.2-3B-lr_0.0003-random_seed_42", 0.510)),
    "supertuning": Tuner(1e-4, f"{SUITE} experiments supertuning/* (default lr; no result files)"),
    "tinylora": Tuner(1e-3, _exp("tinylora/llama-3.2-3B-default", 0.012)),
    "trainable_tokens": Tuner(0.2, _exp("trainable_tokens/llama-3.2-3B-sos+eos", 0.246), not_offered=(
        "it trains the embeddings of the token ids it is given (token_indices, e.g. newly added special "
        "tokens); peftbench's tasks add none")),
    "unilora": Tuner(1e-4, _exp("unilora/llama-3.2-3B-default", 0.002)),
    "vblora": Tuner(1e-4, _exp("vblora/llama-3.2-3B-default", 0.334)),
    "vera": Tuner(1e-3, _exp("vera/llama-3.2-3B-default", 0.354), {"r": (64, 128, 256, 512)}),
    "waveft": Tuner(1e-4, _exp("waveft/llama-3.2-3B-n_frequency-5000", 0.403)),
    "xlora": Tuner(1e-4, SUITE_DEFAULT, not_offered=(
        "X-LoRA mixes LoRA adapters already trained (its adapters option names them): it is not trained from "
        "a base model alone")),
}
