"""Generative tasks (lm-eval ``generate_until``): the answer filter on hand-written generations, the
training prompt against the scored one, the data spec's ``answer`` records and their errors, the cost of
generation in the run file, and a whole session on tiny:llama (``quickstart_gen``, generated in code, so CI
runs it; ``gsm8k`` with the shared data where it exists)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftbench.errors import UsageError
from peftbench.tasks import quickstart_gen
from peftbench.tasks.data_spec import DataError
from peftbench.tasks.lm_eval_yaml import read_config
from peftbench.tasks.task import (
    builtin_tasks_dir,
    discover_tasks,
    gold_request,
    lm_eval_task,
    load_task_file,
    materialize,
    prepare_data,
    scored_request,
    training_pair,
    training_pairs,
)
from peftbench.testing import run_cli

SHIPPED = discover_tasks([builtin_tasks_dir()])
GENERATIVE = sorted(n for n, t in SHIPPED.items() if t.generation is not None)
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="no ../shared/data/gsm8k here (CI)")
TINY = ["--model", "tiny:llama", "--device", "cpu"]


def lines(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# the data folder of each generative file task, in its real format (the shared folder's file names)
GSM_TRAIN = [{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                          "May.  How many clips did Natalia sell altogether?",
              "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                        "altogether in April and May.\n#### 72"},
             {"question": "Weng earns $12 an hour for babysitting. How much does she earn in 2 hours?",
              "answer": "Weng earns 12*2 = $<<12*2=24>>24.\n#### 24"}]
GSM_TEST = [{"question": "Josh buys a house for $80,000 and puts in $50,000 in repairs. How much did he spend?",
             "answer": "He spent 80,000+50,000=$<<80000+50000=130000>>130,000\n#### 130,000"},
            {"question": "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts?",
             "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo 2+1=<<2+1=3>>3 bolts\n#### 3"}]
ARC = {"instruction": "Please choose the correct answer to the question: Which is renewable?\n\nAnswer1: coal "
                      "Answer2: wind Answer3: oil\n\nAnswer format: answer1/answer2/answer3",
       "input": "", "output": "the correct answer is answer2", "answer": "answer2"}
FIXTURES = {
    "gsm8k": {"grade_school_math__data__train.jsonl": lines(*GSM_TRAIN),
              "grade_school_math__data__test.jsonl": lines(*GSM_TEST)},
    "arc_easy_gen": {"train.json": json.dumps([ARC, {**ARC, "answer": "answer3"}]),
                     "test.json": json.dumps([{**ARC, "answer": "answer1"}, ARC])},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name, files in FIXTURES.items():
        for rel, text in files.items():
            path = root / SHIPPED[name].spec.local_folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return root


def lm_task_of(name: str, tmp: Path, data_root: Path | None):
    task = SHIPPED[name]
    prepared = prepare_data(task, tmp / "cache", data_root, True)
    include = materialize([task], {name: prepared}, tmp / f"work-{name}")
    return task, prepared, lm_eval_task(task, include)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return lm_task_of("quickstart_gen", tmp_path_factory.mktemp("qg"), None)


def test_every_generative_file_task_has_a_fixture():
    assert {"gsm8k", "arc_easy_gen", "quickstart_gen"} <= set(GENERATIVE)
    assert set(FIXTURES) == {n for n in GENERATIVE if SHIPPED[n].spec is not None}, \
        "add the new generative task's files to FIXTURES in tests/test_generative.py"


# ---- the answer filter: '#### N', else the last number ---------------------------------------------------
GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe sold 1,000+72 = <<1000+72=1072>>1,072 in all.\n#### 1,072"
CASES = [  # (what the model wrote, what the filter extracts, exact match against GOLD)
    (" 48/2 = 24\n1000+72 = 1072\n#### 1072", "1072", 1.0),
    (" She sold 1,072 clips.\n#### 1,072", "1,072", 1.0),              # thousands separator
    (" #### 1072.", "1072.", 1.0),                                      # a trailing full stop
    (" #### 1072.00", "1072.00", 1.0),                                  # a zero fraction
    (" #### $1,072", "1,072", 1.0),                                     # '$' after '####': the last number
    (" #### 1072\nThen she sold 5 more.", "1072", 1.0),                 # '####' wins over a later number
    (" 48/2 = 24, and 1000 + 72 = 1072", "1072", 1.0),                  # no '####': the last number
    (" The answer is $1,072.", "1,072", 1.0),
    (" So she made 1072 dollars in 3 days", "3", 0.0),                  # the last number, even when wrong
    (" #### 1071", "1071", 0.0),
    (" #### 10720", "10720", 0.0),                                      # no partial credit
    (" #### -1072", "-1072", 0.0),
    (" I do not know.", "[invalid]", 0.0),                              # nothing to extract
    (" 24 clips in May\n#### 24\n", "24", 0.0),
]


def extract(lm_task, generated: str, doc: dict) -> str:
    """What the task's one filter makes of a generation, as lm-eval applies it to a scored instance."""
    from lm_eval.api.instance import Instance

    (ensemble,) = lm_task._filters
    inst = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0)
    inst.resps = [generated]
    ensemble.apply([inst])
    return inst.filtered_resps[ensemble.name]


