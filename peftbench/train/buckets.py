"""Bucketed micro-batches: the padding-free layout in a handful of fixed shapes, so compiled blocks can run
one static graph per shape (and CUDA graphs can replay them).

Every micro-batch has the same number of rows; its width is the narrowest of a few bucket widths into which
its examples pack (first-fit decreasing, as ``collate_packed`` packs; a width may exceed the longest example).
Rows, widths and the fallback are chosen before training from the run's own micro-batches (the first ``PLAN_MICRO_BATCHES`` that ``batch_order``
draws for its seed): the rows and at most ``MAX_WIDTHS`` widths into which every one of them fits with the
fewest positions computed. A later micro-batch that fits no bucket takes the fallback shape, one example per
row at the longest example's width, which holds any micro-batch of the data; every use is counted.

Padding is masked out of the loss (label -100) and out of attention: each example's position ids restart at
0, and each padding token sits at position 0, a segment of its own, so the model's mask builder lets no real
token attend padding and no example attend another.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch

from peftbench.train.batching import TrainData, batch_order, pack_rows

ALIGN = 8  # bucket widths are multiples of 8, or the longest example's length
WIDTH_CAP = 2.0  # and at most twice that length: rows of two long examples, so the row count need not cover
# the rare micro-batch of many long ones (simulated on SST-2-like and uniform lengths: 8-19 % padding against
# 14-45 % at a cap of 1.0; attention, quadratic in the width, stays within ~1.5x the padded loop's)
MAX_WIDTHS = 4  # at most this many widths, so at most MAX_WIDTHS + 1 shapes (the fallback) are compiled
WIDTH_GAIN_MIN = 0.02  # a further width is kept only if it cuts the planned positions by at least 2 %
PLAN_MICRO_BATCHES = 512  # micro-batches the choice is made on: the run's first ones, in its own order (all
# of a 300-step run at grad_accum 1)
ROW_CHOICES = 16  # at most this many candidate row counts (every one from 1 to the batch size, up to 16)


@dataclass
class Buckets:
    """A micro-batch layout (``buckets(data, idx)`` collates one): ``rows`` rows, of one of ``widths``; else
    ``fallback`` (rows, width), one example per row. ``used`` counts the shapes the run drew."""

    rows: int
    widths: tuple[int, ...]
    fallback: tuple[int, int]
    planned_from: int = 0
    planned_padding: float = 0.0
    used: Counter = field(default_factory=Counter)
    fallbacks: int = 0

    @property
    def shapes(self) -> int:
        """How many distinct (rows x width) shapes the run can draw: one per width, and the fallback's."""
        return len({(self.rows, w) for w in self.widths} | {self.fallback})

    def layout(self, lengths: list[int]) -> tuple[int, int, list[list[int]] | None]:
        """(rows, width, the examples' positions in each row) for a micro-batch of examples of ``lengths``;
        ``None`` for the positions: the fallback, one example per row."""
        total, longest = sum(lengths), max(lengths)
        for width in self.widths:
            if longest <= width and total <= self.rows * width:
                placed = pack_rows(lengths, width)
                if len(placed) <= self.rows:
                    return self.rows, width, placed
        return self.fallback[0], self.fallback[1], None

    def __call__(self, data: TrainData, idx: list[int]) -> dict[str, torch.Tensor]:
        rows, width, placed = self.layout([len(data.input_ids[i]) for i in idx])
        self.used[f"{rows}x{width}"] += 1
        if placed is None:
            self.fallbacks += 1
            placed = [[j] for j in range(len(idx))]
        return collate_rows(data, idx, placed, rows, width)

    def record(self) -> dict[str, Any]:
        """What the run file keeps (``train.loop.bucketing``)."""
        return {"rows": self.rows, "widths": list(self.widths), "fallback": f"{self.fallback[0]}x{self.fallback[1]}",
                "max_shapes": self.shapes, "planned_from_micro_batches": self.planned_from,
                "planned_padding_fraction": self.planned_padding, "fallback_micro_batches": self.fallbacks,
                "shapes_used": dict(sorted(self.used.items()))}


def collate_rows(data: TrainData, idx: list[int], placed: list[list[int]], rows: int, width: int
                 ) -> dict[str, torch.Tensor]:
    """The examples ``idx`` laid out as ``placed`` (positions in ``idx`` per row) in ``rows`` x ``width``,
    without an attention mask: position ids restart at 0 for each example and are 0 for every padding token
    (a one-token segment each: it attends only itself, and nothing attends it). When every row is one example
    filling it, the position ids are left out, as ``collate_packed`` does: they would be the model's own."""
    input_ids = torch.full((rows, width), data.pad_id, dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    n_real = 0
    for r, row in enumerate(placed):
        off = 0
        for j in row:
            seq, start = torch.tensor(data.input_ids[idx[j]]), data.answer_start[idx[j]]
            n = len(seq)
            input_ids[r, off:off + n] = seq
            labels[r, off + start:off + n] = seq[start:]
            position_ids[r, off:off + n] = torch.arange(n)
            off += n
        n_real += off
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
             "num_tokens": torch.tensor(n_real)}
    if n_real == rows * width and all(len(row) == 1 for row in placed):
        del batch["position_ids"]
    return batch


