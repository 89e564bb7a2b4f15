"""Task files validated like code (issue 20): misspelled keys, template variables that are not fields, a
broken task file among good ones, the column mappings of local files, JSON Lines in a .json file, empty
splits, a test split with one label throughout, unsafe names, and the rendered example each run file keeps.

Each test writes its own small task folder and data folder and asserts the outcome a user sees: the exit
code, the message (file, key path, did-you-mean, valid keys) and the records or run files written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from peftbench.errors import UsageError
from peftbench.session.runner import Session, SessionConfig
from peftbench.tasks import data as D
from peftbench.tasks.data_spec import DataError
from peftbench.tasks.task import BrokenTask, discover_tasks, load_task_file, prepare_data, select_tasks
from peftbench.testing import run_cli

TINY = ["--model", "tiny:llama", "--device", "cpu"]
LM_EVAL = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: ${{data_dir}}/train.jsonl
    test: ${{data_dir}}/test.jsonl
training_split: train
test_split: test
output_type: multiple_choice
doc_to_text: "{text}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""
TICKETS_TRAIN = "text\tcategory\nMy invoice is wrong\tbilling\nThe app crashes on start\tbug\n"
TICKETS_TEST = "text\tcategory\nI cannot log in\taccount\nThe app crashes on start\tbug\n"


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No test sees the developer's data folder or writes to ~/.cache/peftbench."""
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "peftbench-cache"))


def tickets(**changes) -> dict:
    """docs/tasks.md's worked example as a mapping; ``changes`` replace top-level keys (None removes one)."""
    task = {"name": "tickets", "version": 1, "description": "Route a support ticket.",
            "data": {"fields": ["text"],
                     "label": {"field": "category", "values": {"billing": "billing", "bug": "bug", "account": "account"}},
                     "local": {"folder": "tickets", "format": "tsv", "splits": {"train": "train.tsv", "test": "test.tsv"}}},
            "lm_eval": "lm_eval.yaml", "metric": "acc", "budget": {"cpu": {"steps": 2, "batch_size": 2}},
            "methods": {"full": {"lr": 5.0e-5}}}
    task.update(changes)
    return {k: v for k, v in task.items() if v is not None}


