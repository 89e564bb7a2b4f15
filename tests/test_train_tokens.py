"""The on-disk cache of a task's tokenized training split (peftbench.session.train_tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftbench.session.train_tokens import cached_train_split
from peftbench.train.batching import TrainData


class SlowTokenizer:
    """What the cache reads of a tokenizer without a fast backend."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab, self.pad_token_id, self.eos_token_id = vocab, 0, 1

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def tasks_folder(tmp_path: Path, template: str = "Review: {{sentence}}") -> Path:
    include = tmp_path / "lm_eval_tasks"
    (include / "_included" / "peftbench_t").mkdir(parents=True, exist_ok=True)
    (include / "peftbench_t.yaml").write_text(f"task: peftbench_t\ndoc_to_text: {template!r}\n")
    (include / "_included" / "peftbench_t" / "1-common").write_text("output_type: multiple_choice\n")
    return include


class Builds:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> TrainData:
        self.count += 1
        return TrainData([[5, 6, 7], [8, 9], [10, 11, 12, 13]], [2, 1, 3], pad_id=0)


def test_a_second_build_is_read_from_disk_and_equal(tmp_path):
    include, tok, build = tasks_folder(tmp_path), SlowTokenizer({"a": 0, "b": 1}), Builds()
    first = cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache")
    second = cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache")
    assert build.count == 1
    assert (second.input_ids, second.answer_start, second.pad_id) == \
        (first.input_ids, first.answer_start, first.pad_id) == ([[5, 6, 7], [8, 9], [10, 11, 12, 13]], [2, 1, 3], 0)
    assert len(list((tmp_path / "cache" / "tokens").glob("peftbench_t-*.pt"))) == 1


@pytest.mark.parametrize("change", ["template", "included", "tokenizer", "max_length"])
def test_anything_the_tokens_depend_on_makes_a_new_file(tmp_path, change):
    include, tok, build = tasks_folder(tmp_path), SlowTokenizer({"a": 0, "b": 1}), Builds()
    cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache")
    max_length = 64
    if change == "template":
        tasks_folder(tmp_path, template="Text: {{sentence}}")
    elif change == "included":
        (include / "_included" / "peftbench_t" / "1-common").write_text("output_type: generate_until\n")
    elif change == "tokenizer":
        tok = SlowTokenizer({"a": 0, "c": 1})
    else:
        max_length = 32
    cached_train_split(build, "peftbench_t", include, tok, max_length, tmp_path / "cache")
    assert build.count == 2
    assert len(list((tmp_path / "cache" / "tokens").glob("*.pt"))) == 2


def test_a_damaged_file_is_rebuilt_and_rewritten(tmp_path):
    include, tok, build = tasks_folder(tmp_path), SlowTokenizer({"a": 0}), Builds()
    cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache")
    [saved] = (tmp_path / "cache" / "tokens").glob("*.pt")
    saved.write_bytes(b"not a torch file")
    again = cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache")
    assert build.count == 2 and again.input_ids[2] == [10, 11, 12, 13]
    assert cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache").answer_start == [2, 1, 3]
    assert build.count == 2  # the rewritten file is read


def test_a_cache_that_cannot_be_written_costs_only_the_rebuild(tmp_path):
    include, tok, build = tasks_folder(tmp_path), SlowTokenizer({"a": 0}), Builds()
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would be")
    data = cached_train_split(build, "peftbench_t", include, tok, 64, blocked)
    assert data.input_ids[0] == [5, 6, 7] and build.count == 1


def test_a_fast_tokenizer_is_named_by_its_serialized_form(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    def fast(words: list[str]) -> PreTrainedTokenizerFast:
        model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0])
        return PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(model))

    include, build = tasks_folder(tmp_path), Builds()
    for tok in (fast(["<unk>", "a"]), fast(["<unk>", "a"]), fast(["<unk>", "b"])):
        cached_train_split(build, "peftbench_t", include, tok, 64, tmp_path / "cache")
    assert build.count == 2  # the same vocabulary reads the file; another one builds its own
