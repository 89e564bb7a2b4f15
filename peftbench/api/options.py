"""Configuration: dataclasses with help text, built from mappings or ``--set KEY=VALUE`` strings.

Every error names the field, the bad value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from peftbench.errors import ConfigError, did_you_mean


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


DTYPES = ("auto", "fp32", "bf16")
LATENCY_KEYS = ("latency_rounds", "latency_batch_sizes", "latency_prompt_lengths", "latency_new_tokens",
                "latency_regimes", "latency_stack", "latency_dtype")  # the options that shape a latency grid
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw")


@dataclass
class TrainConfig:
    """Options shared by every method: the same loop, data and budget for all."""

    steps: int = _help("optimizer steps to train (the budget); the task sets a default per device", default=0)
    epochs: float = _help("passes over the training split (0: use steps or max_tokens)", default=0.0)
    max_tokens: int = _help("stop once this many training tokens were seen (0: no token budget)", default=0)
    batch_size: int = _help("examples per micro-batch", default=8)
    grad_accum: int = _help("micro-batches per optimizer step (gradient accumulation)", default=1)
    lr: float = _help("peak learning rate (0: the task's per-method value, else the method's default)", default=0.0)
    warmup_ratio: float = _help("fraction of steps with linear learning-rate warm-up", default=0.1)
    min_lr_ratio: float = _help("cosine decay ends at lr * min_lr_ratio", default=0.1)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_grad_norm: float = _help("gradient clipping norm (0: off)", default=1.0)
    max_length: int = _help("truncate training examples to this many tokens (from the left)", default=512)
    dtype: str = _help("'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fp32' or 'bf16'", default="auto")
    eval_batch_size: int = _help("batch size for lm-eval scoring", default=32)
    limit: int = _help("score at most this many evaluation examples (0: all)", default=0)
    num_fewshot: int = _help("few-shot examples in the scoring prompt", default=0)
    latency_rounds: int = _help("timed rounds per latency mode and shape (median reported; 0: skip latency)",
                                default=5)
    latency_batch_sizes: list[int] = _help("batch sizes of the latency grid", default_factory=lambda: [1])
    latency_prompt_lengths: list[int] = _help("prompt lengths (tokens) of the latency grid",
                                              default_factory=lambda: [128])
    latency_new_tokens: int = _help("tokens generated per latency round (>= 2)", default=32)
    latency_regimes: list[str] = _help("'eager' (generate, dynamic cache) and/or 'static' (static cache; a CUDA "
                                       "graph on GPU)", default_factory=lambda: ["eager"])
    latency_stack: list[int] = _help("also time 2, 4, ... of the method's modules active at once (stackable "
                                     "methods; e.g. 2,4)", default_factory=list)
    latency_dtype: str = _help("weights' dtype while timing: 'auto' (bf16 on CUDA, fp32 on CPU), 'bf16', 'fp32'",
                               default="auto")
    latency_once: bool = _help("time each method once per session (its first cell) and reuse those figures, "
                               "marked with the cell they come from, in its other cells: latency depends on the "
                               "shapes and placement of a method's weights, not their values (a session continued "
                               "with --resume reuses its kept cells' timings). false: time every cell",
                               default=True)
    merge_eval: bool = _help("score the merged model with lm-eval too (mergeable methods)", default=True)
    merge_precisions: bool = _help("also compare merging in fp32 then casting to bf16 with merging in bf16 "
                                   "(mergeable methods; logits and lm-eval score vs the unmerged bf16 model)",
                                   default=True)
    log_every: int = _help("record the loss every N steps", default=1)
    evaluate: str = _help("'auto' (score with lm-eval, except on shape: models, whose random weights carry no "
                          "accuracy), 'on', or 'off' (cost only: training, artifact, merge and reload checks, latency)",
                          default="auto")
    loop: str = _help("'fast' (the optimisations below, as set) or 'naive' (the plain loop: padded batches, the "
                      "model's own full-logit loss, no compile; overrides padding_free, chunked_loss and compile)",
                      default="fast")
    padding_free: bool = _help("pack each micro-batch's examples into as few rows as fit (no attention across "
                               "examples), so padding is not computed", default=True)
    chunked_loss: bool = _help("cross-entropy through the LM head a chunk of tokens at a time: no full "
                               "(tokens x vocabulary) logits tensor", default=True)
    compile: str = _help("torch.compile of each repeated transformer block: 'auto' (on CUDA, for runs of 500+ "
                         "optimizer steps, which pay back the compilation), 'on', 'off'",
                         default="auto")
    compile_mode: str = _help("how compiled blocks run: 'default', or 'reduce-overhead' (CUDA graphs: each "
                              "block's kernels replayed with one launch; for steps bound by launching kernels, "
                              "e.g. a small model; needs batches of one shape: with varying shapes it is not "
                              "used, and the run's notes say so)", default="default")
    gradient_checkpointing: bool = _help("recompute each block's activations in the backward pass (less memory, "
                                         "~1/3 more compute)", default=False)
    optimizer: str = _help("'adamw' (torch; fused on CUDA), 'adamw_8bit', 'paged_adamw_8bit' or 'paged_adamw' "
                           "(bitsandbytes)", default="adamw")

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train option {name!r} must be >= 1, got {getattr(self, name)!r}.")
        for name in ("steps", "epochs", "max_tokens", "limit", "num_fewshot", "latency_rounds", "lr", "weight_decay",
                     "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train option {name!r} must be >= 0, got {getattr(self, name)!r}.")
        for name in ("warmup_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train option {name!r} must be between 0 and 1, got {getattr(self, name)!r}.")
        budgets = [n for n in ("steps", "epochs", "max_tokens") if getattr(self, n)]
        if len(budgets) > 1:
            raise ConfigError(f"train options {' and '.join(budgets)} are both set; the budget is one of steps, epochs "
                              "or max_tokens.")
        for name, valid in (("dtype", DTYPES), ("latency_dtype", DTYPES), ("loop", ("fast", "naive")),
                            ("compile", ("auto", "on", "off")), ("evaluate", ("auto", "on", "off")),
                            ("compile_mode", ("default", "reduce-overhead")),
                            ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"train option {name!r} must be one of {', '.join(valid)}; got "
                                  f"{getattr(self, name)!r}.{did_you_mean(str(getattr(self, name)), valid)}")
        if any(k < 2 for k in self.latency_stack):
            raise ConfigError(f"train option 'latency_stack' lists how many modules to stack (each >= 2); got "
                              f"{self.latency_stack}.")
        if self.latency_rounds:
            self.latency_plan()  # validates the grid

    def latency_plan(self) -> Any:
        from peftbench.latency.timer import LatencyPlan

        return LatencyPlan(batch_sizes=list(self.latency_batch_sizes), prompt_lengths=list(self.latency_prompt_lengths),
                           new_tokens=self.latency_new_tokens, rounds=self.latency_rounds,
                           regimes=list(self.latency_regimes))


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """Name, type, default and help of each field (for ``peftbench methods`` and the docs)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                    "help": f.metadata.get("help", "")})
    return out


