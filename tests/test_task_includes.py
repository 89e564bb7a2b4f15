"""Task YAMLs that share their body through lm-eval's ``include:``: read as lm-eval reads them, and
materialized so that lm-eval loads each task, with its own data, from the include path."""

import json
from pathlib import Path

import pytest
import yaml
from lm_eval.tasks._yaml_loader import load_yaml

from peftbench.errors import UsageError
from peftbench.tasks.data import PreparedData
from peftbench.tasks.lm_eval_yaml import INCLUDED_DIR, read_config
from peftbench.tasks.task import builtin_tasks_dir, discover_tasks, lm_eval_task, load_task_file, materialize

SHIPPED = discover_tasks([builtin_tasks_dir()])


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_config_is_read_as_lm_eval_reads_it(name):
    path = SHIPPED[name].lm_eval_file
    assert read_config(path) == load_yaml(path, resolve_func=False)


def test_shipped_tasks_share_the_scoring_body():
    own = {n: yaml.safe_load(t.lm_eval_file.read_text()) for n, t in SHIPPED.items()}
    assert own["arc_challenge"]["include"] == "../arc_easy/lm_eval.yaml"  # as lm-eval's own arc_challenge
    sharing = sorted(n for n, raw in own.items() if raw.get("include") == "../_common/multiple_choice.yaml")
    # winogrande: partial scoring; quickstart: the task people copy, whole on its own; generative tasks:
    # tests/test_generative.py
    generative = {n for n, t in SHIPPED.items() if t.generation is not None}
    assert sharing == sorted(set(SHIPPED) - {"arc_challenge", "winogrande", "quickstart"} - generative)
    assert "include" not in own["quickstart"]


def write_records(folder: Path, splits=("train", "test")) -> PreparedData:
    folder.mkdir(parents=True)
    for split in splits:
        rows = [{"question": f"{folder.name} {split} {i}?", "choices": ["yes", "no"], "label": i % 2} for i in range(3)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return PreparedData(folder=folder, source={}, sizes={s: 3 for s in splits})


def test_an_included_task_file_keeps_each_task_on_its_own_data(tmp_path):
    tasks = [SHIPPED["arc_challenge"], SHIPPED["arc_easy"]]
    prepared = {t.name: write_records(tmp_path / "data" / t.name) for t in tasks}
    include = materialize(tasks, prepared, tmp_path / "work")
    assert sorted(p.name for p in include.glob("**/*.yaml")) == ["peftbench_arc_challenge.yaml",
                                                                 "peftbench_arc_easy.yaml"]
    copies = sorted(p.relative_to(include).as_posix() for p in (include / INCLUDED_DIR).rglob("*") if p.is_file())
    assert copies == ["_included/peftbench_arc_challenge/1-arc_easy-lm_eval_yaml",
                      "_included/peftbench_arc_challenge/2-_common-multiple_choice_yaml",
                      "_included/peftbench_arc_easy/1-_common-multiple_choice_yaml"]
    for task in tasks:
        docs = list(lm_eval_task(task, include).eval_docs)
        assert [d["question"] for d in docs] == [f"{task.name} test {i}?" for i in range(3)]
        assert "${data_dir}" not in "".join(p.read_text() for p in include.rglob("*") if p.is_file())


def lm_task_folder(tmp_path: Path, lm_yaml: str, extra: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "tasks" / "t"
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text("name: t\nversion: 1\ndescription: d\ndata: {generate: quickstart}\n"
                                      "lm_eval: lm_eval.yaml\n")
    (folder / "lm_eval.yaml").write_text(lm_yaml)
    for rel, text in (extra or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def test_a_block_list_of_includes_is_rewritten_and_later_files_win(tmp_path):
    body = "dataset_path: json\noutput_type: multiple_choice\ndoc_to_target: label\ndoc_to_choice: '{{choices}}'\n"
    folder = lm_task_folder(tmp_path, "include:\n  - base/a.yaml\n  - base/b.yaml\ntask: peftbench_t\n"
                            "dataset_kwargs:\n  data_files:\n    test: ${data_dir}/test.jsonl\ntest_split: test\n",
                            {"base/a.yaml": body + "doc_to_text: 'A {{question}}'\n",
                             "base/b.yaml": "doc_to_text: 'B {{question}}'\n"})
    task = load_task_file(folder / "task.yaml")
    assert read_config(task.lm_eval_file)["doc_to_text"] == "B {{question}}"
    include = materialize([task], {task.name: write_records(tmp_path / "data", ("test",))}, tmp_path / "work")
    lm_task = lm_eval_task(task, include)
    assert lm_task.doc_to_text(next(iter(lm_task.eval_docs))) == "B data test 0?"


def test_a_missing_or_circular_include_is_a_usage_error_at_load(tmp_path):
    folder = lm_task_folder(tmp_path / "a", "include: ../_common/nope.yaml\ntask: peftbench_t\n")
    with pytest.raises(UsageError, match=r"include '../_common/nope.yaml' names no file"):
        load_task_file(folder / "task.yaml")
    folder = lm_task_folder(tmp_path / "b", "include: other.yaml\ntask: peftbench_t\n",
                            {"other.yaml": "include: lm_eval.yaml\n"})
    with pytest.raises(UsageError, match="makes a cycle"):
        load_task_file(folder / "task.yaml")
