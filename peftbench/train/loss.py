"""The training loss: mean cross-entropy over the answer tokens.

``answer_loss`` runs the model on a micro-batch and scores the tokens that carry a label. The naive loop uses
the model's own forward and its full logits; the fast one runs the transformer body alone and the LM head only
on the labelled positions, and, with ``chunked``, through ``linear_cross_entropy``.

``linear_cross_entropy(hidden, weight, labels)`` equals ``F.cross_entropy(F.linear(hidden, weight).float(),
labels)``, but runs the head a chunk of tokens at a time and computes both gradients (of the hidden states
and of the head's weight) inside the forward pass, so at most one chunk of fp32 logits exists at any moment
and nothing is recomputed in the backward pass. With a 49k-128k vocabulary the full logits of one batch
(plus their fp32 copy and the softmax gradient) are gigabytes; a chunk is a few hundred megabytes.

The matrix products run in the dtype autocast gives them (bf16 on CUDA), as ``F.linear`` would; the softmax,
the loss and the head's gradient accumulate in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunked: bool = False,
                naive: bool = False) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (positions with a label). ``naive``: the model's own forward
    and full logits; ``chunked``: the head and the loss a chunk of tokens at a time (``linear_cross_entropy``)."""
    labels = batch["labels"][:, 1:]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = None if naive else decoder_and_head(model)
    if parts is None:  # generic path: full logits
        logits = model(**inputs).logits
        keep = labels != -100
        return F.cross_entropy(logits[:, :-1][keep].float(), labels[keep])
    decoder, head = parts
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    if "label_index" in batch:  # the labelled positions, found on the host: no device-to-host sync here
        hidden, targets = hidden.flatten(0, 1).index_select(0, batch["label_index"]), batch["label_targets"]
    else:
        keep = labels != -100
        hidden, targets = hidden[:, :-1][keep], labels[keep]
    if chunked and is_plain_linear(head):
        with gathered(head):
            return linear_cross_entropy(hidden, head.weight, targets)
    return F.cross_entropy(head(hidden).float(), targets)


