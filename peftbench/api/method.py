"""The Method API: what a fine-tuning method (built-in or third-party) implements.

A method is a small class. peftbench calls it through the per-run hooks, whose built-in defaults call
these methods; plugins can wrap or replace any phase by implementing the hook instead.

Methods are stateless: every call receives the model (and the method's config where it matters), so one
instance serves every run. A method's ``Config`` is a dataclass whose fields all carry help text in
``field(metadata={"help": ...})``; ``__post_init__`` may validate and raise
:class:`peftbench.errors.ConfigError` naming the field, the bad value and what would be valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from peftbench.errors import NotSupported, PluginError

if TYPE_CHECKING:  # keep `peftbench methods` free of a torch import
    import torch


@dataclass(frozen=True)
class Capabilities:
    """What a method can do; the runner plans a run from this and never asks for more. Every flag defaults
    to False: ``Capabilities()`` (also what a ``Method`` that sets no ``capabilities`` gets) claims nothing,
    so a method with only ``prepare``/``save``/``load`` is complete."""

    mergeable: bool = False
    """``merge``/``unmerge`` fold the trained weights into the base and back."""
    merge_lossy: bool = False
    """Merging changes the model's outputs beyond float rounding (e.g. into a quantized base)."""
    can_disable: bool = False
    """``disabled()`` runs the base model path (an adapter that can be switched off; not full fine-tuning)."""
    quantized_base: bool = False
    """The frozen base weights are quantized (QLoRA)."""
    trains_all_parameters: bool = False
    """Every parameter of the model trains (full fine-tuning)."""
    needs_cuda: bool = False
    """The method cannot run without a CUDA device."""
    can_stack: bool = False
    """``stacked(model, n)`` activates ``n`` copies of the method's modules at once (for latency)."""
    virtual_tokens: bool = False
    """The method puts learned tokens in front of the input (prompt tuning): the model computes over more
    positions than the task's, and its latency includes them."""

    def latency_modes(self, stack: tuple[int, ...] = (2, 4)) -> tuple[str, ...]:
        """Inference modes the latency timer measures for this method, besides ``base``."""
        return (("unmerged",) + (("merged",) if self.mergeable else ())
                + (tuple(f"stack{k}" for k in stack if k > 1) if self.can_stack else ()))


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class Method:
    """Base class of every method. Subclasses set the class attributes and implement ``prepare``,
    ``save`` and ``load`` (and ``merge``/``unmerge``/``disabled`` where their capabilities say so)."""

    name: ClassVar[str]
    """Registry name, e.g. ``lora`` (lower case, no spaces)."""
    Config: ClassVar[type]
    """A dataclass; every field has ``metadata={"help": ...}``."""
    capabilities: ClassVar[Capabilities] = Capabilities()
    """What the method can do beyond ``prepare``/``save``/``load``; default: nothing (every flag False)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable module names the method needs (e.g. ``("bitsandbytes",)``)."""
    default_lr: ClassVar[float] = 2e-4
    """Learning rate used when neither the user nor the task sets one."""
    default_grid: ClassVar[dict[str, tuple[Any, ...]]] = {}
    """Values ``peftbench run --tune KEY`` tries for the method's own options (``{"r": (4, 8, 16, 32)}``) and,
    under ``lr``, for its learning rate; without an ``lr`` entry: ``lr_grid(default_lr)``."""
    description: ClassVar[str] = ""

    # ---- environment -------------------------------------------------------------------------
    def availability(self, device: str) -> Availability:
        """Whether the method can run on ``device`` ('cpu' or 'cuda'); a reason when it cannot."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return Availability(False, f"needs the Python package {module!r} (pip install {module})")
        if self.capabilities.needs_cuda and device != "cuda":
            return Availability(False, "needs a CUDA device")
        return Availability(True)

    # ---- life cycle --------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, config: Any) -> torch.nn.Module:
        """Make ``model`` (the loaded base) trainable the method's way; return the model to train.
        Only the method's parameters may have ``requires_grad`` afterwards."""
        raise NotImplementedError

    def trainable_parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters the optimizer updates (default: those with ``requires_grad``)."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Fold the trained weights into the base weights (in place where possible); return the model."""
        raise NotSupported(f"method {self.name!r} cannot merge")

    def unmerge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Undo ``merge``; return the model."""
        raise NotSupported(f"method {self.name!r} cannot unmerge")

    def unload(self, model: torch.nn.Module) -> torch.nn.Module:
        """The merged model as a user would serve it: ``model`` after ``merge``, with the method's wrappers
        (which now only pass through to the merged weights) removed, e.g. peft's ``unload()``; it need not
        unmerge afterwards. The latency harness times this as the ``merged`` mode: wrappers left in place
        cost host time per layer, which eager decoding of a small model shows (+5 % at 135M). Default: the
        model as it is."""
        return model

    @contextlib.contextmanager
    def disabled(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Context in which ``model`` computes exactly what the base model computes."""
        raise NotSupported(f"method {self.name!r} cannot disable its weights")
        yield model  # pragma: no cover

    @contextlib.contextmanager
    def stacked(self, model: torch.nn.Module, n: int) -> Iterator[torch.nn.Module]:
        """Context in which ``n`` modules of the method are active at once: the trained one and ``n - 1``
        more of the same shape (series adapters one after another, LoRA adapters side by side), to time how
        inference cost grows with composition. The extra modules may hold any values (timing only); on exit
        the model is as before."""
        raise NotSupported(f"method {self.name!r} cannot stack its modules")
        yield model  # pragma: no cover

    def save(self, model: torch.nn.Module, directory: Path, config: Any) -> list[Path]:
        """Write the method's artifact (what a user would ship) into ``directory``; return its files."""
        raise NotImplementedError

    def load(self, directory: Path, base_model: torch.nn.Module, config: Any) -> torch.nn.Module:
        """Rebuild the trained model from ``directory`` onto a freshly loaded ``base_model``."""
        raise NotImplementedError

    def inference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The ``transformers`` model to evaluate and time (e.g. unwrap a ``PeftModel``)."""
        get_base = getattr(model, "get_base_model", None)
        return get_base() if callable(get_base) else model

    # ---- helpers -----------------------------------------------------------------------------
    def make_config(self, values: dict[str, Any] | None = None) -> Any:
        """Build this method's config from a mapping (e.g. parsed JSON), validating every field."""
        from peftbench.api.options import build_dataclass

        return build_dataclass(self.Config, values or {}, where=f"method {self.name!r}")

    def __repr__(self) -> str:
        return f"<Method {self.name}>"


