"""Scoring the answer choices that share a context in one packed row (peftbench.evaluate.shared_context): the
rows, the mask, the same log-probabilities as lm-eval's own path on tiny:llama, the fallback when a model's
attention ignores the mask, and the option."""

import pytest
import torch

from peftbench.errors import ConfigError
from peftbench.evaluate.config import EvalConfig
from peftbench.evaluate.shared_context import SharedContextScorer, attention_mask, pack
from peftbench.testing import tiny_llama


def _requests(vocab: int, max_length: int):
    """Three contexts with four continuations of 1-3 tokens each, two contexts of one request, and one
    request lm-eval truncates from the left (longer than max_length + 1)."""
    g = torch.Generator().manual_seed(0)

    def toks(n):
        return torch.randint(5, vocab - 1, (n,), generator=g).tolist()

    reqs = []
    for c in range(3):
        context = toks(6 + 3 * c)
        reqs += [((f"ctx{c}", f"choice{k}"), context, toks(1 + k % 3)) for k in range(4)]
    reqs += [(("alone", "a"), toks(5), toks(2)), (("alone", "b"), toks(9), toks(1)),
             (("long", "x"), toks(max_length), toks(3))]
    return [reqs[i] for i in torch.randperm(len(reqs), generator=g).tolist()]  # contexts interleaved


def _hflm(model, tokenizer, batch_size=4):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")


def test_pack_puts_each_context_once_and_continuations_after_it():
    reqs = [("a", [1, 2, 3], [7]), ("b", [1, 2, 3], [8, 9, 10]), ("c", [4, 5], [6, 6]), ("d", [1] * 9, [2, 2])]
    rows, left = pack(reqs, max_length=8)
    assert left == [3]  # 9 + 2 tokens > max_length + 1: lm-eval truncates it, so its own path scores it
    first = next(r for r in rows if r.tokens[:3] == [1, 2, 3])
    assert first.tokens == [1, 2, 3, 8, 9] and first.positions == [0, 1, 2, 3, 4] and first.segments == [0, 0, 0, 2, 2]
    # request a: predicted from the context's last token; b: from it, then from its own first two tokens
    assert first.placed == [(0, [2], [7]), (1, [2, 3, 4], [8, 9, 10])]
    rows, _ = pack([("a", [1, 2, 3], [7, 7, 7, 7]), ("b", [1, 2, 3], [8, 8, 8, 8])], max_length=6)
    assert [r.tokens for r in rows] == [[1, 2, 3, 7, 7, 7], [1, 2, 3, 8, 8, 8]]  # a full row starts another


def test_the_mask_lets_a_continuation_see_the_context_and_itself_only():
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = attention_mask(seg, torch.float32)[0, 0] == 0
    assert allowed[3].tolist() == [True, True, True, True, False, False]  # continuation 1: context + itself
    assert allowed[4].tolist() == [True, True, False, False, True, False]  # continuation 2 skips continuation 1
    assert allowed[1].tolist() == [True, True, False, False, False, False]  # the context is causal
    assert allowed[5].tolist() == [True, True, False, False, False, False]  # padding: seen by none, never read


@pytest.fixture(scope="module")
def scored():
    """tiny:llama, lm-eval's HFLM on it, the requests, and lm-eval's own answers to them."""
    model, tokenizer = tiny_llama()
    model.eval()
    lm = _hflm(model, tokenizer)
    reqs = _requests(model.config.vocab_size, lm.max_length)
    return model, lm, reqs, lm._loglikelihood_tokens(reqs, disable_tqdm=True)