def write_task(tasks_dir: Path, task: dict | str, text: str = "Ticket: {{text}}\\nTeam:", folder: str = "") -> Path:
    """A task folder (task.yaml + lm_eval.yaml) under ``tasks_dir``; returns its task.yaml."""
    name = task if isinstance(task, str) else str(task.get("name", "t"))
    d = tasks_dir / (folder or name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.yaml").write_text(task if isinstance(task, str) else yaml.safe_dump(task, sort_keys=False))
    (d / "lm_eval.yaml").write_text(LM_EVAL.format(name=name if isinstance(task, dict) else "t", text=text))
    return d / "task.yaml"


def write_data(root: Path, folder: str, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def records(prepared, split: str) -> list[dict]:
    return [json.loads(x) for x in (prepared.folder / f"{split}.jsonl").read_text().splitlines()]


def plan_for(tmp_path: Path, tasks_dir: Path, data: Path, task: str = "tickets", methods=("lora",)):
    return Session(SessionConfig(methods=list(methods), tasks=[task], tasks_dirs=[tasks_dir], data_dir=data,
                                 cache_dir=tmp_path / "cache", device="cpu", model="tiny:llama",
                                 output=tmp_path / "o", retention=[])).plan()


def run_tickets(capsys, tmp_path, tasks_dir, data, task="tickets"):
    return run_cli(["run", "--methods", "lora", "--tasks", task, "--tasks-dir", str(tasks_dir), "--data-dir",
                    str(data), "--retention", "none", *TINY, "--output", str(tmp_path / "o")], capsys)


# ---- 1. misspelled keys are errors, with the file, the key's path, a did-you-mean and the valid keys -------
def _data_with(**at) -> dict:
    """tickets' data mapping with one nested mapping's key misspelled: at = {path: (good key, bad key)}."""
    data = tickets()["data"]
    for path, (good, bad) in at.items():
        node = data
        for part in path.split(".")[1:] if path != "data" else []:
            node = node[part]
        node[bad] = node.pop(good) if good in node else "x"
    return data


MISSPELLED = [  # (task.yaml mapping, key path in the message, did-you-mean, a valid key listed)
    (tickets(metric=None, metirc="acc_norm"), "'metirc' (at the top level)", "'metric'", "lm_eval"),
    (tickets(methods=None, methds={"full": {"lr": 5e-5}}), "'methds' (at the top level)", "'methods'", "budget"),
    (tickets(data=_data_with(**{"data.label": ("values", "valeus")})), "'data.label.valeus' (under 'data.label')",
     "'values'", "choices_field"),
    (tickets(data=_data_with(data=("fields", "feilds"))), "'data.feilds' (under 'data')", "'fields'", "contains"),
    (tickets(data=_data_with(**{"data.local": ("format", "fromat")})), "'data.local.fromat' (under 'data.local')",
     "'format'", "delimiter"),
    (tickets(data=_data_with(**{"data.local.splits": ("train", "trian")})),
     "'data.local.splits.trian' (under 'data.local.splits')", "'train'", "validation"),
    (tickets(budget={"cpu": {"steps": 2}, "gpu": {"steps": 3}}), "'budget.gpu' (under 'budget')", "'cpu'", "cuda"),
    (tickets(budget={"cpu": {"steps": 2}, "tpu_v5": {"steps": 3}}), "'budget.tpu_v5' (under 'budget')", "", "cuda"),
]


@pytest.mark.parametrize("task,path,close,valid", MISSPELLED, ids=[m[1].split("'")[1] for m in MISSPELLED])
def test_a_misspelled_key_is_an_error_naming_file_path_and_valid_keys(task, path, close, valid, tmp_path):
    f = write_task(tmp_path / "tasks", task)
    with pytest.raises(UsageError) as e:
        load_task_file(f)
    msg = str(e.value)
    assert msg.startswith(f"Task file {f}: unknown key {path}.") and valid in msg, msg
    assert (f"Did you mean {close}?" in msg) if close else ("Did you mean" not in msg), msg


def test_misspelled_keys_in_split_files_hub_and_label_index(tmp_path):
    data = tickets()["data"]
    data["local"]["splits"]["test"] = {"file": "test.tsv", "heder": True}
    f = write_task(tmp_path / "a", tickets(data=data))
    with pytest.raises(UsageError, match=r"unknown key 'data\.local\.splits\.test\.heder' .*Did you mean 'header'\?"):
        load_task_file(f)
    data = tickets()["data"]
    data["hub"] = {"path": "x/y", "splits": {"train": "train", "test": "test"}, "colums": {"a": "b"}}
    with pytest.raises(UsageError, match=r"'data\.hub\.colums' .*Did you mean 'columns'\? Valid keys under 'data\.hub'"):
        load_task_file(write_task(tmp_path / "b", tickets(data=data)))
    data = tickets()["data"]
    data["label"] = {"choices_field": "choices"}
    data["hub"] = {"path": "x/y", "splits": {"test": "test"}, "label_index": {"field": "answerKey", "amoung": "c.l"}}
    with pytest.raises(UsageError, match=r"'data\.hub\.label_index\.amoung' .*Did you mean 'among'\?"):
        load_task_file(write_task(tmp_path / "c", tickets(data=data)))


def test_option_keys_of_budget_and_method_sections_are_checked_when_the_session_loads_tasks(capsys, tmp_path):
    """A misspelled training option in budget.cpu or methods.<m> names the file and its path; before, `stpes`
    in a method that was not run was never noticed."""
    tasks_dir = tmp_path / "tasks"
    write_task(tasks_dir, tickets(budget={"cpu": {"stpes": 2}}))
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": TICKETS_TRAIN, "test.tsv": TICKETS_TEST})
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "Traceback" not in err
    assert "unknown key 'budget.cpu.stpes' (under 'budget.cpu'). Did you mean 'steps'" in err and "max_tokens" in err
    write_task(tasks_dir, tickets(methods={"full": {"lrr": 5e-5}}))
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "'methods.full.lrr' (under 'methods.full'). Did you mean 'lr'?" in err
    write_task(tasks_dir, tickets(methods={"full": 5e-5}))
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "methods.full must be a mapping of training options" in err


def test_a_metric_the_lm_eval_yaml_does_not_compute_is_an_error(tmp_path):
    f = write_task(tmp_path / "tasks", tickets(metric="acc_nrom"))
    with pytest.raises(UsageError, match=r"metric 'acc_nrom' is not computed by .*lm_eval\.yaml .*Did you mean "
                                         r"'acc_norm'\? Valid metrics: acc, acc_norm\."):
        load_task_file(f)


def test_method_sections_name_registered_methods_aliases_and_variants(capsys, tmp_path):
    """`lroa:` was silently ignored; an alias's section (`full-ft`) now applies to its method and a variant's
    (`adapter@small`) to that variant, after its method's."""
    tasks_dir = tmp_path / "tasks"
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": TICKETS_TRAIN, "test.tsv": TICKETS_TEST})
    write_task(tasks_dir, tickets(methods={"lroa": {"lr": 1e-3}}))
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "Unknown method 'lroa' (methods.lroa in task file" in err, err
    assert "Did you mean 'lora'" in err and "Valid methods:" in err and "task.yaml" in err
    write_task(tasks_dir, tickets(methods={"full-ft": {"lr": 1.5e-5}, "adapter": {"lr": 2e-4, "warmup_ratio": 0.25},
                                           "adapter@small": {"lr": 3e-4}}))
    plan = plan_for(tmp_path, tasks_dir, data, methods=("full", "adapter", "adapter@small"))
    assert plan.options[("full", "tickets")].train.lr == pytest.approx(1.5e-5)
    assert plan.options[("adapter", "tickets")].train.lr == pytest.approx(2e-4)
    small = plan.options[("adapter@small", "tickets")].train
    assert small.lr == pytest.approx(3e-4) and small.warmup_ratio == pytest.approx(0.25)


# ---- 2. template variables are fields of the records, checked at planning -----------------------------------
@pytest.mark.parametrize("text,var", [("Ticket: {{txt}}\\nTeam:", "txt"), ("{{ text ~ extra }}", "extra")])
def test_a_template_variable_that_is_not_a_field_exits_2_at_planning(text, var, capsys, tmp_path):
    tasks_dir = tmp_path / "tasks"
    f = write_task(tasks_dir, tickets(), text=text)
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": TICKETS_TRAIN, "test.tsv": TICKETS_TEST})
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "Traceback" not in err
    assert f"Task file {f.parent / 'lm_eval.yaml'}: doc_to_text uses the variable {var!r}" in err, err
    assert "Fields available: text, choices, label" in err
    assert not (tmp_path / "o" / "runs").exists()  # nothing trained


def test_a_bare_name_that_is_not_a_field_and_a_template_syntax_error(tmp_path):
    tasks_dir = tmp_path / "tasks"
    f = write_task(tasks_dir, tickets())
    lm = f.parent / "lm_eval.yaml"
    lm.write_text(lm.read_text().replace("doc_to_target: label", "doc_to_target: labl"))
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": TICKETS_TRAIN, "test.tsv": TICKETS_TEST})
    with pytest.raises(UsageError, match=r"doc_to_target uses the variable 'labl'.* Did you mean 'label'\?"):
        prepare_data(load_task_file(f), tmp_path / "cache", data, need_train=True)
    lm.write_text(lm.read_text().replace("doc_to_target: labl", 'doc_to_target: "{{label"'))
    with pytest.raises(UsageError, match=r"doc_to_target is not a valid Jinja template"):
        prepare_data(load_task_file(f), tmp_path / "cache", data, need_train=True)


# ---- 3. one broken task file affects only its own task -----------------------------------------------------
def test_a_broken_task_file_affects_only_its_own_task(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    tasks_dir = tmp_path / "tasks"
    write_task(tasks_dir, tickets())
    broken = write_task(tasks_dir, tickets(name="typo", metirc="acc"))
    unreadable = write_task(tasks_dir, "name: [unclosed\n", folder="badyaml")
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": TICKETS_TRAIN, "test.tsv": TICKETS_TEST})
    found = discover_tasks([tasks_dir])
    assert isinstance(found["typo"], BrokenTask) and isinstance(found["badyaml"], BrokenTask)
    assert [t.name for t in select_tasks(found, ["tickets"])] == ["tickets"]
    with pytest.raises(UsageError, match=r"unknown key 'metirc'"):
        select_tasks(found, ["typo"])

    plan = plan_for(tmp_path, tasks_dir, data)  # the good task plans, beside the broken ones
    assert [t.name for t in plan.tasks] == ["tickets"]
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data, task="typo")
    assert code == 2 and f"Task file {broken}: unknown key 'metirc'" in err and "Traceback" not in err

    code, out, _ = run_cli(["tasks", "--tasks-dir", str(tasks_dir), "--data-dir", str(data), "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["tickets"]["available"] is True and "sst2" in rows
    assert rows["typo"]["broken"] is True and rows["typo"]["available"] is False
    assert "unknown key 'metirc'" in rows["typo"]["error"]
    assert rows["badyaml"]["error"].startswith(f"Task file {unreadable}: is not valid YAML")
    code, out, _ = run_cli(["tasks", "--tasks-dir", str(tasks_dir), "--data-dir", str(data)], capsys)
    line = next(x for x in out.splitlines() if "│ typo" in x)
    assert code == 0 and "broken" in line and "unknown key" in line


@pytest.mark.parametrize("key,value", [("name", "../../../x/ESC"), ("name", ".."), ("name", "a/b")])
def test_a_task_name_that_would_escape_its_folder_is_refused(key, value, capsys, tmp_path):
    tasks_dir = tmp_path / "tasks"
    f = write_task(tasks_dir, tickets(**{key: value}), folder="esc")
    with pytest.raises(UsageError, match=re.escape(f"Task file {f}: name '{value}' is not a valid task name")):
        load_task_file(f)
    lm = f.parent / "lm_eval.yaml"
    f.write_text(yaml.safe_dump(tickets(name="esc")))
    lm.write_text(lm.read_text().replace("task: ", "task: ../", 1))
    with pytest.raises(UsageError, match=r"lm_eval\.yaml: task '\.\./.*' is not a valid task name"):
        load_task_file(f)


# ---- 4. local files get the column mappings hub datasets get ---------------------------------------------
MC_TASK = {"name": "mc", "version": 1, "description": "d", "lm_eval": "lm_eval.yaml",
           "data": {"fields": ["question"], "label": {"choices_field": "choices"}}}


def _mc(tmp_path: Path, local: dict, files: dict[str, str | bytes]):
    task = {**MC_TASK, "data": {**MC_TASK["data"], "local": {"folder": "mc", **local}}}
    f = write_task(tmp_path / "tasks", task, text="Question: {{question}}\\nAnswer:")
    return prepare_data(load_task_file(f), tmp_path / "cache", write_data(tmp_path / "data", "mc", files), True)


def test_choices_in_separate_columns_of_a_jsonl_file(tmp_path):
    """PIQA's public files: {goal, sol1, sol2} plus an integer label."""
    rows = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "shake it", "label": 0},
            {"goal": "Dry wet shoes", "sol1": "put them in water", "sol2": "stuff them with paper", "label": 1}]
    jl = "".join(json.dumps(r) + "\n" for r in rows)
    out = _mc(tmp_path, {"format": "jsonl", "splits": {"train": "train.jsonl", "test": "dev.jsonl"},
                         "map": {"question": "goal", "choices": ["sol1", "sol2"]}},
              {"train.jsonl": jl, "dev.jsonl": jl})
    assert records(out, "test") == [{"question": "Open a jar", "choices": ["twist the lid", "shake it"], "label": 0},
                                    {"question": "Dry wet shoes", "choices": ["put them in water",
                                                                              "stuff them with paper"], "label": 1}]


def test_abcd_columns_with_a_letter_answer_key_in_a_tsv(tmp_path):
    tsv = ("question\tA\tB\tC\tD\tanswer\n"
           "Which is a mammal?\tshark\twhale\ttrout\teel\tB\n"
           "Which is a metal?\tiron\twood\tglass\tsalt\tA\n")
    out = _mc(tmp_path, {"format": "tsv", "splits": {"train": "train.tsv", "test": "test.tsv"},
                         "map": {"choices": ["A", "B", "C", "D"]},
                         "label_index": {"field": "answer", "among": ["A", "B", "C", "D"]}},
              {"train.tsv": tsv, "test.tsv": tsv})
    assert [(r["choices"], r["label"]) for r in records(out, "test")] == [
        (["shark", "whale", "trout", "eel"], 1), (["iron", "wood", "glass", "salt"], 0)]
    bad = tsv.replace("\tB\n", "\tE\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: label 'E' is not one of \['A', 'B', 'C', 'D'\]"):
        _mc(tmp_path / "bad", {"format": "tsv", "splits": {"train": "train.tsv", "test": "test.tsv"},
                               "map": {"choices": ["A", "B", "C", "D"]},
                               "label_index": {"field": "answer", "among": ["A", "B", "C", "D"]}},
            {"train.tsv": tsv, "test.tsv": bad})


def test_commonsenseqa_style_nested_choices_and_answer_key(tmp_path):
    """CommonsenseQA's and QASC's public JSONL: question.stem, question.choices [{label, text}], answerKey."""
    def row(stem, texts, key):
        return json.dumps({"id": "x", "question": {"stem": stem, "choices": [
            {"label": lab, "text": t} for lab, t in zip("ABCDE", texts, strict=False)]}, "answerKey": key}) + "\n"
    jl = row("Where do you keep milk?", ["fridge", "oven", "shelf"], "A") + row("What flies?", ["rock", "bird", "fish"],
                                                                            "B")
    out = _mc(tmp_path, {"format": "jsonl", "splits": {"train": "train.jsonl", "test": "dev.jsonl"},
                         "map": {"question": "question.stem", "choices": "question.choices.text"},
                         "label_index": {"field": "answerKey", "among": "question.choices.label"}},
              {"train.jsonl": jl, "dev.jsonl": jl})
    assert records(out, "train") == [
        {"question": "Where do you keep milk?", "choices": ["fridge", "oven", "shelf"], "label": 0},
        {"question": "What flies?", "choices": ["rock", "bird", "fish"], "label": 1}]


TREC_TRAIN = ("DESC:manner How did serfdom develop in and then leave Russia ?\n"
              "ENTY:cremat What films featured the character Popeye Doyle ?\n"
              "HUM:ind Who killed Gandhi ?\n")
TREC_TEST = "NUM:date When did Hawaii become a state ?\nLOC:city What is the capital of Peru ?\n"


def _trec(tmp_path: Path, local: dict, files: dict[str, str | bytes]):
    task = {"name": "trec", "version": 1, "description": "d", "lm_eval": "lm_eval.yaml",
            "data": {"fields": ["text"], "label": {"values": {"ABBR": "abbreviation", "DESC": "description",
                                                              "ENTY": "entity", "HUM": "human", "LOC": "location",
                                                              "NUM": "number"}},
                     "local": {"folder": "trec", "splits": {"train": "train_5500.label", "test": "TREC_10.label"},
                               **local}}}
    f = write_task(tmp_path / "tasks", task, text="Question: {{text}}\\nType:")
    return prepare_data(load_task_file(f), tmp_path / "cache", write_data(tmp_path / "data", "trec", files), True)


def test_label_first_lines_read_trec_as_published(tmp_path):
    out = _trec(tmp_path, {"format": "label_first", "delimiter": [":", " "], "columns": ["label", "fine", "text"]},
                {"train_5500.label": TREC_TRAIN, "TREC_10.label": TREC_TEST})
    assert records(out, "test")[0] == {"text": "When did Hawaii become a state ?", "label": 5,
                                       "choices": ["abbreviation", "description", "entity", "human", "location",
                                                   "number"]}
    assert [r["label"] for r in records(out, "train")] == [1, 2, 3]


def test_label_first_tab_lines_a_line_without_its_label_and_a_latin1_file(tmp_path):
    tab = "DESC\tHow did serfdom develop ?\nHUM\tWho killed\tGandhi ?\n"  # only the first tab splits
    out = _trec(tmp_path / "a", {"format": "label_first", "delimiter": "\t"},
                {"train_5500.label": tab, "TREC_10.label": "NUM\tWhen ?\nLOC\tWhere ?\n"})
    assert [r["text"] for r in records(out, "train")] == ["How did serfdom develop ?", "Who killed Gandhi ?"]
    with pytest.raises(DataError, match=r"TREC_10\.label:2: expected 2 columns \(label, text\), each but the last "
                                        r"ended by whitespace; found 1: 'LOC'"):
        _trec(tmp_path / "b", {"format": "label_first"}, {"train_5500.label": "DESC How ?\nHUM Who ?\n",
                                                          "TREC_10.label": "NUM When\nLOC\n"})
    latin = "HUM:ind Who is Pel\xe9 ?\nNUM:date When ?\n".encode("latin-1")
    local = {"format": "label_first", "delimiter": [":", " "], "columns": ["label", "fine", "text"]}
    with pytest.raises(DataError, match=r"train_5500\.label:1: not valid utf-8-sig text \(byte 0xe9\)\. Set 'encoding:'"):
        _trec(tmp_path / "c", local, {"train_5500.label": latin, "TREC_10.label": TREC_TEST})
    out = _trec(tmp_path / "d", {**local, "encoding": "latin-1"}, {"train_5500.label": latin, "TREC_10.label": TREC_TEST})
    assert records(out, "train")[0]["text"] == "Who is Pel\xe9 ?"


# ---- 5. a .json file holding JSON Lines ------------------------------------------------------------------
def test_a_json_file_holding_json_lines_says_so(tmp_path):
    rows = "".join(json.dumps({"question": f"q{i}", "choices": ["a", "b"], "label": i % 2}) + "\n" for i in range(3))
    with pytest.raises(DataError, match=r"test\.json: holds JSON Lines \(one JSON object per line\), not a JSON list: "
                                        r"set 'format: jsonl'"):
        _mc(tmp_path, {"splits": {"train": "train.json", "test": "test.json"}},
            {"train.json": json.dumps([json.loads(x) for x in rows.splitlines()]), "test.json": rows})


# ---- 6. an empty split is shown as empty and cannot be trained on -------------------------------------------
def test_an_empty_split_is_listed_as_empty_and_training_on_it_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    tasks_dir = tmp_path / "tasks"
    write_task(tasks_dir, tickets())
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": "text\tcategory\n", "test.tsv": TICKETS_TEST})
    code, out, _ = run_cli(["tasks", "--tasks-dir", str(tasks_dir), "--data-dir", str(data), "--json"], capsys)
    row = {r["name"]: r for r in json.loads(out)}["tickets"]
    assert code == 0 and row["sizes"] == {"train": 0, "test": 2}
    assert row["available"] is False and row["source"].endswith("(empty: train)")
    code, out, _ = run_cli(["tasks", "--tasks-dir", str(tasks_dir), "--data-dir", str(data)], capsys)
    line = next(x for x in out.splitlines() if "│ tickets" in x)
    assert "train empty" in line and "train 0" not in line and "│ no " in line
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "train.tsv has no rows (split 'train')" in err and "Traceback" not in err


def test_a_generator_that_writes_an_empty_train_split_exits_2(tmp_path, monkeypatch):
    import sys
    import types

    def generate(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_text("")
        (folder / "test.jsonl").write_text('{"text": "a", "choices": ["x", "y"], "label": 0}\n'
                                           '{"text": "b", "choices": ["x", "y"], "label": 1}\n')

    monkeypatch.setitem(sys.modules, "emptygen", types.SimpleNamespace(generate=generate))
    f = write_task(tmp_path / "tasks", {"name": "g", "version": 1, "description": "d",
                                        "data": {"generate": "emptygen:generate"}, "lm_eval": "lm_eval.yaml"},
                   text="{{text}}")
    with pytest.raises(UsageError, match=r"task 'g': its generator emptygen:generate wrote no rows into .*train\.jsonl"):
        prepare_data(load_task_file(f), tmp_path / "cache", None, need_train=True)


# ---- 7. a test split with one label throughout is flagged --------------------------------------------------
def test_a_test_split_with_one_label_throughout_exits_2_at_planning(capsys, tmp_path):
    """An unlabelled test set shipped with a dummy label would be scored as if every answer were that label."""
    tasks_dir = tmp_path / "tasks"
    write_task(tasks_dir, tickets())
    dummy = "text\tcategory\n" + "".join(f"question {i}\tbilling\n" for i in range(5))
    data = write_data(tmp_path / "data", "tickets", {"train.tsv": TICKETS_TRAIN, "test.tsv": dummy})
    code, _, err = run_tickets(capsys, tmp_path, tasks_dir, data)
    assert code == 2 and "Traceback" not in err
    assert "task 'tickets': every one of the 5 examples of its test split (test.tsv) has label 0 ('billing')" in err
    assert "Unlabelled test sets (shipped with a dummy label) cannot be scored; use a labelled split" in err
    assert not (tmp_path / "o" / "runs").exists()


# ---- 8. each run file records one rendered training example and its scored prompt ---------------------------
def test_a_run_file_records_the_training_prompt_beside_the_scored_prompt(capsys, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(["run", "--methods", "lora", *TINY, "--no-base", "--output", str(out), "--set", "steps=1",
                            "--set", "evaluate=off", "--set", "latency_rounds=0", "--retention", "none"], capsys)
    assert code == 0, err
    run = json.loads((out / "runs" / "lora--quickstart--seed0.json").read_text())
    ex = run["example"]
    assert ex["split"] == "train" and ex["index"] == 0
    assert ex["train_context"].startswith("Sentence: ") and ex["train_context"].endswith("\nTag:")
    assert ex["train_context"] == ex["scored_context"]
    assert ex["train_target"] == ex["scored_choices"][ex["gold"]]
    assert sorted(ex["scored_choices"]) == [" dax", " fep", " lum", " wug"]
    assert list(run).index("example") == list(run).index("limit") + 1


def test_the_docs_local_mapping_examples_parse_and_read_as_described(tmp_path):
    """docs/tasks.md's examples of local column mappings, as written there, are valid data specs."""
    from peftbench.tasks.data_spec import parse_data_spec

    text = (Path(__file__).resolve().parent.parent / "docs" / "tasks.md").read_text()
    section = text[text.index("### Local files: the same column mappings"):text.index("### What is checked")]
    blocks = [yaml.safe_load(b[:b.index("```")]) for b in section.split("```yaml\n")[1:]]
    assert len(blocks) == 4
    specs = []
    for block in blocks:
        data = block if "local" in block else {"label": {"choices_field": "choices"},
                                               "local": {"folder": "x", "format": "jsonl",
                                                         "splits": {"test": "t.jsonl"}, **block}}
        specs.append(parse_data_spec({"fields": ["question"], **data}, "docs/tasks.md"))
    piqa, quiz, csqa, trec = specs
    assert piqa.local_map == {"question": "goal", "choices": ["sol1", "sol2"]}
    assert quiz.local_label_index == {"field": "answer", "among": ["A", "B", "C", "D"]}
    assert csqa.local_label_index == {"field": "answerKey", "among": "question.choices.label"}
    f = trec.local_splits["train"][0]
    assert (f.format, f.delimiter, f.columns, f.encoding, f.header) == (
        "label_first", [":", " "], ["label", "fine", "text"], "latin-1", False)
