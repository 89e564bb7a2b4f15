import json
from pathlib import Path

import pytest

from peftbench.errors import UsageError
from peftbench.tasks import quickstart
from peftbench.tasks.task import (
    builtin_tasks_dir,
    discover_tasks,
    gold_request,
    lm_eval_task,
    load_task_file,
    materialize,
    prepare_data,
    training_pairs,
)


@pytest.fixture(scope="module")
def qs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qs")
    task = discover_tasks([builtin_tasks_dir()])["quickstart"]
    include = materialize([task], {task.name: prepare_data(task, tmp / "cache", None, True)}, tmp / "work")
    return task, lm_eval_task(task, include)


def test_quickstart_data_is_deterministic_balanced_and_disjoint(tmp_path):
    a = quickstart.generate(tmp_path / "a")
    b = quickstart.generate(tmp_path / "b")
    assert a["train"].read_text() == b["train"].read_text() and a["test"].read_text() == b["test"].read_text()
    train = [json.loads(x) for x in a["train"].read_text().splitlines()]
    test = [json.loads(x) for x in a["test"].read_text().splitlines()]
    assert len(train) == 2000 and len(test) == 4 * 8 * len(quickstart.TEMPLATES)
    counts = [sum(r["label"] == i for r in test) for i in range(4)]
    assert counts == [len(test) // 4] * 4  # balanced: a constant guess scores exactly 25 %
    for n in (4, 40, 100):  # and every --limit prefix of a multiple of 4 is balanced too
        assert [sum(r["label"] == i for r in test[:n]) for i in range(4)] == [n // 4] * 4

    def item(text):
        for t in quickstart.TEMPLATES:
            pre, post = t.split("{x}")
            if text.startswith(pre) and text.endswith(post):
                return text[len(pre): len(text) - len(post)]
    assert not {item(r["text"]) for r in train} & {item(r["text"]) for r in test}


def test_training_text_is_exactly_what_lm_eval_scores(qs, tmp_path):
    task, lm_task = qs
    lm_task.build_all_requests(limit=12, rank=0, world_size=1)
    by_doc = {}
    for inst in lm_task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    docs = list(lm_task.eval_docs)
    for doc_id, insts in by_doc.items():
        doc = docs[doc_id]
        scored = insts[doc["label"]].arguments
        assert gold_request(lm_task, doc) == tuple(scored)
    pairs = training_pairs(lm_task)
    first = json.loads((Path(lm_task.config.dataset_kwargs["data_files"]["train"])).read_text().splitlines()[0])
    assert pairs[0] == (f"Sentence: {first['text']}\nTag:", f" {first['choices'][first['label']]}")
    # every generated row but those held out for validation (and their copies): 2000 - 200 - 310 copies
    held = {json.dumps(json.loads(x), sort_keys=True)
            for x in Path(lm_task.config.dataset_kwargs["data_files"]["train"]).with_name("validation.jsonl")
            .read_text().splitlines()}
    generated = [json.loads(x) for x in quickstart.generate(tmp_path)["train"].read_text().splitlines()]
    kept = [r for r in generated if json.dumps(r, sort_keys=True) not in held]
    assert len(held) == 200 and len(pairs) == len(kept) == 1490
    assert pairs == [(f"Sentence: {r['text']}\nTag:", f" {r['choices'][r['label']]}") for r in kept]


def test_task_yaml_missing_field_is_named(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "task.yaml").write_text("name: t\nversion: 1\ndata: {generate: quickstart}\n")
    with pytest.raises(UsageError) as e:
        load_task_file(tmp_path / "t" / "task.yaml")
    assert "description" in str(e.value) and "lm_eval" in str(e.value) and str(tmp_path) in str(e.value)


def test_task_yaml_bad_generator_and_missing_lm_eval_file(tmp_path):
    (tmp_path / "task.yaml").write_text("name: t\nversion: 1\ndescription: d\ndata: {generate: nope}\nlm_eval: x.yaml\n")
    with pytest.raises(UsageError, match="neither a built-in generator .*quickstart.* nor 'package.module:function'"):
        load_task_file(tmp_path / "task.yaml")
    (tmp_path / "task.yaml").write_text("name: t\nversion: 1\ndescription: d\ndata: {generate: quickstart}\nlm_eval: x.yaml\n")
    with pytest.raises(UsageError, match="does not exist"):
        load_task_file(tmp_path / "task.yaml")


def test_a_plugin_generator_that_cannot_be_imported_is_a_clear_error(tmp_path):
    from peftbench.tasks.task import prepare_data

    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "lm.yaml").write_text("task: t\n")
    (folder / "task.yaml").write_text("name: t\nversion: 1\ndescription: d\ndata: {generate: 'no_such_pkg.gen:make'}\n"
                                      "lm_eval: lm.yaml\n")
    task = load_task_file(folder / "task.yaml")
    with pytest.raises(UsageError, match=r"task 't': its data generator no_such_pkg.gen:make cannot be imported "
                                         r"\(ModuleNotFoundError.*is the package that provides it installed\?"):
        prepare_data(task, tmp_path / "cache", None, need_train=True)
    (folder / "task.yaml").write_text("name: t\nversion: 1\ndescription: d\ndata: {generate: 'os.path:exists'}\n"
                                      "lm_eval: lm.yaml\n")
    with pytest.raises(UsageError, match="did not write train.jsonl, test.jsonl"):
        prepare_data(load_task_file(folder / "task.yaml"), tmp_path / "cache", None, need_train=True)


def test_task_overrides_layer_budget_then_method(qs):
    task, _ = qs
    assert task.train_overrides("cpu", "full")["lr"] == pytest.approx(5e-5)
    assert task.train_overrides("cpu", None) == task.budget["cpu"]


def test_scoring_keeps_lm_evals_version_fields_without_its_environment_dump(tmp_path, monkeypatch):
    """Each evaluation used to run torch's collect_env (subprocesses, 0.6 s here) for a text peftbench
    drops; the block still carries lm_eval_version and transformers_version, and lm-eval's own
    add_env_info is restored afterwards."""
    from importlib.metadata import version

    import lm_eval.evaluator
    import torch.utils.collect_env
    import transformers

    from peftbench.evaluate.config import EvalConfig
    from peftbench.evaluate.scoring import evaluate
    from peftbench.models.sources import load_model

    ran = []

    def forbidden():  # lm-eval's add_env_info would catch an exception here: count the calls instead
        ran.append(1)
        return ""

    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", forbidden)
    real = lm_eval.evaluator.add_env_info
    task = discover_tasks([builtin_tasks_dir()])["quickstart"]
    include = materialize([task], {task.name: prepare_data(task, tmp_path / "cache", None, True)}, tmp_path / "w")
    model, tok, _ = load_model("tiny:llama")
    result = evaluate(model, tok, task, include, EvalConfig(limit=4), "cpu")
    assert result.n_samples == 4
    assert result.lm_eval["lm_eval_version"] == version("lm_eval")
    assert result.lm_eval["transformers_version"] == transformers.__version__
    assert ran == [] and lm_eval.evaluator.add_env_info is real