@contextlib.contextmanager
def gathered(module: torch.nn.Module) -> Iterator[None]:
    """Context: a module sharded by FSDP2 (the LM head, under several processes) holds its whole weight;
    resharded after. The chunked loss reads the head's weight outside its forward, where FSDP would not
    gather it, and computes its gradients inside its own forward, so the whole weight is not needed after.
    Only for a frozen head (``plan_loop`` turns the chunked loss off for a trainable sharded one: FSDP would
    not reduce its gradient). An unsharded module: nothing to do."""
    unshard = getattr(module, "unshard", None)
    if unshard is None:
        yield
        return
    unshard()
    try:
        yield
    finally:
        module.reshard()


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The transformer body and the LM head, so the head runs only where the loss needs it. ``None``
    when the model does not expose them (or a PEFT prompt-learning method needs its own forward)."""
    cfg = getattr(model, "active_peft_config", None)
    if cfg is not None and getattr(cfg, "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None  # the model transforms its logits after the head (Gemma 2 soft-capping, Cohere's scale)
    get_dec, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if not (callable(get_dec) and callable(get_head)):
        return None
    dec, head = get_dec(), get_head()
    return (dec, head) if dec is not None and head is not None else None


def is_plain_linear(head: torch.nn.Module) -> bool:
    """Whether ``head`` is a bias-free ``nn.Linear`` (what ``linear_cross_entropy`` computes), or one FSDP2
    sharded (its class then is ``FSDPLinear``, made of ``FSDPModule`` and ``Linear`` alone)."""
    cls = type(head)
    plain = cls is torch.nn.Linear or (cls.__bases__[-1:] == (torch.nn.Linear,) and hasattr(head, "unshard")
                                       and len(cls.__bases__) == 2)
    return plain and head.bias is None


# ---- the chunked linear cross-entropy ---------------------------------------------------------------------

LOGITS_PER_CHUNK = 2**26  # fp32 elements of one chunk's logits (256 MiB)


def chunk_rows(vocab: int) -> int:
    """Tokens per chunk for a vocabulary of ``vocab``: a chunk's fp32 logits stay near ``LOGITS_PER_CHUNK``."""
    return max(64, LOGITS_PER_CHUNK // max(1, vocab))


def _chunk_loss(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits ``x`` of one chunk: each row's log-sum-exp, and the chunk's summed cross-entropy."""
    lse = torch.logsumexp(x, dim=-1)
    return lse, (lse - x.gather(1, labels[:, None]).squeeze(1)).sum()


def _chunk_eager(logits: torch.Tensor, labels: torch.Tensor, inv_n: torch.Tensor, need_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk's summed loss and d(mean loss)/d logits = (softmax - onehot) / n, in the logits' dtype (the
    softmax in fp32, built in place in one fp32 buffer)."""
    x = logits.float()
    lse, loss = _chunk_loss(x, labels)
    if not need_grad:
        return loss, None
    grad = x.sub_(lse[:, None]).exp_()
    grad[torch.arange(grad.shape[0], device=grad.device), labels] -= 1.0
    return loss, grad.mul_(inv_n).to(logits.dtype)


def _chunk_fusable(logits: torch.Tensor, labels: torch.Tensor, inv_n: torch.Tensor, need_grad: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same as ``_chunk_eager`` written for the compiler (no in-place ops, the one-hot as a comparison),
    which fuses it into a reduction and one elementwise pass over the chunk's logits. ``inv_n`` is a 0-d
    tensor, not a Python float: the compiler would make a float a constant of the graph and compile again
    for every new token count."""
    x = logits.float()
    lse, loss = _chunk_loss(x, labels)
    if not need_grad:
        return loss, None
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == labels[:, None]
    return loss, ((torch.exp(x - lse[:, None]) - onehot.to(x.dtype)) * inv_n).to(logits.dtype)


class _Fused:
    """The compiled chunk kernel, when the training loop turns it on (``fused_chunks``); a compile failure
    turns it off for good and is kept in ``failure``."""

    fn: Any = None
    failure: str | None = None


def _chunk_loss_and_grad(logits: torch.Tensor, labels: torch.Tensor, inv_n: torch.Tensor, need_grad: bool
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if _Fused.fn is not None:
        try:
            return _Fused.fn(logits, labels, inv_n, need_grad)
        except Exception as e:  # the compiler could not handle it here: eager from now on, and say why
            _Fused.fn, _Fused.failure = None, f"{type(e).__name__}: {str(e)[:300]}"
    return _chunk_eager(logits, labels, inv_n, need_grad)


class fused_chunks:
    """Context: within it, each chunk's softmax and gradient run as one compiled kernel (``backend``: a
    ``torch.compile`` backend). ``status`` after exit: 'fused', or 'fused failed, eager: reason'."""

    def __init__(self, backend: Any = "inductor") -> None:
        self.backend, self.status = backend, "fused"

    def __enter__(self) -> fused_chunks:
        _Fused.fn = torch.compile(_chunk_fusable, backend=self.backend, dynamic=True)
        _Fused.failure = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if _Fused.failure:
            self.status = f"fused failed, eager: {_Fused.failure}"
        _Fused.fn = None


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]
                chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else hidden.dtype
        w = weight.to(dtype)
        h_all = hidden.to(dtype)
        grad_hidden = torch.empty_like(h_all) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        need_grad = grad_hidden is not None or grad_weight is not None
        # a fill kernel, not torch.tensor(1 / n, device=...): that copies from the host and waits for the GPU to
        # finish the forward pass queued so far (a device sync in the middle of every step)
        inv_n = torch.full((), 1.0 / n, dtype=torch.float32, device=hidden.device)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for lo in range(0, n, chunk):
                h = h_all[lo:lo + chunk]
                y = labels[lo:lo + chunk]
                logits = h @ w.t()
                loss_sum, grad = _chunk_loss_and_grad(logits, y, inv_n, need_grad)
                total += loss_sum
                if not need_grad:
                    continue
                if grad_hidden is not None:
                    grad_hidden[lo:lo + chunk] = grad @ w
                if grad_weight is not None:
                    grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight) if t is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        gh = saved.pop(0) * grad_out if ctx.has[0] else None
        gw = saved.pop(0) * grad_out if ctx.has[1] else None
        return (gh.to(ctx.dtypes[0]) if gh is not None else None,
                gw.to(ctx.dtypes[1]) if gw is not None else None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (``hidden``: tokens x d; ``weight``: vocab x d) against
    ``labels`` (no ignored positions: select the labelled tokens first)."""
    if hidden.shape[0] == 0:
        raise ValueError("linear_cross_entropy needs at least one labelled token")
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk or chunk_rows(weight.shape[0]))
