"""Training examples and the micro-batches the loop draws from them.

``tokenize_pairs`` turns (prompt, answer) pairs into ``TrainData``; ``batches`` yields micro-batches in a
seed-determined order, either padded (``collate``: one row per example) or padding-free (``collate_packed``:
the same examples packed into fewer rows, attention kept within each example). ``label_positions`` finds,
on the host, the positions the loss reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from peftbench.errors import ConfigError

TOKENIZE_CHUNK = 4096  # pairs per tokenizer call: a fast tokenizer encodes a list far quicker than one string at a time


@dataclass
class TrainData:
    """Tokenized training examples: token ids and where the answer starts in each."""

    input_ids: list[list[int]]
    answer_start: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_pairs(pairs: list[tuple[str, str]], tokenizer: Any, max_length: int) -> TrainData:
    """Tokenize (prompt, answer) pairs as lm-eval does for scoring: the whole string, with the prompt's
    tokens as its prefix; no special tokens. Over-long examples lose tokens from the left."""
    prompts, wholes = [], []
    for prompt, answer in pairs:
        n_ws = len(prompt) - len(prompt.rstrip())  # lm-eval moves trailing spaces into the continuation
        if n_ws:
            prompt, answer = prompt[:-n_ws], prompt[-n_ws:] + answer
        prompts.append(prompt)
        wholes.append(prompt + answer)
    ids, starts = [], []
    for lo in range(0, len(pairs), TOKENIZE_CHUNK):
        whole_ids = tokenizer(wholes[lo:lo + TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"]
        ctx_ids = tokenizer(prompts[lo:lo + TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"]
        for k, (whole, ctx) in enumerate(zip(whole_ids, ctx_ids, strict=True)):
            start = len(ctx)
            if start >= len(whole):
                raise ConfigError(f"a training example has an empty answer after tokenization: "
                                  f"{pairs[lo + k][0]!r} -> {pairs[lo + k][1]!r}")
            if len(whole) > max_length:
                cut = len(whole) - max_length
                whole, start = whole[cut:], max(1, start - cut)
            ids.append(list(whole))
            starts.append(start)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TrainData(ids, starts, int(pad))


def batches(data: TrainData, batch_size: int, seed: int, padding_free: bool = False,
            layout: Callable[[TrainData, list[int]], dict[str, torch.Tensor]] | None = None
            ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Endless (epoch, micro-batch) pairs in a seed-determined order (reshuffled each epoch), the same for every
    method and for every layout: ``padding_free`` packs the same examples into fewer rows, ``layout`` (e.g. a
    ``peftbench.train.buckets.Buckets``) lays them out its own way."""
    collate_fn = layout or (collate_packed if padding_free else collate)
    for epoch, idx in batch_order(data, batch_size, seed):
        yield epoch, collate_fn(data, idx)


def batch_order(data: TrainData, batch_size: int, seed: int) -> Iterator[tuple[int, list[int]]]:
    """Endless (epoch, example indices) of each micro-batch, in the order ``batches`` draws them."""
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        size = min(batch_size, len(order))
        for i in range(0, len(order) - size + 1, size):  # drop the ragged tail: every batch is full
            yield epoch, order[i:i + size]
        epoch += 1


def collate(data: TrainData, idx: list[int]) -> dict[str, torch.Tensor]:
    """One row per example, right-padded to the longest, with an attention mask."""
    width = max(len(data.input_ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), data.pad_id, dtype=torch.long)
    attention = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = torch.tensor(data.input_ids[i])
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
        labels[row, data.answer_start[i]: len(seq)] = seq[data.answer_start[i]:]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pack_rows(lengths: list[int], width: int | None = None) -> list[list[int]]:
    """First-fit decreasing: positions of ``lengths`` grouped into rows no longer than ``width`` (by default the
    longest length; every length must fit in it)."""
    width = max(lengths) if width is None else width
    rows: list[list[int]] = []
    free: list[int] = []
    for j in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, space in enumerate(free):
            if lengths[j] <= space:
                rows[r].append(j)
                free[r] -= lengths[j]
                break
        else:
            rows.append([j])
            free.append(width - lengths[j])
    return rows


def collate_packed(data: TrainData, idx: list[int]) -> dict[str, torch.Tensor]:
    """The micro-batch's examples packed into as few rows as fit, without an attention mask: position ids
    restart at 0 for each example, and the model's mask builder reads the restarts as boundaries (a block-
    diagonal causal mask: no token attends across examples). A row's trailing padding continues the last
    example's positions; it comes after every real token of the row, so causal attention keeps it out of
    every real token's view, and it carries no label. When no row holds more than one example, the position
    ids are left out: they would be the model's default ones."""
    seqs = [data.input_ids[i] for i in idx]
    rows = pack_rows([len(q) for q in seqs])
    width = max(len(q) for q in seqs)
    input_ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        off = 0
        for j in row:
            seq, start = torch.tensor(seqs[j]), data.answer_start[idx[j]]
            n = len(seq)
            input_ids[r, off:off + n] = seq
            labels[r, off + start:off + n] = seq[start:]
            position_ids[r, off:off + n] = torch.arange(n)
            off += n
        if off < width:
            last = int(position_ids[r, off - 1])
            position_ids[r, off:] = torch.arange(last + 1, last + 1 + width - off)
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
             "num_tokens": torch.tensor(sum(len(q) for q in seqs))}
    if all(len(row) == 1 for row in rows):  # nothing packed: the positions are 0, 1, 2, ... in every row, the
        del batch["position_ids"]           # model's own; without them the mask builder does not look for
    return batch                            # packing on the GPU (a device-to-host sync every forward pass)


def label_positions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where a (batch x length) micro-batch has labels, computed on the host before it moves to the GPU:
    ``label_index``, the flat positions (row * length + t) of the hidden states that predict a label (t
    predicts t + 1), and ``label_targets``, those labels. Selecting with them needs no device-to-host sync,
    as a boolean mask would (its size is known only on the device)."""
    keep = labels[:, 1:] != -100
    rows, cols = keep.nonzero(as_tuple=True)
    return {"label_index": rows * labels.shape[1] + cols, "label_targets": labels[:, 1:][keep]}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The micro-batch's tokens that are not padding."""
    return int(batch["num_tokens"]) if "num_tokens" in batch else int(batch["attention_mask"].sum())