@pytest.mark.parametrize(("generated", "extracted", "score"), CASES)
def test_the_final_number_filter_and_exact_match(quick, generated, extracted, score):
    """lm-eval's own filter and metric, as the task file configures them (gsm8k's, through its include)."""
    _, _, lm_task = quick
    doc = {"question": "q", "answer": GOLD}
    assert extract(lm_task, generated, doc) == extracted
    assert lm_task.process_results(doc, [extracted]) == {"exact_match": score}


def test_gsm8k_and_quickstart_gen_score_answers_alike():
    gsm, quick = (read_config(SHIPPED[n].lm_eval_file) for n in ("gsm8k", "quickstart_gen"))
    for key in ("filter_list", "metric_list", "doc_to_text", "doc_to_target", "output_type"):
        assert gsm[key] == quick[key], key
    assert gsm["generation_kwargs"]["until"] == quick["generation_kwargs"]["until"] == ["\n\n", "Question:"]
    assert (gsm["generation_kwargs"]["max_gen_toks"], quick["generation_kwargs"]["max_gen_toks"]) == (256, 32)


def test_the_option_filter_of_arc_easy_gen(tmp_path, data_dir):
    _, _, lm_task = lm_task_of("arc_easy_gen", tmp_path, data_dir)
    doc = {"instruction": "x", "answer": "answer2"}
    for generated, score in ((" the correct answer is answer2", 1.0), (" The correct answer is Answer2.", 1.0),
                             (" answer2, not answer3", 1.0), (" the correct answer is answer3", 0.0),
                             (" answer3 or answer2", 0.0), (" wind", 0.0)):
        assert lm_task.process_results(doc, [extract(lm_task, generated, doc)]) == {"exact_match": score}, generated


# ---- the training prompt is the scored prompt ------------------------------------------------------------
def check_prompts(lm_task, n_docs: int, tokenizer) -> None:
    """For the first test documents: lm-eval's generate_until request has the training example's prompt,
    byte for byte, and the training answer is the gold answer plus the first stop sequence; the training
    tokens put the loss on the answer's tokens alone."""
    from peftbench.train.batching import collate, tokenize_pairs

    until = lm_task.config.generation_kwargs["until"]
    lm_task.build_all_requests(limit=n_docs, rank=0, world_size=1)
    docs = list(lm_task.eval_docs)
    assert len(lm_task.instances) == n_docs
    for inst in lm_task.instances:
        doc = docs[inst.doc_id]
        context, kwargs = inst.arguments
        prompt, answer = training_pair(lm_task, doc)
        assert context == prompt and (context, kwargs) == scored_request(lm_task, doc)
        assert answer == f" {doc['answer']}{until[0]}" == gold_request(lm_task, doc)[1] + until[0]
        assert kwargs["until"] == until and kwargs["do_sample"] is False
        data = tokenize_pairs([(prompt, answer)], tokenizer, 4096)
        ids, start = data.input_ids[0], data.answer_start[0]
        assert ids[:start] == tokenizer(context, add_special_tokens=False)["input_ids"]  # as lm-eval encodes it
        labels = collate(data, [0])["labels"][0].tolist()
        assert labels[:start] == [-100] * start and labels[start:] == ids[start:]
        assert tokenizer.decode(ids[start:]) == answer
    first = next(iter(lm_task.training_docs()))
    assert training_pairs(lm_task)[0] == training_pair(lm_task, first)