def test_packed_scores_are_lm_evals_own_on_tiny_llama(scored):
    model, lm, reqs, theirs = scored
    scorer = SharedContextScorer(model, 4, lm.device, lm.max_length, lm.softmax_dtype)
    ours = scorer.score(reqs, lambda r: lm._loglikelihood_tokens(r, disable_tqdm=True))
    assert [g for _, g in ours] == [g for _, g in theirs]
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, theirs, strict=True)) < 1e-5
    record = scorer.record()
    assert record["kind"] == "shared_context" and record["fallback"] is None
    # 15 requests: 12 in 3 rows (one per shared context), 2 alone, the long one by lm-eval
    assert (record["requests"], record["forward_rows"], record["by_lm_eval"]) == (15, 5, 1)
    rows, _ = pack(reqs, lm.max_length)
    assert record["checked_requests"] == sum(len(r.placed) for r in rows[:3])  # the first 3 rows, checked
    assert record["max_abs_logprob_diff"] < 1e-5


class _IgnoresTheMask(torch.nn.Module):
    """A model whose forward drops the attention mask and position ids (as flash attention, or a method that
    runs its own forward, would not honour them)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.inner(input_ids=input_ids)


def test_a_model_that_ignores_the_mask_falls_back_to_lm_evals_path(scored):
    model, lm, reqs, theirs = scored
    scorer = SharedContextScorer(_IgnoresTheMask(model), 4, lm.device, lm.max_length, lm.softmax_dtype)
    ours = scorer.score(reqs, lambda r: lm._loglikelihood_tokens(r, disable_tqdm=True))
    assert ours == theirs
    record = scorer.record()
    assert record["kind"] == "lm_eval" and "packed scores differ from lm-eval's" in record["fallback"]
    assert record["by_lm_eval"] == 15 and scorer.score(reqs[:2], lambda r: lm._loglikelihood_tokens(r)) == theirs[:2]


def test_a_model_that_refuses_the_inputs_falls_back_with_the_reason(scored):
    class Refuses(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, **kwargs):
            if "position_ids" in kwargs:
                raise TypeError("forward() got an unexpected keyword argument 'position_ids'")
            return self.inner(input_ids=input_ids)

    model, lm, reqs, theirs = scored
    scorer = SharedContextScorer(Refuses(model), 4, lm.device, lm.max_length, lm.softmax_dtype)
    assert scorer.score(reqs, lambda r: lm._loglikelihood_tokens(r)) == theirs
    assert scorer.record()["fallback"].startswith("the packed forward raised TypeError: forward() got an")


def test_evaluate_scores_quickstart_the_same_either_way(tmp_path):
    from peftbench.evaluate.scoring import evaluate
    from peftbench.session.options import OPTION_KEYS
    from peftbench.tasks.task import builtin_tasks_dir, discover_tasks, materialize, prepare_data

    task = discover_tasks([builtin_tasks_dir()], OPTION_KEYS)["quickstart"]
    include = materialize([task], {task.name: prepare_data(task, tmp_path / "cache", None, False)}, tmp_path / "w")
    model, tokenizer = tiny_llama()
    packed = evaluate(model, tokenizer, task, include, EvalConfig(limit=24, shared_context=True), "cpu")
    plain = evaluate(model, tokenizer, task, include, EvalConfig(limit=24, shared_context=False), "cpu")
    assert packed.samples == plain.samples and packed.metrics == pytest.approx(plain.metrics, abs=1e-12)
    assert plain.scorer == {"kind": "lm_eval"}
    # 24 questions x 4 choices: one row per question
    assert packed.scorer["kind"] == "shared_context" and packed.scorer["requests"] == 96
    assert packed.scorer["forward_rows"] == 24 and packed.scorer["by_lm_eval"] == 0


def test_the_option_packs_on_cpu_by_default_and_records_what_it_did():
    cfg = EvalConfig()
    assert cfg.packs_contexts("cpu") and not cfg.packs_contexts("cuda")
    cfg.resolve("cpu")
    assert cfg.shared_context is True
    kept = EvalConfig()
    kept.resolve("cpu", earlier={"shared_context": False})  # --resume keeps what the folder's cells did
    assert kept.shared_context is False
    assert EvalConfig(shared_context=True).packs_contexts("cuda")
    with pytest.raises(ConfigError, match="shared_context"):
        EvalConfig(shared_context="sometimes")