REQUIRED = ("prepare", "save", "load")


LR_GRID_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)  # two decades centred on the default: LoRA's best lr is often ~10x full's


def lr_grid(default_lr: float) -> tuple[float, ...]:
    """The learning rates tried by default around ``default_lr`` (rounded to two significant digits)."""
    return tuple(float(f"{default_lr * f:.2g}") for f in LR_GRID_FACTORS)


def validate_method_class(obj: Any, plugin: str = "?") -> None:
    """Raise :class:`PluginError` when ``obj`` is not a usable Method class (names the class and plugin)."""
    cls = f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else repr(obj)
    where = f"method {getattr(obj, 'name', obj)!r} (class {cls}) from plugin {plugin!r}"
    if not isinstance(obj, type) or not issubclass(obj, Method):
        raise PluginError(f"{where}: expected a subclass of peftbench.Method, got {obj!r}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name or name != name.strip().lower() or " " in name:
        raise PluginError(f"{where}: class attribute 'name' must be a lower-case string, got {name!r}")
    cfg = getattr(obj, "Config", None)
    if not (isinstance(cfg, type) and dataclasses.is_dataclass(cfg)):
        raise PluginError(f"{where}: class attribute 'Config' must be a dataclass, got {cfg!r}")
    missing = [f.name for f in dataclasses.fields(cfg) if not f.metadata.get("help")]
    if missing:
        raise PluginError(f"{where}: Config fields without help text (field(metadata={{'help': ...}})): {missing}")
    for attr in REQUIRED:
        if getattr(obj, attr) is getattr(Method, attr):
            raise PluginError(f"{where}: does not implement required method {attr}()")
    caps = obj.capabilities
    if not isinstance(caps, Capabilities):
        raise PluginError(f"{where}: 'capabilities' must be a peftbench.Capabilities (or left unset: it claims "
                          f"nothing), got {caps!r}")
    claims = [("mergeable", ("merge", "unmerge")), ("can_stack", ("stacked",)), ("can_disable", ("disabled",))]
    for flag, members in claims:
        absent = [m for m in members if getattr(obj, m) is getattr(Method, m)]
        if getattr(caps, flag) and absent:
            raise PluginError(f"{where}: capabilities say {flag} but {'/'.join(f'{m}()' for m in absent)} "
                              f"{'is' if len(absent) == 1 else 'are'} not implemented: implement "
                              f"{'them' if len(absent) > 1 else 'it'}, or leave {flag} False (its default)")
