import math

import pytest
import torch
import torch.nn.functional as F

from peftbench.errors import ConfigError
from peftbench.train.batching import TrainData, batches, collate, tokenize_pairs
from peftbench.train.config import TrainConfig
from peftbench.train.loop import train
from peftbench.train.loss import answer_loss
from peftbench.train.optim import lr_at


class CharTok:
    """A character tokenizer: one id per character (ord % 97 + 3)."""

    pad_token_id = 0
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):  # a string or a list of them, as HF tokenizers take
        def encode(t):
            return [ord(c) % 97 + 3 for c in t]

        return {"input_ids": [encode(t) for t in text] if isinstance(text, list) else encode(text)}


def test_tokenize_marks_only_the_answer():
    data = tokenize_pairs([("Q: ab\nA:", " yes")], CharTok(), 64)
    assert data.answer_start == [len("Q: ab\nA:")]
    assert len(data.input_ids[0]) == len("Q: ab\nA: yes")


def test_trailing_prompt_space_moves_into_the_answer_as_lm_eval_does():
    data = tokenize_pairs([("Q: ab\nA: ", "yes")], CharTok(), 64)
    assert data.answer_start == [len("Q: ab\nA:")]


def test_truncation_keeps_the_answer():
    data = tokenize_pairs([("x" * 50, " yes")], CharTok(), 10)
    assert len(data.input_ids[0]) == 10 and data.answer_start[0] == 6


def test_collate_pads_right_and_labels_answer_only():
    data = TrainData([[5, 6, 7, 8], [5, 6]], [2, 1], pad_id=0)
    b = collate(data, [0, 1])
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [-100, 6, -100, -100]]


def test_data_order_depends_on_seed_only_and_covers_each_epoch():
    data = TrainData([[i, i + 1] for i in range(10)], [1] * 10, 0)
    first = [b["input_ids"][:, 0].tolist() for _, (_, b) in zip(range(5), batches(data, 2, seed=3), strict=False)]
    again = [b["input_ids"][:, 0].tolist() for _, (_, b) in zip(range(5), batches(data, 2, seed=3), strict=False)]
    other = [b["input_ids"][:, 0].tolist() for _, (_, b) in zip(range(5), batches(data, 2, seed=4), strict=False)]
    assert first == again and first != other
    assert sorted(sum(first, [])) == list(range(10))  # one epoch = every example once


def test_lr_schedule_warmup_peak_and_floor():
    assert lr_at(0, 100, 1.0, 0.1, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 0.1, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 100, 1.0, 0.1, 0.1) == pytest.approx(0.1)


def _tiny():
    from peftbench.models.sources import load_model

    return load_model("tiny:llama", device="cpu")[:2]


def test_answer_loss_equals_full_logits_loss():
    model, _ = _tiny()
    data = TrainData([[5, 6, 7, 8, 9], [10, 11, 12]], [3, 1], 0)
    batch = collate(data, [0, 1])
    fast = answer_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                          ignore_index=-100)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)


def test_training_lowers_the_loss_and_reports_figures():
    model, tok = _tiny()
    pairs = [(f"Item {i}:", " dax" if i % 2 else " wug") for i in range(32)]
    data = tokenize_pairs(pairs, tok, 64)
    params = [p for p in model.parameters()]
    res = train(model, params, data, TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_ratio=0.1), 0, "cpu")
    assert res.steps == 30 and len(res.losses) == 30
    assert res.losses[-1][1] < 0.5 * res.losses[0][1]
    assert res.examples == 240 and res.epochs == pytest.approx(240 / 32)
    assert res.peak_memory_bytes > 0 and res.tokens_per_s > 0


def test_token_budget_stops_training():
    model, tok = _tiny()
    data = tokenize_pairs([("ab", " c")] * 8, tok, 16)  # 3 tokens each
    res = train(model, list(model.parameters()), data, TrainConfig(steps=0, max_tokens=30, batch_size=2), 0, "cpu")
    assert res.tokens >= 30 and res.tokens - 6 < 30  # stops at the first step that reaches the budget


def test_no_budget_is_an_error():
    model, tok = _tiny()
    data = tokenize_pairs([("ab", " c")], tok, 16)
    with pytest.raises(ConfigError, match="no training budget"):
        train(model, list(model.parameters()), data, TrainConfig(steps=0), 0, "cpu")


def test_same_seed_same_losses():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model, tok = _tiny()
        data = tokenize_pairs([(f"Item {i}:", " x") for i in range(16)], tok, 32)
        runs.append(train(model, list(model.parameters()), data, TrainConfig(steps=5, batch_size=4, lr=1e-3), 7, "cpu").losses)
    assert runs[0] == runs[1]