@pytest.fixture(scope="module")
def tokenizer():
    from peftbench.models import tiny

    return tiny.tiny_tokenizer()


def test_quickstart_gen_trains_on_the_prompt_it_is_scored_with(quick, tokenizer):
    check_prompts(quick[2], 6, tokenizer)


@needs_shared
def test_gsm8k_trains_on_the_prompt_it_is_scored_with(tmp_path, tokenizer):
    task, prepared, lm_task = lm_task_of("gsm8k", tmp_path, SHARED)
    assert prepared.sizes == {"train": 6973, "validation": 500, "test": 1319}
    check_prompts(lm_task, 5, tokenizer)
    docs = list(lm_task.eval_docs)
    assert docs[0]["question"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert docs[0]["answer"].endswith("\n#### 18") and docs[0]["answer"].count("\n") == 2


def test_gsm8k_records_from_its_real_format(tmp_path, data_dir):
    """Whitespace in the question collapses as in every task; the worked solution keeps its line breaks."""
    _, prepared, _ = lm_task_of("gsm8k", tmp_path, data_dir)
    test = [json.loads(x) for x in (prepared.folder / "test.jsonl").read_text().splitlines()]
    assert test == GSM_TEST
    train = [json.loads(x) for x in (prepared.folder / "train.jsonl").read_text().splitlines()]
    assert train[0]["question"].endswith("in May. How many clips did Natalia sell altogether?")
    assert train[0]["answer"] == GSM_TRAIN[0]["answer"]
    assert prepared.source["kind"] == "local" and set(prepared.sizes) == {"train", "test"}  # 2 rows: none held out


def test_the_example_in_the_run_file_shows_the_same_prompt(quick, tmp_path):
    from peftbench.tasks.task import example_prompt

    task, prepared, _ = quick
    include = materialize([task], {task.name: prepared}, tmp_path / "w")
    ex = example_prompt(task, include)
    assert ex["train_context"] == ex["scored_context"]
    assert ex["train_target"] == ex["scored_target"] + ex["answer_end"] and ex["answer_end"] == "\n\n"
    assert ex["scored_choices"] is None and ex["max_gen_toks"] == 32


# ---- the data: generated, and the spec's checks ------------------------------------------------------------
def test_quickstart_gen_data_is_deterministic_correct_and_disjoint(tmp_path):
    a, b = quickstart_gen.generate(tmp_path / "a"), quickstart_gen.generate(tmp_path / "b")
    assert a["train"].read_text() == b["train"].read_text() and a["test"].read_text() == b["test"].read_text()
    splits = {s: [json.loads(x) for x in p.read_text().splitlines()] for s, p in a.items()}
    assert len(splits["train"]) == 2000 and len(splits["test"]) == 240
    pairs: dict[str, set] = {"train": set(), "test": set()}
    for split, rows in splits.items():
        for r in rows:
            a_, sign, b_, result = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (-?\d+)\n#### \4", r["answer"]).groups()
            assert int(result) == eval(f"{a_} {sign} {b_}")  # noqa: S307 - two small integers
            assert f" {a_} " in f" {r['question']} " and int(result) >= 0
            pairs[split].add((sign, int(a_), int(b_)))
    assert not pairs["train"] & pairs["test"]
    assert [r["answer"].split()[1] for r in splits["test"][:6]] == ["+", "-", "*"] * 2  # operations take turns


def write_task(folder: Path, data: str, lm: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(f"name: t\nversion: 1\ndescription: d\nlm_eval: lm.yaml\n{data}")
    (folder / "lm.yaml").write_text(lm)
    return folder / "task.yaml"


LOCAL = "  local: {folder: t, format: jsonl, splits: {train: train.jsonl, test: test.jsonl}}\n"
GEN_LM = ("task: t\ndataset_path: json\noutput_type: generate_until\ndoc_to_text: '{{question}}'\n"
          "doc_to_target: '{{answer}}'\n")
GEN_OK = ('generation_kwargs: {until: ["\\n"], max_gen_toks: 8, do_sample: false}\n'
          "filter_list: [{name: f, filter: [{function: take_first}]}]\nmetric_list: [{metric: exact_match}]\n")


@pytest.mark.parametrize(("data", "lm", "message"), [
    ("data:\n  fields: [question]\n  answer: answer\n  label: {values: [a, b]}\n" + LOCAL, GEN_LM + GEN_OK,
     "both 'label'"),
    ("data:\n  fields: [question]\n  answer: ''\n" + LOCAL, GEN_LM + GEN_OK, "data.answer must name"),
    ("data:\n  fields: [question]\n  answer: answer\n  contains: {other: x}\n" + LOCAL, GEN_LM + GEN_OK,
     "data.contains must map"),
    ("data:\n  fields: [question]\n  answer: answer\n" + LOCAL, GEN_LM + GEN_OK.replace("max_gen_toks: 8, ", ""),
     "max_gen_toks must be"),
    ("data:\n  fields: [question]\n  answer: answer\n" + LOCAL, GEN_LM + GEN_OK.replace('["\\n"]', "[]"),
     "until must list"),
    ("data:\n  fields: [question]\n  answer: answer\n" + LOCAL, GEN_LM + GEN_OK.replace("false", "true"),
     "decode greedily"),
    ("data:\n  fields: [question]\n  answer: answer\n" + LOCAL,
     GEN_LM + GEN_OK.replace("[{name: f,", "[{name: g, filter: [{function: take_first}]}, {name: f,"),
     "exactly one entry in filter_list"),
    ("data:\n  fields: [question]\n  answer: answer\n" + LOCAL, GEN_LM + GEN_OK.replace("exact_match", "bleu"),
     "metric 'exact_match' is not computed"),
])
def test_a_bad_generative_task_file_is_a_clear_error(tmp_path, data, lm, message):
    path = write_task(tmp_path / "t", data, lm)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_task_file(path)


def test_a_generative_row_without_its_answer_names_the_file_and_line(tmp_path):
    path = write_task(tmp_path / "tasks" / "t", "data:\n  fields: [question]\n  answer: answer\n  contains: "
                      "{answer: '#### '}\n" + LOCAL, GEN_LM + GEN_OK)
    task = load_task_file(path)
    assert task.metric == "exact_match" and task.generation.until == ("\n",)  # the default metric
    root = tmp_path / "data"
    (root / "t").mkdir(parents=True)
    (root / "t" / "train.jsonl").write_text(lines({"question": "q", "answer": "1\n#### 1"}, {"question": "p"}))
    (root / "t" / "test.jsonl").write_text(lines({"question": "q", "answer": "#### 2"}))
    with pytest.raises(DataError, match=r"train.jsonl:2: answer field 'answer' is missing or empty"):
        prepare_data(task, tmp_path / "cache", root, True)
    (root / "t" / "train.jsonl").write_text(lines({"question": "q", "answer": "1\n#### 1"}, {"question": "p",
                                                                                              "answer": "2"}))
    with pytest.raises(DataError, match=r"train.jsonl:2: answer field 'answer' must contain '#### '"):
        prepare_data(task, tmp_path / "cache", root, True)


def test_a_generative_task_has_no_choice_baselines(quick):
    from peftbench.tasks.baselines import prepared_baselines

    with pytest.raises((KeyError, ValueError)):  # the session's plan records none for it
        prepared_baselines(quick[1].folder)


# ---- a whole session -----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


def check_generative_run(run: dict, limit: int, max_gen_toks: int) -> None:
    ev = run["eval"]
    assert run["status"] == "ok", run.get("error")
    assert set(ev["metrics"]) == {"exact_match"} and 0.0 <= ev["metrics"]["exact_match"] <= 1.0
    assert "exact_match" in ev["stderr"] and ev["n_samples"] == limit
    assert ev["samples"]["doc_id"] == list(range(limit)) and len(ev["samples"]["exact_match"]) == limit
    assert sum(ev["samples"]["exact_match"]) / limit == pytest.approx(ev["metrics"]["exact_match"])
    gen = ev["generation"]
    assert gen["requests"] == limit and gen["max_gen_toks"] == max_gen_toks and gen["seconds"] > 0
    assert 1 <= gen["batches"] <= limit and gen["decode_steps"] <= gen["batches"] * max_gen_toks
    assert gen["answer_tokens"] <= gen["generated_tokens"] <= limit * max_gen_toks
    assert 0 <= gen["unstopped"] <= limit and len(gen["examples"]) == 3
    assert [e["doc_id"] for e in gen["examples"]] == [0, 1, 2]


def test_a_generative_session_end_to_end_on_tiny_llama(capsys, tmp_path):
    """quickstart_gen with lora and full: scored by generation (exact match with its standard error and the
    per-example values), the cost recorded, the merged model scored the same way, and the retention task
    (multiple choice) still scored after the generative fine-tune."""
    out = tmp_path / "s"
    code, _, err = run_cli(["run", "--methods", "lora,full", "--tasks", "quickstart_gen", *TINY, "--output", str(out),
                            "--limit", "6", "--retention", "quickstart", "--set", "steps=2",
                            "--set", "latency_rounds=0", "--set", "merge_precisions=false"], capsys)
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {"base--quickstart_gen--seed0", "lora--quickstart_gen--seed0", "full--quickstart_gen--seed0"}
    for run in runs.values():
        check_generative_run(run, 6, 32)
        assert run["retention"]["quickstart"]["score"] is not None and run["retention"]["quickstart"]["metric"] == "acc"
    lora = runs["lora--quickstart_gen--seed0"]
    assert lora["merge"]["eval"]["metric"] == "exact_match" and len(lora["merge"]["eval"]["samples"]["exact_match"]) == 6
    ex = lora["example"]
    assert ex["train_context"] == ex["scored_context"] and ex["train_target"] == ex["scored_target"] + "\n\n"
    session = json.loads((out / "session.json").read_text())
    assert "quickstart_gen" not in (session.get("baselines") or {})  # no choices: no chance/majority rows
    assert session["tasks"]["quickstart_gen"]["generation"]["max_gen_toks"] == 32


@needs_shared
def test_gsm8k_session_on_tiny_llama(capsys, tmp_path):
    out = tmp_path / "s"
    code, _, err = run_cli(["run", "--methods", "lora", "--tasks", "gsm8k", *TINY, "--output", str(out),
                            "--data-dir", str(SHARED), "--limit", "4", "--retention", "none", "--no-base",
                            "--set", "steps=2", "--set", "latency_rounds=0", "--set", "merge_eval=false",
                            "--set", "merge_precisions=false"], capsys)
    assert code == 0, err
    run = json.loads((out / "runs" / "lora--gsm8k--seed0.json").read_text())
    check_generative_run(run, 4, 256)
    assert run["eval"]["generation"]["examples"][0]["target"].endswith("#### 18")


def test_answer_length_counts_tokens_up_to_the_first_stop_sequence():
    from peftbench.evaluate.generation import GenerationCost, answer_length

    def decode(ids):
        return "".join(chr(i) for i in ids)

    row = [ord(c) for c in " 3 + 4 = 7\n#### 7\n\nQuestion: more"]
    assert answer_length(row, ["\n\n", "Question:"], decode) == (len(" 3 + 4 = 7\n#### 7\n\n"), True)
    assert answer_length(row, ["Question:"], decode) == (len(" 3 + 4 = 7\n#### 7\n\nQuestion:"), True)
    assert answer_length(row, ["</s>"], decode) == (len(row), False)
    assert answer_length([], ["\n"], decode) == (0, False)
    cost = GenerationCost()
    cost.add_batch(8, [(3, True), (8, False)])
    cost.add_batch(4, [(4, True)])
    assert (cost.batches, cost.decode_steps, cost.generated_tokens, cost.answer_tokens, cost.unstopped) == \
        (2, 12, 20, 15, 1)