def plan_buckets(data: TrainData, batch_size: int, seed: int, micro_batches: int) -> Buckets:
    """The rows and widths (at most ``MAX_WIDTHS``) that hold each of the run's first micro-batches (at most
    ``PLAN_MICRO_BATCHES`` of its ``micro_batches``) with the fewest positions computed over them; of equal
    ones, the most rows (narrower rows: less attention)."""
    lengths = [len(x) for x in data.input_ids]
    size = min(batch_size, len(data))
    top = max(lengths)
    sample = [[lengths[i] for i in idx] for _, idx in
              islice(batch_order(data, batch_size, seed), max(1, min(micro_batches, PLAN_MICRO_BATCHES)))]
    best: tuple[int, int, tuple[int, ...]] = (size * top * len(sample) + 1, size, (top,))
    for rows in reversed(row_choices(size)):
        need = [narrowest_width(b, rows, top) for b in sample]
        if None in need:  # every planned micro-batch fits a bucket: the fallback is for the unplanned only
            continue
        widths, cost = choose_widths(Counter(need), rows)
        if cost < best[0]:
            best = (cost, rows, widths)
    cost, rows, widths = best  # (rows = size always fits: one example per row at the longest's width)
    real = sum(map(sum, sample))
    return Buckets(rows=rows, widths=widths, fallback=(size, top), planned_from=len(sample),
                   planned_padding=round(1 - real / cost, 4))


def row_choices(size: int) -> list[int]:
    """Candidate row counts: each from 1 to ``size`` (up to ``ROW_CHOICES`` of them, spread evenly)."""
    return sorted({max(1, round(size * k / ROW_CHOICES)) for k in range(1, ROW_CHOICES + 1)} | {size})


def width_steps(lo: int, top: int) -> list[int]:
    """Candidate widths from ``lo`` up to ``WIDTH_CAP`` times ``top`` (the longest example): the multiples of
    ``ALIGN``, and ``top`` itself (examples of one length then need no padding)."""
    cap = int(WIDTH_CAP * top)
    aligned = range(-(-lo // ALIGN) * ALIGN, cap + 1, ALIGN)
    return sorted({*aligned, *([top] if lo <= top else [])})


def narrowest_width(lengths: list[int], rows: int, top: int) -> int | None:
    """The narrowest candidate width (``width_steps``) whose first-fit-decreasing packing holds ``lengths``
    in at most ``rows`` rows, or ``None``."""
    lo = max(max(lengths), -(-sum(lengths) // rows))
    for width in width_steps(lo, top):
        if len(pack_rows(lengths, width)) <= rows:
            return width
    return None


def choose_widths(needs: Counter, rows: int) -> tuple[tuple[int, ...], int]:
    """At most ``MAX_WIDTHS`` widths (the widest need among them) covering ``needs`` (width -> micro-batches
    that need at least it) with the fewest positions (each micro-batch at the narrowest width it fits),
    and those positions. Fewer widths win unless a further one saves ``WIDTH_GAIN_MIN``. Exact: dynamic
    programming over the sorted needs."""
    values = sorted(needs)
    counts = [needs[v] for v in values]
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    m = len(values)
    inf = float("inf")
    # cost[k][j]: fewest positions covering values[:j + 1] with k widths, the widest values[j]; back: the cut
    cost = [[inf] * m for _ in range(MAX_WIDTHS + 1)]
    back = [[-1] * m for _ in range(MAX_WIDTHS + 1)]
    for j in range(m):
        cost[1][j] = values[j] * prefix[j + 1] * rows
    for k in range(2, MAX_WIDTHS + 1):
        for j in range(m):
            for i in range(j):  # the previous width covers up to values[i], this one values[i + 1 .. j]
                c = cost[k - 1][i] + values[j] * (prefix[j + 1] - prefix[i + 1]) * rows
                if c < cost[k][j]:
                    cost[k][j], back[k][j] = c, i
    totals = [cost[k][m - 1] for k in range(1, MAX_WIDTHS + 1)]
    least = min(totals)
    chosen = next(k for k in range(1, MAX_WIDTHS + 1) if totals[k - 1] <= least * (1 + WIDTH_GAIN_MIN))
    widths, j, k = [], m - 1, chosen
    while k >= 1:
        widths.append(values[j])
        j, k = back[k][j], k - 1
    return tuple(sorted(widths)), int(totals[chosen - 1])
