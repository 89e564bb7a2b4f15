"""The validation split: carved deterministically out of a task's train split (never out of test), recorded in
the data's provenance, left out of training, and scored through the same lm-eval config as the test split.

Each test writes its own small data folder (no real data, no hub)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from peftbench.errors import UsageError
from peftbench.tasks import data as D
from peftbench.tasks.data_spec import DataError, ValidationSpec, parse_data_spec
from peftbench.tasks.task import (
    _gold_requests,
    builtin_tasks_dir,
    discover_tasks,
    gold_request,
    lm_eval_task,
    materialize,
    prepare_data,
    training_pairs,
)

SHIPPED = discover_tasks([builtin_tasks_dir()])
SST2 = {"0": "negative", "1": "positive"}


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "peftbench-cache"))


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def sst2_like(root: Path, train: list[str], test: list[str], validation: dict | None = None):
    """A two-class TSV task in ``root/t`` (train and test sentences; labels alternate) and its spec."""
    folder = root / "t"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train), ("test.tsv", test)):
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(rows)))
    raw = {"fields": ["sentence"], "label": {"values": SST2},
           "local": {"folder": "t", "splits": {"train": "train.tsv", "test": "test.tsv"}}}
    if validation is not None:
        raw["validation"] = validation
    return parse_data_spec(raw, "t.yaml")


TRAIN = [f"train phrase {i}" for i in range(60)]
TEST = [f"test phrase {i}" for i in range(8)]


# ---- carving ----------------------------------------------------------------------------------------------
def test_default_size_is_ten_percent_of_train_at_most_500_and_none_under_five_rows():
    sizes = {n: D.validation_size(n, ValidationSpec()) for n in (1, 4, 5, 14, 15, 1119, 2490, 4957, 5004, 60614)}
    assert sizes == {1: 0, 4: 0, 5: 1, 14: 1, 15: 2, 1119: 112, 2490: 249, 4957: 496, 5004: 500, 60614: 500}
    assert D.validation_size(60614, ValidationSpec(size=40, seed=3)) == 40


def test_carving_is_deterministic_disjoint_and_recorded(tmp_path):
    spec = sst2_like(tmp_path / "data", TRAIN, TEST)
    a = D.prepare("t", spec, tmp_path / "data", tmp_path / "cache-a", True)
    b = D.prepare("t", spec, tmp_path / "data", tmp_path / "cache-b", True)
    val, train, test = (read_records(a.folder / f"{s}.jsonl") for s in ("validation", "train", "test"))
    assert read_records(b.folder / "validation.jsonl") == val and a.folder.name == b.folder.name  # same seed
    assert a.sizes == {"train": 54, "validation": 6, "test": 8} and len(val) == 6 and len(train) == 54
    everything = [{"sentence": s, "choices": ["negative", "positive"], "label": i % 2} for i, s in enumerate(TRAIN)]
    assert {key(r) for r in val} < {key(r) for r in everything}          # out of train ...
    assert not {key(r) for r in val} & {key(r) for r in test}            # ... never out of test
    assert not {key(r) for r in val} & {key(r) for r in train}           # and not trained on
    assert train == [r for r in everything if key(r) not in {key(v) for v in val}]  # train keeps its order
    assert a.source["validation"] == {"from": "train", "size": 6, "seed": 0, "train_rows_before": 60,
                                      "rows_left_for_train": 54}
    assert json.loads((a.folder / ".source.json").read_text()) == {"source": a.source, "sizes": a.sizes}
    assert "validation" not in a.source["splits"]  # the data's own splits: train and test files only

    other = D.prepare("t", sst2_like(tmp_path / "data", TRAIN, TEST, {"seed": 1}), tmp_path / "data",
                      tmp_path / "cache-a", True)
    assert other.folder != a.folder and other.source["validation"]["seed"] == 1
    assert {key(r) for r in read_records(other.folder / "validation.jsonl")} != {key(r) for r in val}
    sized = D.prepare("t", sst2_like(tmp_path / "data", TRAIN, TEST, {"size": 20, "seed": 1}), tmp_path / "data",
                      tmp_path / "cache-a", True)
    assert sized.sizes == {"train": 40, "validation": 20, "test": 8}


def test_the_split_depends_on_the_rows_not_their_order_in_the_file(tmp_path):
    first = D.prepare("t", sst2_like(tmp_path / "a", TRAIN, TEST), tmp_path / "a", tmp_path / "cache", True)
    order = list(range(60))
    random.Random(5).shuffle(order)
    folder = tmp_path / "b" / "t"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{TRAIN[i]}\t{i % 2}\n" for i in order))
    (folder / "test.tsv").write_text((tmp_path / "a" / "t" / "test.tsv").read_text())
    spec = parse_data_spec({"fields": ["sentence"], "label": {"values": SST2},
                            "local": {"folder": "t", "splits": {"train": "train.tsv", "test": "test.tsv"}}}, "t.yaml")
    shuffled = D.prepare("t", spec, tmp_path / "b", tmp_path / "cache", True)
    assert read_records(shuffled.folder / "validation.jsonl") == read_records(first.folder / "validation.jsonl")


def test_every_copy_of_a_held_out_row_leaves_train(tmp_path):
    rows = [f"phrase {i}" for i in range(20)]
    train = rows + rows[:10]  # rows 0-9 twice (same label: i % 2 is the same for i and i + 20)
    spec = sst2_like(tmp_path / "data", train, TEST, {"size": 8})
    out = D.prepare("t", spec, tmp_path / "data", tmp_path / "cache", True)
    val, kept = read_records(out.folder / "validation.jsonl"), read_records(out.folder / "train.jsonl")
    assert len(val) == 8 and len({key(r) for r in val}) == 8 and not {key(r) for r in val} & {key(r) for r in kept}
    copies = sum(1 for v in val if v["sentence"] in rows[:10])  # each of these was in train twice
    assert len(kept) == 30 - 8 - copies and out.source["validation"]["rows_left_for_train"] == len(kept)
    assert out.source["validation"]["train_rows_before"] == 30


def test_a_train_split_under_five_rows_gets_none_and_an_explicit_size_too_large_is_an_error(tmp_path):
    out = D.prepare("t", sst2_like(tmp_path / "data", TRAIN[:4], TEST), tmp_path / "data", tmp_path / "cache", True)
    assert out.sizes == {"train": 4, "test": 8} and "validation" not in out.source
    again = D.prepare("t", sst2_like(tmp_path / "data", TRAIN[:4], TEST), tmp_path / "data", tmp_path / "cache", True)
    assert again == out  # cached, though no validation.jsonl was written
    with pytest.raises(DataError, match=r"task 't': data.validation.size is 4, but the train split has 4 distinct "
                                        r"rows: holding 4 out would leave nothing to train on"):
        D.prepare("t", sst2_like(tmp_path / "data", TRAIN[:4], TEST, {"size": 4}), tmp_path / "data",
                  tmp_path / "cache", True)


def test_eval_only_tasks_and_tasks_with_their_own_validation_split_are_not_carved(tmp_path):
    folder = tmp_path / "data" / "t"
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", 30), ("val.tsv", 7), ("test.tsv", 5)):
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{name} {i}\t{i % 2}\n" for i in range(n)))
    own = parse_data_spec({"fields": ["sentence"], "label": {"values": SST2}, "local": {
        "folder": "t", "splits": {"train": "train.tsv", "validation": "val.tsv", "test": "test.tsv"}}}, "t.yaml")
    out = D.prepare("t", own, tmp_path / "data", tmp_path / "cache", True)
    assert out.sizes == {"train": 30, "validation": 7, "test": 5} and "validation" not in out.source
    assert [r["sentence"] for r in read_records(out.folder / "validation.jsonl")] == [f"val.tsv {i}" for i in range(7)]
    test_only = parse_data_spec({"fields": ["sentence"], "label": {"values": SST2},
                                 "local": {"folder": "t", "splits": {"test": "test.tsv"}}}, "t.yaml")
    out = D.prepare("t", test_only, tmp_path / "data", tmp_path / "cache", False)
    assert out.sizes == {"test": 5} and "validation" not in out.source
    for name in ("piqa", "social_i_qa", "winogrande"):
        assert SHIPPED[name].validation_from is None and SHIPPED[name].describe()["validation"] is None
        with pytest.raises(UsageError, match=f"task '{name}' has no validation split"):
            SHIPPED[name].on_split("validation")
    assert SHIPPED["emotion"].validation_from == "dataset" and SHIPPED["sst2"].validation_from == "train"


@pytest.mark.parametrize("validation, splits, needle", [
    ({"size": 0}, None, "data.validation.size must be a whole number of at least 1, not 0"),
    ({"size": "10%"}, None, "data.validation.size must be a whole number of at least 1, not '10%'"),
    ({"seed": -1}, None, "data.validation.seed must be a whole number of at least 0"),
    ({"sise": 10}, None, "unknown key 'data.validation.sise'"),
    ([100], None, "data.validation must be a mapping {size: N, seed: S}"),
    ({"size": 10}, {"train": "a.tsv", "validation": "v.tsv", "test": "t.tsv"}, "this data has its own validation split"),
    ({"size": 10}, {"test": "t.tsv"}, "this data has no train split"),
])
def test_a_bad_validation_mapping_is_a_usage_error(validation, splits, needle):
    raw = {"fields": ["sentence"], "label": {"values": SST2}, "validation": validation,
           "local": {"folder": "t", "splits": splits or {"train": "a.tsv", "test": "t.tsv"}}}
    with pytest.raises(UsageError) as e:
        parse_data_spec(raw, "t.yaml")
    assert needle in str(e.value) and "t.yaml" in str(e.value)


# ---- scoring on validation with the test split's config -----------------------------------------------------
@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """quickstart (generated; its config whole on its own), arc_challenge (arc_easy's config, included in turn
    from _common) and emotion (a validation split of its own) prepared and materialized into one include
    folder."""
    tmp = tmp_path_factory.mktemp("val")
    folder = tmp / "data" / "arc_challenge" / "clean"
    folder.mkdir(parents=True)
    for split, n in (("train", 30), ("test", 4)):
        rows = [{"question": f"{split} question {i}?", "choices": ["w", "x", "y", "z"], "label": i % 4} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    emotion = tmp / "data" / "emotion"  # its own validation split (val.txt): scored as it is
    emotion.mkdir()
    for name, n in (("train.txt", 6), ("val.txt", 3), ("test.txt", 4)):
        feelings = ["joy", "fear", "anger"]
        (emotion / name).write_text("text;label_name\n" + "".join(f"{name} {i};{feelings[i % 3]}\n" for i in range(n)))
    tasks = [SHIPPED["quickstart"], SHIPPED["arc_challenge"], SHIPPED["emotion"]]
    prepared = {t.name: prepare_data(t, tmp / "cache", tmp / "data", need_train=True) for t in tasks}
    return materialize(tasks, prepared, tmp / "work"), prepared


def test_materialize_writes_a_validation_config_per_task_with_a_validation_split(lm):
    include, prepared = lm
    assert sorted(p.name for p in include.glob("*.yaml")) == [
        "peftbench_arc_challenge.yaml", "peftbench_arc_challenge_validation.yaml",
        "peftbench_emotion.yaml", "peftbench_emotion_validation.yaml",
        "peftbench_quickstart.yaml", "peftbench_quickstart_validation.yaml"]
    task = SHIPPED["quickstart"]
    variant = task.on_split("validation")
    assert variant.lm_eval_name == "peftbench_quickstart_validation" and variant.split == "validation"
    assert variant.name == task.name and variant.on_split("test") == task and task.on_split("test") is task
    with pytest.raises(UsageError, match="cannot be scored on split 'train'"):
        task.on_split("train")
    assert prepared["quickstart"].sizes == {"train": 1490, "validation": 200, "test": 320}
    assert prepared["arc_challenge"].sizes == {"train": 27, "validation": 3, "test": 4}
    assert prepared["emotion"].sizes == {"train": 6, "validation": 3, "test": 4}  # val.txt, nothing carved


@pytest.mark.parametrize("name", ["quickstart", "arc_challenge", "emotion"])
def test_the_validation_prompt_is_the_test_prompt_byte_for_byte(name, lm):
    include, prepared = lm
    task = SHIPPED[name]
    on_test, on_val = lm_eval_task(task, include), lm_eval_task(task.on_split("validation"), include)
    docs = list(on_val.eval_docs)
    assert [dict(d) for d in docs] == read_records(prepared[name].folder / "validation.jsonl")
    assert [dict(d) for d in on_test.eval_docs] == read_records(prepared[name].folder / "test.jsonl")
    for doc in docs[:12]:
        assert _gold_requests(on_val, doc) == _gold_requests(on_test, doc)  # every option's (context, continuation)
        assert gold_request(on_val, doc) == gold_request(on_test, doc)
    # one config but for its name, its test split and the data file it adds (and the file lm-eval read it from)
    def config(lm_task):
        out = dict(vars(lm_task.config))
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k != "config_source"}
        return out

    test_config, val_config = config(on_test), config(on_val)
    own_file = "validation" in on_test.config.dataset_kwargs["data_files"]  # emotion's config reads val.txt's rows
    assert {k for k in {*test_config, *val_config} if test_config.get(k) != val_config.get(k)} == {
        "task", "test_split", *([] if own_file else ["dataset_kwargs"])}
    files = on_val.config.dataset_kwargs["data_files"]
    assert files == {**on_test.config.dataset_kwargs["data_files"],
                     "validation": str(prepared[name].folder.resolve() / "validation.jsonl")}
    assert on_val.config.test_split == "validation" and on_test.config.test_split == "test"
    # training reads the same train rows, none of them a validation row
    pairs = training_pairs(on_val)
    assert pairs == training_pairs(on_test) and len(pairs) == prepared[name].sizes["train"]
    assert not {gold_request(on_val, d) for d in docs} & set(pairs)


def test_scoring_on_validation_scores_the_validation_rows(lm):
    from peftbench.evaluate.config import EvalConfig
    from peftbench.evaluate.scoring import evaluate
    from peftbench.models.sources import load_model

    include, prepared = lm
    model, tok, _ = load_model("tiny:llama")
    task = SHIPPED["arc_challenge"].on_split("validation")
    whole = evaluate(model, tok, task, include, EvalConfig(), "cpu")
    assert whole.task == "arc_challenge" and whole.n_samples == prepared["arc_challenge"].sizes["validation"] == 3
    assert whole.samples["doc_id"] == [0, 1, 2]
    assert whole.lm_eval["configs"]["peftbench_arc_challenge_validation"]["test_split"] == "validation"
    part = evaluate(model, tok, SHIPPED["quickstart"].on_split("validation"), include, EvalConfig(limit=6), "cpu")
    assert part.n_samples == 6 and 0.0 <= part.metrics["acc"] <= 1.0
    assert part.lm_eval["configs"]["peftbench_quickstart_validation"]["test_split"] == "validation"


def test_peftbench_tasks_shows_the_validation_split(capsys, tmp_path, monkeypatch):
    from test_cli import run_cli

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    folder = tmp_path / "data" / "sst2"
    folder.mkdir(parents=True)
    (folder / "data__SST-2__train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n"
                                                                                for i, s in enumerate(TRAIN)))
    (folder / "data__SST-2__test.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n"
                                                                               for i, s in enumerate(TEST)))
    code, out, _ = run_cli(["tasks", "--data-dir", str(tmp_path / "data"), "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["sst2"]["sizes"] == {"train": 60, "test": 8}
    assert rows["sst2"]["validation"] == {"from": "train", "size": 6, "seed": 0}    # counted: 10 % of 60
    assert rows["boolq"]["validation"] == {"from": "train", "size": None, "seed": 0}  # not here: not counted
    assert rows["emotion"]["validation"] == {"from": "dataset", "size": None}
    assert rows["piqa"]["validation"] is None
    code, out, _ = run_cli(["tasks", "--data-dir", str(tmp_path / "data")], capsys)
    line = next(x for x in out.splitlines() if "│ sst2" in x)
    assert code == 0 and "train 60 (6 held out for validation), test 8" in line