def options_markdown() -> str:
    """docs/training-options.md: every shared training option, generated from ``TrainConfig``."""
    lines = ["# Training options", "",
             "Shared by every method (the same loop, data and budget for all); set with `peftbench run --set "
             "KEY=VALUE`, listed by `peftbench options`. A method's own options are `--set METHOD.KEY=VALUE` "
             "(`peftbench methods`). Generated from `peftbench.api.options.TrainConfig` by `peftbench options "
             "--markdown`; a test keeps it current.", "",
             "| option | type | default | what it does |", "|---|---|---|---|"]
    for r in describe_fields(TrainConfig):
        default = (",".join(map(str, r["default"])) or "none") if isinstance(r["default"], list) else r["default"]
        lines.append(f"| `{r['name']}` | {r['type']} | `{default}` | {r['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON value) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin in (list, tuple):
        item = args[0] if args else str
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{where}: {value!r} is not a JSON list ({e.msg}).") from None
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list (comma-separated or JSON), got {value!r}.")
        items = [coerce(v, item, where) for v in value]
        return items if origin is list else tuple(items)
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}.")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}.")
    return value


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, coercing types; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"Unknown option {key!r} for {where}.{did_you_mean(key, names)} "
                              f"Valid options: {', '.join(names)}.")
        kwargs[key] = coerce(value, hints[key], f"option {key!r} of {where}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_jsonable(obj: Any) -> Any:
    """A dataclass (or nested structure) as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def parse_sets(items: list[str], method_names: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split ``--set`` strings into training options and per-method options.

    ``KEY=VALUE`` sets a training option (see :class:`TrainConfig`); ``METHOD.KEY=VALUE`` sets an option of
    that method's config. Values stay strings here; they are typed when the configs are built.
    """
    train: dict[str, Any] = {}
    per_method: dict[str, dict[str, Any]] = {}
    train_names = [f.name for f in dataclasses.fields(TrainConfig)]
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE or METHOD.KEY=VALUE, e.g. --set lr=1e-4 "
                              "or --set lora.r=8.")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            method, sub = key.split(".", 1)
            if method.split("@", 1)[0] not in method_names:  # NAME@LABEL: a variant of NAME
                raise ConfigError(f"--set {item!r}: unknown method {method!r}.{did_you_mean(method, method_names)}"
                                  f" Methods: {', '.join(sorted(method_names))}.")
            per_method.setdefault(method, {})[sub] = value
        else:
            if key not in train_names:
                raise ConfigError(f"--set {item!r}: unknown training option {key!r}.{did_you_mean(key, train_names)}"
                                  f" Training options: {', '.join(train_names)}; method options are set as "
                                  "METHOD.KEY=VALUE (see `peftbench methods`).")
            train[key] = value
    return train, per_method
