"""The task-data layer: parsers, normalization, the shipped tasks' data specs, the cache, where data comes
from (local folder, hub, neither), the checks that run before any training, and the CLI around them.

Every test writes its own small data folder, laid out like the shared one (``../shared/data``) and in the exact
format of each shipped task's real files (SST-2 TSV with a header, emotion ``text;label_name``, AG News TSV
without a header, RTE's two train files, the ``clean/*.jsonl`` of the QA tasks): nothing here reads the real
data, except one fidelity check that compares the fixtures' shape with the real files when they are present.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from test_cli import TINY, run_cli  # how the CLI tests run `peftbench` in-process

from peftbench.errors import UsageError
from peftbench.session.runner import Session, SessionConfig
from peftbench.tasks import data as D
from peftbench.tasks.data_spec import DataError, FileSpec, parse_data_spec
from peftbench.tasks.readers import READERS, read_delimited, read_json, read_jsonl
from peftbench.tasks.rows import hub_row, normalize
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

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"  # the real data (only for the optional fidelity check)
SHIPPED = discover_tasks([builtin_tasks_dir()])
# quickstart is generated in code; generative tasks (gsm8k, ...) have their fixtures in tests/test_generative.py
FILE_TASKS = sorted(n for n, t in SHIPPED.items() if t.spec is not None and t.generation is None)
HUB_TASKS = sorted(n for n in FILE_TASKS if SHIPPED[n].spec.hub)


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No test sees the developer's data folder or writes to ~/.cache/peftbench."""
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "peftbench-cache"))


def lines(*rows: str) -> str:
    return "".join(r + "\n" for r in rows)


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def rec(choices: list[str], label: int, **fields: str) -> dict:
    return {**fields, "choices": choices, "label": label}


# ---- fixture data, in each shipped task's real format ---------------------------------------------------
SST2 = ["negative", "positive"]
EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
TOPICS = ["world", "sports", "business", "science"]
TF = ["True", "False"]
NOYES = ["no", "yes"]
ARC_Q = "Which factor will most likely cause a person to develop a fever?"
ARC_C = ["a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
         "several viral particles on the skin", "carbohydrates being digested in the stomach"]

# task -> {path inside the task's data folder: file text}
FIXTURES: dict[str, dict[str, str]] = {
    "sst2": {  # GLUE TSV, header 'sentence<TAB>label', phrases end with a space; no quoting
        "data__SST-2__train.tsv": lines(
            "sentence\tlabel", "when are bears bears and \t1", "kids , spirit \t1",
            '" a review that opens a quote it never closes \t0', "unflinchingly  bleak and desperate \t0", ""),
        "data__SST-2__test.tsv": lines("sentence\tlabel", *(f"held-out phrase {i} \t{i % 2}" for i in range(10))),
    },
    "emotion": {  # 'text;label_name' with a header; a text may itself contain ';'
        "train.txt": lines("text;label_name", "i didnt feel humiliated;sadness", "i feel great; really great;joy",
                           "i feel greedy wrong;anger"),
        "val.txt": lines("text;label_name", "i feel romantic too;love", "i feel so scared;fear"),
        "test.txt": lines("text;label_name", "im feeling rather rotten;sadness", "i was amazed; truly;surprise"),
    },
    "ag_news": {  # TSV without a header: text<TAB>label name; texts carry literal backslashes and '#39;'
        "data__agnews__dev.tsv": lines(
            "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers are back.\tBusiness",
            "It #39;s over. I #39;m leaving you for another browser.\tSci/Tech",
            "Phelps wins his sixth gold medal in Athens.\tSports",
            "Iraq talks resume in Baghdad.\tWorld"),
        "data__agnews__test.tsv": lines(
            "SPACE.com - A second\\team of rocketeers announced a launch date.\tSci/Tech",
            "Unions at Turner   Newall say they are 'disappointed'.\tBusiness"),
    },
    "rte": {  # GLUE TSV 'index sentence1 sentence2 label'; train is two files, the second without a header
        "data__RTE__train.tsv": lines(
            "index\tsentence1\tsentence2\tlabel",
            "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t"
            "not_entailment",
            "1\tA place of sorrow became a place of celebration.\tPope Benedict XVI is the new leader.\tentailment"),
        "val.tsv": lines(
            "2\tHerceptin was already approved to treat breast cancer.\tHerceptin can be used to treat breast "
            "cancer.\tentailment",
            "7\tU.N. officials are dismayed that Aristide killed a conference.\tAristide had Robert Malval  "
            "murdered.\tnot_entailment"),
        "data__RTE__dev.tsv": lines(
            "index\tsentence1\tsentence2\tlabel",
            "0\tDana Reeve has died of lung cancer at age 44.\tChristopher Reeve had an accident.\tnot_entailment",
            "1\tAntibiotics are losing their effectiveness.\tBacteria is winning the war against antibiotics.\t"
            "entailment"),
    },
    "boolq": {  # clean/: {question, choices: [false, true], label}; the task answers no/yes
        "clean/train.jsonl": jsonl(
            {"question": "do iran and afghanistan speak the same language?", "choices": ["false", "true"], "label": 1},
            {"question": "is house tax and property tax are same?", "choices": ["false", "true"], "label": 0},
            {"question": "can you use oyster card at epsom station?", "choices": ["false", "true"], "label": 0}),
        "clean/test.jsonl": jsonl(
            {"question": "does ethanol take more energy make that produces?", "choices": ["false", "true"], "label": 0},
            {"question": "is there a sequel to  the movie the golden compass?", "choices": ["false", "true"],
             "label": 1}),
    },
    "arc_easy": {
        "clean/train.jsonl": jsonl({"question": ARC_Q, "choices": ARC_C, "label": 1},
                                   {"question": "What do the green algae supply to the fungi?",
                                    "choices": ["carbon dioxide", "food", "protection", "water"], "label": 1}),
        "clean/test.jsonl": jsonl({"question": "Which piece of safety equipment keeps mold spores out?",
                                   "choices": ["safety goggles", "breathing mask", "rubber gloves", "lead apron"],
                                   "label": 1},
                                  {"question": "Which is a renewable resource?",
                                   "choices": ["coal", "oil", "wind", "natural gas"], "label": 2}),
    },
    "arc_challenge": {
        "clean/train.jsonl": jsonl({"question": "Which skin surface will produce the most heat?",
                                    "choices": ["dry palms", "wet palms", "palms covered with oil",
                                                "palms covered with lotion"], "label": 0}),
        "clean/test.jsonl": jsonl({"question": "Which is the most likely effect of a faster rotation?",
                                   "choices": ["Planetary density will decrease.", "Planetary years will become longer.",
                                               "Planetary days will become shorter.",
                                               "Planetary gravity will become stronger."], "label": 2},
                                  {"question": "Which will most likely result from testing building designs?",
                                   "choices": ["faster", "safer", "taller", "cheaper"], "label": 1}),
    },
    "openbookqa": {
        "clean/train.jsonl": jsonl({"question": "The sun is responsible for",
                                    "choices": ["puppies learning new tricks", "children growing up",
                                                "flowers wilting in a vase", "plants sprouting, blooming and wilting"],
                                    "label": 3}),
        "clean/test.jsonl": jsonl({"question": "There is most likely going to be fog around:",
                                   "choices": ["a marsh", "a tundra", "the plains", "a desert"], "label": 0}),
    },
    "piqa": {  # score only: test split alone
        "clean/test.jsonl": jsonl({"question": "How do I ready a guinea pig cage for it's new occupants?",
                                   "choices": ["Provide bedding made of ripped paper strips.",
                                               "Provide bedding made of ripped jeans material."], "label": 0},
                                  {"question": "dresser", "choices": ["replace drawer with bobby pin",
                                                                      "finish, woodgrain with  bobby pin"],
                                   "label": 1}),
    },
    "social_i_qa": {
        "clean/test.jsonl": jsonl({"question": "Tracy didn't go home that evening and resisted Riley's attacks. What "
                                               "does Tracy need to do before this?",
                                   "choices": ["make a new plan", "Go home and see Riley", "Find somewhere to go"],
                                   "label": 2},
                                  {"question": "Sydney walked past a homeless woman. How would you describe Sydney?",
                                   "choices": ["sympathetic", "like a person who was unable to help", "incredulous"],
                                   "label": 0}),
    },
    "winogrande": {  # {sentence, choices, label}; the sentence holds '_' where an option goes
        "clean/test.jsonl": jsonl(
            {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
             "choices": ["Sarah", "Maria"], "label": 1},
            {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
             "choices": ["Sarah", "Maria"], "label": 0},
            {"sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
             "choices": ["trophy", "suitcase"], "label": 0}),
    },
}

# task -> split -> the normalized records prepare() must write (whitespace runs collapse to one space)
EXPECTED: dict[str, dict[str, list[dict]]] = {
    "sst2": {
        "train": [rec(SST2, 1, sentence="when are bears bears and"), rec(SST2, 1, sentence="kids , spirit"),
                  rec(SST2, 0, sentence='" a review that opens a quote it never closes'),
                  rec(SST2, 0, sentence="unflinchingly bleak and desperate")],
        "test": [rec(SST2, i % 2, sentence=f"held-out phrase {i}") for i in range(10)],
    },
    "emotion": {
        "train": [rec(EMOTIONS, 0, text="i didnt feel humiliated"), rec(EMOTIONS, 1, text="i feel great; really great"),
                  rec(EMOTIONS, 3, text="i feel greedy wrong")],
        "validation": [rec(EMOTIONS, 2, text="i feel romantic too"), rec(EMOTIONS, 4, text="i feel so scared")],
        "test": [rec(EMOTIONS, 0, text="im feeling rather rotten"), rec(EMOTIONS, 5, text="i was amazed; truly")],
    },
    "ag_news": {
        "train": [rec(TOPICS, 2, text="Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers are "
                                      "back."),
                  rec(TOPICS, 3, text="It #39;s over. I #39;m leaving you for another browser."),
                  rec(TOPICS, 1, text="Phelps wins his sixth gold medal in Athens."),
                  rec(TOPICS, 0, text="Iraq talks resume in Baghdad.")],
        "test": [rec(TOPICS, 3, text="SPACE.com - A second\\team of rocketeers announced a launch date."),
                 rec(TOPICS, 2, text="Unions at Turner Newall say they are 'disappointed'.")],
    },
    "rte": {
        "train": [rec(TF, 1, sentence1="No Weapons of Mass Destruction Found in Iraq Yet.",
                      sentence2="Weapons of Mass Destruction Found in Iraq."),
                  rec(TF, 0, sentence1="A place of sorrow became a place of celebration.",
                      sentence2="Pope Benedict XVI is the new leader."),
                  rec(TF, 0, sentence1="Herceptin was already approved to treat breast cancer.",
                      sentence2="Herceptin can be used to treat breast cancer."),
                  rec(TF, 1, sentence1="U.N. officials are dismayed that Aristide killed a conference.",
                      sentence2="Aristide had Robert Malval murdered.")],
        "test": [rec(TF, 1, sentence1="Dana Reeve has died of lung cancer at age 44.",
                     sentence2="Christopher Reeve had an accident."),
                 rec(TF, 0, sentence1="Antibiotics are losing their effectiveness.",
                     sentence2="Bacteria is winning the war against antibiotics.")],
    },
    "boolq": {  # the label words come from task.yaml (no/yes), not from the row's own 'choices'
        "train": [rec(NOYES, 1, question="do iran and afghanistan speak the same language?"),
                  rec(NOYES, 0, question="is house tax and property tax are same?"),
                  rec(NOYES, 0, question="can you use oyster card at epsom station?")],
        "test": [rec(NOYES, 0, question="does ethanol take more energy make that produces?"),
                 rec(NOYES, 1, question="is there a sequel to the movie the golden compass?")],
    },
    "arc_easy": {
        "train": [rec(ARC_C, 1, question=ARC_Q),
                  rec(["carbon dioxide", "food", "protection", "water"], 1,
                      question="What do the green algae supply to the fungi?")],
        "test": [rec(["safety goggles", "breathing mask", "rubber gloves", "lead apron"], 1,
                     question="Which piece of safety equipment keeps mold spores out?"),
                 rec(["coal", "oil", "wind", "natural gas"], 2, question="Which is a renewable resource?")],
    },
    "arc_challenge": {
        "train": [rec(["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"], 0,
                      question="Which skin surface will produce the most heat?")],
        "test": [rec(["Planetary density will decrease.", "Planetary years will become longer.",
                      "Planetary days will become shorter.", "Planetary gravity will become stronger."], 2,
                     question="Which is the most likely effect of a faster rotation?"),
                 rec(["faster", "safer", "taller", "cheaper"], 1,
                     question="Which will most likely result from testing building designs?")],
    },
    "openbookqa": {
        "train": [rec(["puppies learning new tricks", "children growing up", "flowers wilting in a vase",
                       "plants sprouting, blooming and wilting"], 3, question="The sun is responsible for")],
        "test": [rec(["a marsh", "a tundra", "the plains", "a desert"], 0,
                     question="There is most likely going to be fog around:")],
    },
    "piqa": {
        "test": [rec(["Provide bedding made of ripped paper strips.", "Provide bedding made of ripped jeans material."],
                     0, question="How do I ready a guinea pig cage for it's new occupants?"),
                 rec(["replace drawer with bobby pin", "finish, woodgrain with bobby pin"], 1, question="dresser")],
    },
    "social_i_qa": {
        "test": [rec(["make a new plan", "Go home and see Riley", "Find somewhere to go"], 2,
                     question="Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need "
                              "to do before this?"),
                 rec(["sympathetic", "like a person who was unable to help", "incredulous"], 0,
                     question="Sydney walked past a homeless woman. How would you describe Sydney?")],
    },
    "winogrande": {
        "test": [rec(["Sarah", "Maria"], 1,
                     sentence="Sarah was a much better surgeon than Maria so _ always got the easier cases."),
                 rec(["Sarah", "Maria"], 0,
                     sentence="Sarah was a much better surgeon than Maria so _ always got the harder cases."),
                 rec(["trophy", "suitcase"], 0,
                     sentence="The trophy doesn't fit into the brown suitcase because the _ is too large.")],
    },
}


def _wino(r):
    head, rest = r["sentence"].split("_", 1)
    return head + r["choices"][r["label"]], " " + rest.strip()


# task -> record -> (prompt, answer): the shipped lm_eval.yaml templates, written out by hand
PROMPTS = {
    "sst2": lambda r: (f"Review: {r['sentence']}\nSentiment:", f" {r['choices'][r['label']]}"),
    "emotion": lambda r: (f"Text: {r['text']}\nEmotion:", f" {r['choices'][r['label']]}"),
    "ag_news": lambda r: (f"Article: {r['text']}\nTopic:", f" {r['choices'][r['label']]}"),
    "rte": lambda r: (f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:",
                      f" {r['choices'][r['label']]}"),
    "boolq": lambda r: (f"Question: {r['question']}?\nAnswer:", f" {r['choices'][r['label']]}"),
    **{t: (lambda r: (f"Question: {r['question']}\nAnswer:", f" {r['choices'][r['label']]}"))
       for t in ("arc_easy", "arc_challenge", "openbookqa", "piqa", "social_i_qa")},
    "winogrande": _wino,  # partial scoring: the sentence up to '_' + the gold option, then the rest
}


def make_data_dir(root: Path, only: list[str] | None = None) -> Path:
    """A data folder laid out like ../shared/data: <root>/<task's folder>/<file> for each fixture task."""
    for name, files in FIXTURES.items():
        if only is not None and name not in only:
            continue
        folder = root / SHIPPED[name].spec.local_folder
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(text.encode("utf-8"))  # exact bytes: no newline translation
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The full fixture data folder (read-only: tests that edit files make their own)."""
    return make_data_dir(tmp_path_factory.mktemp("shared") / "data")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def cache_files(cache: Path) -> list[Path]:
    """Every file the data cache holds (hidden ones too)."""
    return sorted(p for p in (cache / "data").rglob("*") if p.is_file()) if (cache / "data").exists() else []


def prep(name: str, root: Path | None, cache: Path, need_train: bool | None = None):
    task = SHIPPED[name]
    return D.prepare(name, task.spec, root, cache, (not task.eval_only) if need_train is None else need_train)


# ---- 1. parsers ---------------------------------------------------------------------------------------------
def test_read_delimited_tsv_with_header_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("sentence\tlabel\nwhen are bears bears and \t1\n\n   \nkids , spirit \t0\r\n")
    rows = list(read_delimited(p, FileSpec("a.tsv", "tsv")))
    assert rows == [(2, {"sentence": "when are bears bears and ", "label": "1"}),
                    (5, {"sentence": "kids , spirit ", "label": "0"})]  # CRLF stripped, raw text kept


def test_read_delimited_without_header_uses_columns_from_line_one(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("It #39;s over.\tSci/Tech\nA second\\team of rocketeers\tSci/Tech\n")
    rows = list(read_delimited(p, FileSpec("a.tsv", "tsv", header=False, columns=["text", "label"])))
    assert rows == [(1, {"text": "It #39;s over.", "label": "Sci/Tech"}),
                    (2, {"text": "A second\\team of rocketeers", "label": "Sci/Tech"})]


def test_read_delimited_header_renamed_by_columns(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("idx\ts1\ts2\tgold\n0\tA\tB\tentailment\n")
    rows = list(read_delimited(p, FileSpec("a.tsv", "tsv", columns=["index", "sentence1", "sentence2", "label"])))
    assert rows == [(2, {"index": "0", "sentence1": "A", "sentence2": "B", "label": "entailment"})]


def test_read_delimited_splits_from_the_right_so_the_text_may_hold_the_delimiter(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("text;label_name\ni feel great; really; great;joy\n\"unclosed quote;sadness\n")
    rows = list(read_delimited(p, FileSpec("train.txt", "delimited", delimiter=";")))
    assert rows == [(2, {"text": "i feel great; really; great", "label_name": "joy"}),
                    (3, {"text": '"unclosed quote', "label_name": "sadness"})]


def test_read_delimited_errors_name_file_line_and_columns(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("sentence\tlabel\ngood\t1\nno tab here\n")
    with pytest.raises(DataError) as e:
        list(read_delimited(p, FileSpec("a.tsv", "tsv")))
    assert str(e.value).startswith(f"{p}:3: expected 2 tab-separated columns (sentence, label), found 1: "
                                   "'no tab here'")
    p.write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"a\.tsv:1: the header has 3 columns, the task names 2 \(text, label\)"):
        list(read_delimited(p, FileSpec("a.tsv", "tsv", columns=["text", "label"])))
    p.write_text("text;label_name\nno delimiter\n")
    with pytest.raises(DataError, match=r"a\.tsv:2: expected 2 semicolon-separated columns \(text, label_name\)"):
        list(read_delimited(p, FileSpec("a.tsv", "delimited", delimiter=";")))


def test_read_delimited_header_only_or_empty_file_has_no_rows(tmp_path):
    p = tmp_path / "a.tsv"
    for text in ("sentence\tlabel\n", "", "sentence\tlabel\n\n\n"):
        p.write_text(text)
        assert list(read_delimited(p, FileSpec("a.tsv", "tsv"))) == []


def test_read_jsonl_skips_blank_lines_renames_columns_and_reports_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"goal": "open a jar", "sol1": "twist", "label": 0}\n\n{"goal": "dry a shirt", "label": 1}\n')
    rows = list(read_jsonl(p, FileSpec("a.jsonl", "jsonl", columns=["question=goal", "plain"])))
    assert rows == [(1, {"goal": "open a jar", "question": "open a jar", "sol1": "twist", "label": 0}),
                    (3, {"goal": "dry a shirt", "question": "dry a shirt", "label": 1})]
    assert list(read_jsonl(p, FileSpec("a.jsonl", "jsonl")))[1] == (3, {"goal": "dry a shirt", "label": 1})
    p.write_text('{"q": 1}\n{"q": 2,\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(p))}:2: not valid JSON \("):
        list(read_jsonl(p, FileSpec("a.jsonl", "jsonl")))
    p.write_text('{"q": 1}\n\n["q", 2]\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(p))}:3: each line must be a JSON object, found list\."):
        list(read_jsonl(p, FileSpec("a.jsonl", "jsonl")))


def test_read_json_list_with_renaming_and_errors(tmp_path):
    p = tmp_path / "test.json"
    p.write_text(json.dumps([{"instruction": "Is the sky blue?", "input": "", "answer": "true"},
                             {"instruction": "Is fire cold?", "input": "", "answer": "false"}], indent=2))
    rows = list(read_json(p, FileSpec("test.json", "json", columns=["question=instruction", "label=answer"])))
    assert [(i, r["question"], r["label"]) for i, r in rows] == [(1, "Is the sky blue?", "true"),
                                                                  (2, "Is fire cold?", "false")]
    p.write_text('[\n {"a": 1},\n {"a": 2\n]')
    with pytest.raises(DataError, match=rf"^{re.escape(str(p))}:4: not valid JSON"):
        list(read_json(p, FileSpec("test.json", "json")))
    p.write_text('{"a": 1}')
    with pytest.raises(DataError, match="expects a JSON list of objects, found dict"):
        list(read_json(p, FileSpec("test.json", "json")))
    p.write_text('[{"a": 1}, 7]')
    with pytest.raises(DataError, match=rf"^{re.escape(str(p))}: item 2 of the list is not an object"):
        list(read_json(p, FileSpec("test.json", "json")))


def test_json_format_through_a_task_spec(tmp_path):
    """format 'json' (a JSON list) and columns renaming, end to end through prepare()."""
    (tmp_path / "d" / "q").mkdir(parents=True)
    for split, rows in {"train": [("is the sky blue", True), ("is fire cold", False)],
                        "test": [("is ice cold", True)]}.items():
        (tmp_path / "d" / "q" / f"{split}.json").write_text(
            json.dumps([{"instruction": q, "answer": a} for q, a in rows]))
    spec = parse_data_spec({"fields": ["question"], "label": {"field": "answer", "values": {"False": "no", "True": "yes"}},
                            "local": {"folder": "q", "columns": ["question=instruction"],
                                      "splits": {"train": "train.json", "test": "test.json"}}}, "t.yaml")
    assert spec.local_splits["train"][0].format == "json"  # guessed from the extension
    out = D.prepare("q", spec, tmp_path / "d", tmp_path / "c", True)
    assert read_records(out.folder / "train.jsonl") == [rec(NOYES, 1, question="is the sky blue"),
                                                        rec(NOYES, 0, question="is fire cold")]
    assert out.sizes == {"train": 2, "test": 1}


def test_normalize_labels_and_whitespace():
    spec = parse_data_spec({"fields": ["sentence"], "label": {"values": ["negative", "positive"]},
                            "local": {"folder": "x", "splits": {"test": "t.tsv"}}}, "t.yaml")
    assert spec.label_values == {"0": "negative", "1": "positive"}  # a list means indices 0, 1, ...
    row = {"sentence": "  a\tgood \n  film ", "label": " 1 "}
    assert normalize(row, spec, "f:1") == rec(SST2, 1, sentence="a good film")
    assert normalize({"sentence": "x", "label": 0}, spec, "f:1")["label"] == 0  # JSON ints match "0"
    mc = parse_data_spec({"fields": ["question"], "label": {"choices_field": "options"},
                          "local": {"folder": "x", "splits": {"test": "t.jsonl"}}}, "t.yaml")
    out = normalize({"question": "q", "options": [" a  b", "c"], "label": "1"}, mc, "f:1")
    assert out == {"question": "q", "choices": ["a b", "c"], "label": 1}
    with pytest.raises(DataError, match=r"^f:7: label True is not an index into the row's 2 choices \(valid: 0\.\.1\)"):
        normalize({"question": "q", "options": ["a", "c"], "label": True}, mc, "f:7")
    with pytest.raises(DataError, match="label 'x' is not an index"):
        normalize({"question": "q", "options": ["a", "c"], "label": "x"}, mc, "f:7")


def test_a_utf8_bom_before_the_header_is_not_part_of_the_first_column_name(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_bytes("sentence\tlabel\ngood\t1\n".encode("utf-8-sig"))
    assert list(read_delimited(p, FileSpec("a.tsv", "tsv"))) == [(2, {"sentence": "good", "label": "1"})]


# ---- 2. every shipped task, from its real format -------------------------------------------------------------
def test_every_file_task_has_a_fixture_and_expected_records():
    """A new task under tasks/ fails here until it gets a fixture in its real format (and expected records)."""
    assert set(FILE_TASKS) == set(FIXTURES) == set(EXPECTED) == set(PROMPTS), (
        "add the new task to FIXTURES, EXPECTED and PROMPTS in tests/test_data.py")
    assert {"sst2", "emotion", "ag_news", "rte", "boolq", "piqa", "winogrande"} <= set(FILE_TASKS)


@pytest.mark.parametrize("name", FILE_TASKS)
def test_prepare_shipped_task_from_its_real_format(name, data_dir, tmp_path):
    task = SHIPPED[name]
    cache = tmp_path / "cache"
    out = prep(name, data_dir, cache)
    expected = EXPECTED[name]
    assert out.sizes == {s: len(r) for s, r in expected.items()}
    assert set(out.sizes) == set(task.splits)  # the splits the lm-eval YAML reads
    assert out.folder.parent == cache / "data" / name and len(out.folder.name) == 16
    for split, records in expected.items():
        assert read_records(out.folder / f"{split}.jsonl") == records, split
    # where the data came from: every file by name and sha256, locatable from the recorded folder
    assert out.source["kind"] == "local"
    src_files = {s: [f["file"] for f in fs] for s, fs in out.source["splits"].items()}
    spec_files = {s: [f.file for f in fs] for s, fs in task.spec.local_splits.items()}  # relative to the folder
    assert src_files == spec_files
    for split, fspecs in task.spec.local_splits.items():
        for entry, fspec in zip(out.source["splits"][split], fspecs, strict=True):
            real = data_dir / task.spec.local_folder / fspec.file
            assert entry["sha256"] == sha(real)
            assert Path(out.source["folder"]) / entry["file"] == real.resolve()
    meta = json.loads((out.folder / ".source.json").read_text())
    assert meta == {"source": out.source, "sizes": out.sizes}
    assert sorted(p.name for p in out.folder.iterdir()) == sorted([".source.json", *(f"{s}.jsonl" for s in expected)])
    # what `peftbench tasks` reports matches what prepare() read
    assert D.count_rows(task.spec, data_dir) == out.sizes
    assert D.availability(task.spec, data_dir) == (True, f"local {data_dir / task.spec.local_folder}")


def test_rte_train_concatenates_its_two_files_in_order(data_dir, tmp_path):
    out = prep("rte", data_dir, tmp_path / "c")
    assert [f["file"] for f in out.source["splits"]["train"]] == ["data__RTE__train.tsv", "val.tsv"]
    assert [r["sentence1"][:9] for r in read_records(out.folder / "train.jsonl")] == [
        "No Weapon", "A place o", "Herceptin", "U.N. offi"]


def test_source_locates_files_in_different_subfolders(tmp_path):
    folder = tmp_path / "d" / "t"
    for split, label in (("train", 1), ("test", 0)):
        (folder / split).mkdir(parents=True)
        (folder / split / "data.tsv").write_text(f"sentence\tlabel\n{split} row\t{label}\n")
    spec = parse_data_spec({"fields": ["sentence"], "label": {"values": SST2},
                            "local": {"folder": "t", "splits": {"train": "train/data.tsv", "test": "test/data.tsv"}}},
                           "t.yaml")
    out = D.prepare("t", spec, tmp_path / "d", tmp_path / "c", True)
    for split in ("train", "test"):
        entry = out.source["splits"][split][0]
        assert sha(Path(out.source["folder"]) / entry["file"]) == entry["sha256"], split


@pytest.mark.skipif(not SHARED.is_dir(), reason="the real data folder ../shared/data is not here")
@pytest.mark.parametrize("name", FILE_TASKS)
def test_fixture_files_have_the_shape_of_the_real_files(name):
    """Guards the fixtures themselves: same header line, same column count, same JSON keys and value types as
    the first row of the real file (read only where ../shared/data exists; CI skips this)."""
    spec = SHIPPED[name].spec

    def shape(text_lines: list[str], f: FileSpec):
        if f.format in ("json", "jsonl"):
            first = json.loads(text_lines[0])
            return sorted((k, type(v).__name__) for k, v in first.items())
        head = text_lines[0] if f.header else None
        row = text_lines[1 if f.header else 0]
        return head, len(row.rstrip("\n").split(f.delimiter)), row.endswith("\r\n")

    for fspecs in spec.local_splits.values():
        for f in fspecs:
            real = SHARED / spec.local_folder / f.file
            assert real.is_file(), real
            with open(real, encoding="utf-8", newline="") as fh:
                real_lines = [fh.readline(), fh.readline()]
            fixture_lines = FIXTURES[name][f.file].splitlines(keepends=True)
            assert shape(fixture_lines, f) == shape(real_lines, f), (name, f.file)


# ---- 3. the training text is what lm-eval scores ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_tasks(data_dir, tmp_path_factory):
    """Every file task prepared from the fixtures and materialized into one lm-eval include folder."""
    tmp = tmp_path_factory.mktemp("lm")
    tasks = [SHIPPED[n] for n in FILE_TASKS]
    prepared = {t.name: prepare_data(t, tmp / "cache", data_dir, need_train=not t.eval_only) for t in tasks}
    include = materialize(tasks, prepared, tmp / "work")
    return include, prepared


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from peftbench.models import tiny

    return tiny.tiny_tokenizer()  # byte-level: any text round-trips through encode/decode


@pytest.mark.parametrize("name", FILE_TASKS)
def test_training_text_equals_what_lm_eval_scores_for_the_gold_choice(name, lm_tasks, tiny_tokenizer):
    from peftbench.train.batching import tokenize_pairs

    include, prepared = lm_tasks
    task = SHIPPED[name]
    text = (include / f"{task.lm_eval_name}.yaml").read_text()
    assert "${data_dir}" not in text and str(prepared[name].folder.resolve()) in text
    lm_task = lm_eval_task(task, include)
    assert lm_task.config.target_delimiter == " "
    assert bool(lm_task.multiple_input) == (name == "winogrande")  # partial scoring: one context per option
    expected = EXPECTED[name]

    # scoring side: the gold instance lm-eval itself builds for each test document
    lm_task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in lm_task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    docs = list(lm_task.eval_docs)
    assert [dict(d) for d in docs] == expected["test"]
    for doc_id, doc in enumerate(docs):
        insts = by_doc[doc_id]
        assert len(insts) == len(doc["choices"])
        ctx, cont = tuple(insts[doc["label"]].arguments)
        assert (ctx, cont) == PROMPTS[name](doc) == gold_request(lm_task, doc)
        assert cont.startswith(lm_task.config.target_delimiter)
    if name == "winogrande":  # each option fills the blank in its own context; the rest is shared
        ctxs = [i.arguments[0] for i in by_doc[0]]
        assert ctxs == ["Sarah was a much better surgeon than Maria so Sarah",
                        "Sarah was a much better surgeon than Maria so Maria"]
        assert {i.arguments[1] for i in by_doc[0]} == {" always got the easier cases."}

    # training side: what the training loop trains on, for every training record, in file order
    if task.eval_only:
        assert not lm_task.has_training_docs()
        with pytest.raises(UsageError, match="has no training split"):
            training_pairs(lm_task)
        return
    pairs = training_pairs(lm_task)
    assert pairs == [PROMPTS[name](r) for r in expected["train"]]
    data = tokenize_pairs(pairs, tiny_tokenizer, 512)
    for (prompt, answer), ids, start in zip(pairs, data.input_ids, data.answer_start, strict=True):
        assert tiny_tokenizer.decode(ids) == prompt + answer  # the whole scored string, nothing more
        assert tiny_tokenizer.decode(ids[start:]) == answer   # loss only on the gold continuation


# ---- 4. bad inputs: named file and line, valid options, nothing half-written ------------------------------------
BAD_ROWS = [
    # (task, file in its folder, replacement text, line, needles)
    ("sst2", "data__SST-2__train.tsv", lines("sentence\tlabel", "fine \t1", "no tab at all"), 3,
     ["expected 2 tab-separated columns (sentence, label), found 1: 'no tab at all'"]),
    ("rte", "data__RTE__dev.tsv", lines("index\tsentence1\tsentence2\tlabel", "0\tonly\tthree"), 2,
     ["expected 4 tab-separated columns (index, sentence1, sentence2, label), found 3"]),
    ("rte", "val.tsv", lines("2\tA.\tB.\tentailment", "7\tA.\tB.\tneutral"), 2,  # the headerless second file
     ["label 'neutral' is not in the task's label set; valid labels: 'entailment', 'not_entailment'."]),
    ("emotion", "test.txt", lines("text;label_name", "i feel fine;joy", "i feel happy;happiness"), 3,
     ["label 'happiness' is not in the task's label set; valid labels: 'sadness', 'joy', 'love', 'anger', "
      "'fear', 'surprise'."]),
    ("emotion", "val.txt", lines("text;label_name", "no delimiter in this row"), 2,
     ["expected 2 semicolon-separated columns (text, label_name), found 1"]),
    ("sst2", "data__SST-2__test.tsv", lines("sentence\tlabel", "fine \t1", "great film \t2"), 3,
     ["label '2' is not in the task's label set; valid labels: '0', '1'."]),
    ("ag_news", "data__agnews__test.tsv", lines("Iraq talks.\tWorld", "Election news.\tPolitics"), 2,
     ["label 'Politics' is not in the task's label set; valid labels: 'World', 'Sports', 'Business', 'Sci/Tech'."]),
    ("sst2", "data__SST-2__train.tsv", lines("sentence\tlabel", "   \t1"), 2,
     ["field 'sentence' is missing or empty (the row has: sentence, label)"]),
    ("boolq", "clean/test.jsonl", jsonl({"question": "q?", "choices": ["false", "true"], "label": 2}), 1,
     ["label 2 is not in the task's label set; valid labels: '0', '1'."]),
    ("boolq", "clean/train.jsonl", '{"question": "q?", "label": 1}\n{"question": "q2?", "label": 1\n', 2,
     ["not valid JSON"]),
    ("boolq", "clean/train.jsonl", jsonl({"question": "q?", "label": 1}, {"question": "no label"}), 2,
     ["no label field 'label' (the row has: question)"]),
    ("openbookqa", "clean/test.jsonl", jsonl(["The sun is", ["a", "b"], 0]), 1,
     ["each line must be a JSON object, found list"]),
    ("arc_easy", "clean/test.jsonl", jsonl({"question": "q", "choices": ["a", "b", "c", "d"], "label": 4}), 1,
     ["label 4 is not an index into the row's 4 choices (valid: 0..3)."]),
    ("piqa", "clean/test.jsonl", jsonl({"question": "q", "choices": ["a", "b"], "label": 0},
                                       {"question": "q", "choices": ["a", "b"], "label": -1}), 2,
     ["label -1 is not an index into the row's 2 choices (valid: 0..1)."]),
    ("arc_challenge", "clean/test.jsonl", jsonl({"question": "q", "choices": "a b c d", "label": 0}), 1,
     ["field 'choices' must be a list of at least two non-empty answer strings"]),
    ("social_i_qa", "clean/test.jsonl", jsonl({"choices": ["a", "b", "c"], "label": 0}), 1,
     ["field 'question' is missing or empty (the row has: choices, label)"]),
    ("arc_easy", "clean/train.jsonl", jsonl({"question": " \t ", "choices": ["a", "b"], "label": 0}), 1,
     ["field 'question' is missing or empty"]),
    ("winogrande", "clean/test.jsonl", jsonl({"sentence": "A _ B.", "choices": ["x", "y"], "label": 0},
                                             {"sentence": "No blank here.", "choices": ["x", "y"], "label": 0}), 2,
     ["field 'sentence' must contain '_' (the prompt template needs it): 'No blank here.'"]),
]


@pytest.mark.parametrize("name,rel,text,line,needles", BAD_ROWS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(BAD_ROWS)])
def test_malformed_row_names_file_and_line_and_writes_nothing(name, rel, text, line, needles, tmp_path):
    root = make_data_dir(tmp_path / "data", only=[name])
    bad = root / SHIPPED[name].spec.local_folder / rel
    bad.write_text(text)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        prep(name, root, cache)
    msg = str(e.value)
    assert msg.startswith(f"{bad}:{line}: "), msg
    for n in needles:
        assert n in msg, (n, msg)
    assert cache_files(cache) == []  # no <split>.jsonl, no .source.json, no temporary file


EMPTY_SPLITS = [
    ("sst2", "data__SST-2__test.tsv", "sentence\tlabel\n", "test"),  # header only
    ("emotion", "val.txt", "", "validation"),                          # zero bytes
    ("rte", "val.tsv", "\n\n", "train"),                               # second file of a split, blank lines
    ("winogrande", "clean/test.jsonl", "", "test"),
]


@pytest.mark.parametrize("name,rel,text,split", EMPTY_SPLITS)
def test_file_with_no_rows_is_an_error(name, rel, text, split, tmp_path):
    root = make_data_dir(tmp_path / "data", only=[name])
    bad = root / SHIPPED[name].spec.local_folder / rel
    bad.write_text(text)
    with pytest.raises(DataError) as e:
        prep(name, root, tmp_path / "cache")
    assert str(e.value) == f"task {name!r}: {bad} has no rows (split {split!r})."
    assert cache_files(tmp_path / "cache") == []


def test_missing_data_file_is_named(tmp_path):
    root = make_data_dir(tmp_path / "data", only=["rte"])
    (root / "rte" / "val.tsv").unlink()
    with pytest.raises(DataError) as e:
        prep("rte", root, tmp_path / "cache")
    assert str(e.value) == (f"task 'rte': data file(s) not found: {root / 'rte' / 'val.tsv'}. The task expects them "
                            "in the data folder under rte/.")
    assert cache_files(tmp_path / "cache") == []
    ok, where = D.availability(SHIPPED["rte"].spec, root)
    assert not ok and where == f"local {root / 'rte'} (missing {root / 'rte' / 'val.tsv'})"
    assert D.count_rows(SHIPPED["rte"].spec, root) is None


def test_a_failing_prepare_leaves_an_earlier_good_cache_alone(tmp_path):
    root = make_data_dir(tmp_path / "data", only=["sst2"])
    good = prep("sst2", root, tmp_path / "cache")
    before = {p: p.read_bytes() for p in cache_files(tmp_path / "cache")}
    (root / "sst2" / "data__SST-2__test.tsv").write_text("sentence\tlabel\nok \t1\nbad \t7\n")
    with pytest.raises(DataError, match=r"data__SST-2__test\.tsv:3: label '7'"):
        prep("sst2", root, tmp_path / "cache")
    assert {p: p.read_bytes() for p in cache_files(tmp_path / "cache")} == before
    assert [p.name for p in (tmp_path / "cache" / "data" / "sst2").iterdir()] == [good.folder.name]


@pytest.mark.parametrize("name", [n for n in FILE_TASKS if SHIPPED[n].eval_only])
def test_eval_only_task_cannot_be_trained_on(name, data_dir, tmp_path, monkeypatch):
    assert {"piqa", "social_i_qa", "winogrande"} <= {n for n in FILE_TASKS if SHIPPED[n].eval_only}
    with pytest.raises(DataError) as e:
        prep(name, data_dir, tmp_path / "cache", need_train=True)
    assert str(e.value).startswith(f"task {name!r} has no train split (local folder {name}), but a method is asked")
    assert "--retention" in str(e.value)
    assert cache_files(tmp_path / "cache") == []
    # ... also when its data would come from the hub: refused before anything is downloaded
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or [])
    with pytest.raises(DataError, match="has no train split .hub dataset"):
        prep(name, None, tmp_path / "cache", need_train=True)
    assert calls == []
    # ... and once its data is cached, still
    prep(name, data_dir, tmp_path / "cache", need_train=False)
    with pytest.raises(DataError, match="has no train split"):
        prep(name, data_dir, tmp_path / "cache", need_train=True)


def test_plan_refuses_an_eval_only_task_in_tasks(data_dir, tmp_path):
    session = Session(SessionConfig(methods=["lora"], tasks=["piqa"], data_dir=data_dir, cache_dir=tmp_path / "c",
                                    device="cpu", model="tiny:llama", output=tmp_path / "o"))
    with pytest.raises(UsageError) as e:
        session.plan()
    assert "task 'piqa' has no train split" in str(e.value) and "--retention piqa" in str(e.value)
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


BASE_SPEC = {"fields": ["sentence"], "label": {"values": {"0": "negative", "1": "positive"}},
             "local": {"folder": "sst2", "format": "tsv", "splits": {"train": "train.tsv", "test": "test.tsv"}}}


def _spec_with(**changes):
    raw = json.loads(json.dumps(BASE_SPEC))
    for dotted, value in changes.items():
        node, *path = dotted.split("__")
        target, keys = raw, [node, *path]
        for k in keys[:-1]:
            target = target.setdefault(k, {})
        if value is None:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    return raw


SCHEMA_ERRORS = [
    (_spec_with(local__splits={"train": "train.tsv"}), "the data has no 'test' split"),
    (_spec_with(label={"values": {"0": "a", "1": "b"}, "choices_field": "choices"}),
     "data.label needs exactly one of 'values'"),
    (_spec_with(label={"field": "label"}), "data.label needs exactly one of 'values'"),
    (_spec_with(local__format="csv"), "data.local format 'csv' (split train) is not one of tsv, delimited, json, jsonl, label_first."),
    (_spec_with(local__format=None, local__splits={"train": "train.txt", "test": "test.tsv"}),
     "(split train) is not one of tsv, delimited, json, jsonl, label_first."),  # no format, unknown extension
    (_spec_with(local__format="delimited"), "split train: format 'delimited' needs a 'delimiter' (e.g. ';')."),
    (_spec_with(local__header=False), "split train: a tsv file without a header needs 'columns'."),
    (_spec_with(local__splits={"train": "train.tsv", "test": {"file": "test.tsv", "header": False}}),
     "split test: a tsv file without a header needs 'columns'."),
    (_spec_with(local__columns="sentence,label"), "data.local.columns (split train) must be a list of column names."),
    (_spec_with(contains={"sentence": ""}), "data.contains must map fields of data.fields"),
    (_spec_with(contains={"question": "_"}), "data.contains must map fields of data.fields"),
    (_spec_with(contains=["_"]), "data.contains must map fields of data.fields"),
    (_spec_with(fields=[]), "data.fields must list the record fields"),
    (_spec_with(fields="sentence"), "data.fields must list the record fields"),
    (_spec_with(label={"values": {"0": "negative"}}), "data.label.values must map at least two raw labels"),
    (_spec_with(label={"values": {"0": "bad", "1": "bad"}}), "maps two raw labels to the same word"),
    (_spec_with(label="label"), "data.label must be a mapping"),
    (_spec_with(local=None), "data needs 'local' (files in the data folder) and/or 'hub'"),
    (_spec_with(local={"splits": {"test": "t.tsv"}}), "data.local needs 'folder' and 'splits"),
    (_spec_with(local__splits={"train": {"header": True}, "test": "t.tsv"}), "data.local.splits.train needs a file"),
    (_spec_with(hub={"splits": {"test": "validation"}}), "data.hub needs 'path'"),
    (_spec_with(hub={"path": "x/y", "splits": {"test": "validation"}, "label_index": {"field": "answer"}}),
     "data.hub.label_index must be {field: F, among: PATH}"),
]


@pytest.mark.parametrize("raw,needle", SCHEMA_ERRORS, ids=[f"schema-{i}" for i in range(len(SCHEMA_ERRORS))])
def test_data_spec_schema_errors(raw, needle):
    with pytest.raises(UsageError) as e:
        parse_data_spec(raw, "mytasks/t/task.yaml")
    msg = str(e.value)
    assert msg.startswith("Task file mytasks/t/task.yaml: ") and msg.endswith("See docs/tasks.md for the task schema.")
    assert needle in msg, msg


def test_schema_error_in_a_task_file_names_the_file(tmp_path):
    import yaml

    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "lm_eval.yaml").write_text("task: t\n")
    data = _spec_with(label={"values": {"0": "a", "1": "b"}, "choices_field": "choices"})
    (folder / "task.yaml").write_text(yaml.safe_dump({"name": "t", "version": 1, "description": "d", "data": data,
                                                      "lm_eval": "lm_eval.yaml"}))
    with pytest.raises(UsageError) as e:
        load_task_file(folder / "task.yaml")
    assert str(e.value).startswith(f"Task file {folder / 'task.yaml'}: data.label needs exactly one of")
    data = _spec_with(local__splits={"train": "train.tsv"}, hub={"path": "x/y", "splits": {"train": "train"}})
    (folder / "task.yaml").write_text(yaml.safe_dump({"name": "t", "version": 1, "description": "d", "data": data,
                                                      "lm_eval": "lm_eval.yaml"}))
    with pytest.raises(UsageError, match="no 'test' split"):
        load_task_file(folder / "task.yaml")


def test_shipped_specs_parse_as_documented():
    s = {n: SHIPPED[n].spec for n in FILE_TASKS}
    assert s["sst2"].labels == SST2 and s["emotion"].labels == EMOTIONS and s["ag_news"].labels == TOPICS
    assert s["emotion"].local_splits["train"][0] == FileSpec("train.txt", "delimited", True, None, ";")
    assert s["ag_news"].local_splits["test"][0] == FileSpec("data__agnews__test.tsv", "tsv", False, ["text", "label"],
                                                            "\t")
    assert [vars(f) for f in s["rte"].local_splits["train"]] == [
        {"file": "data__RTE__train.tsv", "format": "tsv", "header": True,
         "columns": ["index", "sentence1", "sentence2", "label"], "delimiter": "\t", "encoding": "utf-8-sig"},
        {"file": "val.tsv", "format": "tsv", "header": False,
         "columns": ["index", "sentence1", "sentence2", "label"], "delimiter": "\t", "encoding": "utf-8-sig"}]
    assert s["winogrande"].contains == {"sentence": "_"}
    assert {n for n in FILE_TASKS if SHIPPED[n].eval_only} == {"piqa", "social_i_qa", "winogrande"}
    assert s["emotion"].splits == ("train", "validation", "test")


# ---- 5. the cache ------------------------------------------------------------------------------------------
def _forbid_reading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the data files were read again")

    for fmt in list(READERS):
        monkeypatch.setitem(READERS, fmt, boom)


@pytest.mark.parametrize("name", FILE_TASKS)
def test_second_prepare_reuses_the_cache(name, data_dir, tmp_path, monkeypatch):
    first = prep(name, data_dir, tmp_path / "cache")
    _forbid_reading(monkeypatch)
    again = prep(name, data_dir, tmp_path / "cache")
    assert again == first


def test_cache_is_redone_when_a_split_file_is_missing(data_dir, tmp_path):
    first = prep("sst2", data_dir, tmp_path / "cache")
    (first.folder / "train.jsonl").unlink()
    again = prep("sst2", data_dir, tmp_path / "cache")
    assert again.folder == first.folder and read_records(again.folder / "train.jsonl") == EXPECTED["sst2"]["train"]


def test_same_bytes_rewritten_keep_the_fingerprint_and_new_bytes_change_it(tmp_path, monkeypatch):
    root = make_data_dir(tmp_path / "data", only=["sst2"])
    first = prep("sst2", root, tmp_path / "cache")
    test_file = root / "sst2" / "data__SST-2__test.tsv"
    test_file.write_bytes(test_file.read_bytes())  # new mtime, same content
    assert prep("sst2", root, tmp_path / "cache").folder == first.folder
    test_file.write_text("sentence\tlabel\nan edited phrase \t0\n")
    edited = prep("sst2", root, tmp_path / "cache")
    assert edited.folder != first.folder and edited.folder.parent == first.folder.parent
    assert read_records(edited.folder / "test.jsonl") == [rec(SST2, 0, sentence="an edited phrase")]
    assert edited.sizes == {"train": 4, "test": 1}
    assert edited.source["splits"]["test"][0]["sha256"] == sha(test_file)
    assert read_records(first.folder / "test.jsonl") == EXPECTED["sst2"]["test"]  # the old entry is untouched


def test_swapping_train_and_test_contents_changes_the_fingerprint(tmp_path):
    root = make_data_dir(tmp_path / "data", only=["sst2"])
    first = prep("sst2", root, tmp_path / "cache")
    a, b = root / "sst2" / "data__SST-2__train.tsv", root / "sst2" / "data__SST-2__test.tsv"
    ta, tb = a.read_bytes(), b.read_bytes()
    a.write_bytes(tb)
    b.write_bytes(ta)
    swapped = prep("sst2", root, tmp_path / "cache")
    assert swapped.folder != first.folder  # the same set of digests, assigned to other splits
    held = read_records(swapped.folder / "validation.jsonl")  # 10 train rows now: 1 held out for validation
    assert len(held) == 1 and held[0] in EXPECTED["sst2"]["test"]
    assert read_records(swapped.folder / "train.jsonl") == [r for r in EXPECTED["sst2"]["test"] if r not in held]
    assert read_records(swapped.folder / "test.jsonl") == EXPECTED["sst2"]["train"]


def test_swapping_two_files_of_one_split_changes_the_fingerprint(tmp_path):
    """Like rte's train (two files, concatenated): the file order is part of the fingerprint."""
    spec = parse_data_spec({"fields": ["sentence"], "label": {"values": ["negative", "positive"]},
                            "local": {"folder": "two", "splits": {"train": ["a.tsv", "b.tsv"], "test": "t.tsv"}}},
                           "t.yaml")
    folder = tmp_path / "data" / "two"
    folder.mkdir(parents=True)
    (folder / "a.tsv").write_text("sentence\tlabel\nfrom a \t0\n")
    (folder / "b.tsv").write_text("sentence\tlabel\nfrom b \t1\n")
    (folder / "t.tsv").write_text("sentence\tlabel\ntest \t1\n")
    first = D.prepare("two", spec, tmp_path / "data", tmp_path / "cache", True)
    assert [r["sentence"] for r in read_records(first.folder / "train.jsonl")] == ["from a", "from b"]
    ta, tb = (folder / "a.tsv").read_bytes(), (folder / "b.tsv").read_bytes()
    (folder / "a.tsv").write_bytes(tb)
    (folder / "b.tsv").write_bytes(ta)
    swapped = D.prepare("two", spec, tmp_path / "data", tmp_path / "cache", True)
    assert swapped.folder != first.folder
    assert [r["sentence"] for r in read_records(swapped.folder / "train.jsonl")] == ["from b", "from a"]


def test_a_changed_spec_changes_the_fingerprint(data_dir, tmp_path):
    first = prep("sst2", data_dir, tmp_path / "cache")
    raw = _spec_with(label={"values": {"0": "bad", "1": "good"}},
                     local__splits={"train": "data__SST-2__train.tsv", "test": "data__SST-2__test.tsv"})
    relabelled = D.prepare("sst2", parse_data_spec(raw, "t.yaml"), data_dir, tmp_path / "cache", True)
    assert relabelled.folder != first.folder
    assert read_records(relabelled.folder / "test.jsonl")[0] == rec(["bad", "good"], 0, sentence="held-out phrase 0")


def test_remapping_raw_labels_changes_the_fingerprint(data_dir, tmp_path):
    files = {"train": "data__SST-2__train.tsv", "test": "data__SST-2__test.tsv"}
    first = D.prepare("sst2", parse_data_spec(_spec_with(local__splits=files), "t.yaml"), data_dir,
                      tmp_path / "cache", True)
    flipped = _spec_with(local__splits=files, label={"values": {"1": "negative", "0": "positive"}})
    again = D.prepare("sst2", parse_data_spec(flipped, "t.yaml"), data_dir, tmp_path / "cache", True)
    # held-out phrase 0 has raw label 0, which now means 'positive' (index 1)
    assert read_records(again.folder / "test.jsonl")[0]["label"] == 1
    assert again.folder != first.folder


def test_two_sessions_preparing_the_same_data_at_once(tmp_path, monkeypatch):
    import os

    root = make_data_dir(tmp_path / "data", only=["sst2"])
    real_replace = os.replace
    calls = []

    def replace(src, dst):  # another process writes and renames the same split between our write and rename
        calls.append(src)
        if len(calls) == 1:
            monkeypatch.setattr(D.os, "replace", real_replace)
            prep("sst2", root, tmp_path / "cache")
            monkeypatch.setattr(D.os, "replace", replace)
        return real_replace(src, dst)

    monkeypatch.setattr(D.os, "replace", replace)
    out = prep("sst2", root, tmp_path / "cache")
    assert read_records(out.folder / "train.jsonl") == EXPECTED["sst2"]["train"]


# ---- 6. where the data comes from ------------------------------------------------------------------------------
def _glue(sentence1, sentence2, label, idx):
    return {"sentence1": sentence1, "sentence2": sentence2, "label": label, "idx": idx}


def _arc(qid, question, texts, labels, key):
    return {"id": qid, "question": question, "choices": {"text": texts, "label": labels}, "answerKey": key}


# task -> hub split -> rows in the hub dataset's own format
HUB_ROWS = {
    "sst2": {"train": [{"sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0},
                       {"sentence": "that loves its characters ", "label": 1, "idx": 1}],
             "validation": [{"sentence": "it 's a charming and often affecting journey . ", "label": 1, "idx": 0}]},
    "emotion": {"train": [{"text": "i didnt feel humiliated", "label": 0}, {"text": "i feel so scared", "label": 4}],
                "validation": [{"text": "i feel romantic too", "label": 2}],
                "test": [{"text": "i was amazed", "label": 5}, {"text": "i am furious", "label": 3}]},
    "ag_news": {"train": [{"text": "Phelps wins gold.", "label": 1}, {"text": "New chip unveiled.", "label": 3}],
                "test": [{"text": "Stocks fall.", "label": 2}, {"text": "Talks resume.", "label": 0}]},
    "rte": {"train": [_glue("No WMD Found in Iraq Yet.", "WMD Found in Iraq.", 1, 0),
                      _glue("Pope Benedict XVI was installed.", "Benedict is the new pope.", 0, 1)],
            "validation": [_glue("Dana Reeve has died.", "Christopher Reeve had an accident.", 1, 0)]},
    "boolq": {"train": [{"question": "do iran and afghanistan speak the same language", "answer": True,
                         "passage": "Persian ..."}],
              "validation": [{"question": "is house tax and property tax are same", "answer": False,
                              "passage": "Property tax ..."}]},
    "arc_easy": {"train": [_arc("Mercury_1", "Which factor causes a fever?", ARC_C, ["A", "B", "C", "D"], "B")],
                 "test": [_arc("NYSEDREGENTS_1", "Which is renewable?", ["coal", "oil", "wind"], ["1", "2", "3"],
                               "3")]},
    "arc_challenge": {"train": [_arc("Mercury_2", "Which surface heats most?", ["dry", "wet", "oily", "lotion"],
                                     ["A", "B", "C", "D"], "A")],
                      "test": [_arc("Mercury_3", "Which effect?", ["denser", "longer years", "shorter days", "heavier"],
                                    ["A", "B", "C", "D"], "C")]},
    "openbookqa": {"train": [{"id": "7-980", "question_stem": "The sun is responsible for",
                              "choices": {"text": ["puppies", "children", "flowers wilting", "plants sprouting"],
                                          "label": ["A", "B", "C", "D"]}, "answerKey": "D"}],
                   "test": [{"id": "8-376", "question_stem": "There is most likely going to be fog around:",
                             "choices": {"text": ["a marsh", "a tundra", "the plains", "a desert"],
                                         "label": ["A", "B", "C", "D"]}, "answerKey": "A"}]},
    "piqa": {"validation": [{"goal": "How do I ready a guinea pig cage?", "sol1": "Paper bedding.",
                             "sol2": "Jeans bedding.", "label": 0},
                            {"goal": "dresser", "sol1": "replace drawer", "sol2": "finish  woodgrain", "label": 1}]},
    "social_i_qa": {"validation": [{"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
                                    "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
                                    "answerB": "Go home and see Riley", "answerC": "Find somewhere to go",
                                    "label": "3"}]},
    "winogrande": {"validation": [{"sentence": "Sarah was a better surgeon than Maria so _ got the harder cases.",
                                   "option1": "Sarah", "option2": "Maria", "answer": "1"},
                                  {"sentence": "The trophy doesn't fit in the suitcase because the _ is too small.",
                                   "option1": "trophy", "option2": "suitcase", "answer": "2"}]},
}

# task -> our split -> records prepare() must make from HUB_ROWS
HUB_EXPECTED = {
    "sst2": {"train": [rec(SST2, 0, sentence="hide new secretions from the parental units"),
                       rec(SST2, 1, sentence="that loves its characters")],
             "test": [rec(SST2, 1, sentence="it 's a charming and often affecting journey .")]},
    "emotion": {"train": [rec(EMOTIONS, 0, text="i didnt feel humiliated"), rec(EMOTIONS, 4, text="i feel so scared")],
                "validation": [rec(EMOTIONS, 2, text="i feel romantic too")],
                "test": [rec(EMOTIONS, 5, text="i was amazed"), rec(EMOTIONS, 3, text="i am furious")]},
    "ag_news": {"train": [rec(TOPICS, 1, text="Phelps wins gold."), rec(TOPICS, 3, text="New chip unveiled.")],
                "test": [rec(TOPICS, 2, text="Stocks fall."), rec(TOPICS, 0, text="Talks resume.")]},
    "rte": {"train": [rec(TF, 1, sentence1="No WMD Found in Iraq Yet.", sentence2="WMD Found in Iraq."),
                      rec(TF, 0, sentence1="Pope Benedict XVI was installed.", sentence2="Benedict is the new pope.")],
            "test": [rec(TF, 1, sentence1="Dana Reeve has died.", sentence2="Christopher Reeve had an accident.")]},
    "boolq": {"train": [rec(NOYES, 1, question="do iran and afghanistan speak the same language")],
              "test": [rec(NOYES, 0, question="is house tax and property tax are same")]},
    "arc_easy": {"train": [rec(ARC_C, 1, question="Which factor causes a fever?")],
                 "test": [rec(["coal", "oil", "wind"], 2, question="Which is renewable?")]},
    "arc_challenge": {"train": [rec(["dry", "wet", "oily", "lotion"], 0, question="Which surface heats most?")],
                      "test": [rec(["denser", "longer years", "shorter days", "heavier"], 2, question="Which effect?")]},
    "openbookqa": {"train": [rec(["puppies", "children", "flowers wilting", "plants sprouting"], 3,
                                 question="The sun is responsible for")],
                   "test": [rec(["a marsh", "a tundra", "the plains", "a desert"], 0,
                                question="There is most likely going to be fog around:")]},
    "piqa": {"test": [rec(["Paper bedding.", "Jeans bedding."], 0, question="How do I ready a guinea pig cage?"),
                      rec(["replace drawer", "finish woodgrain"], 1, question="dresser")]},
    "social_i_qa": {"test": [rec(["make a new plan", "Go home and see Riley", "Find somewhere to go"], 2,
                                 question="Tracy didn't go home that evening and resisted Riley's attacks. What does "
                                          "Tracy need to do before this?")]},
    "winogrande": {"test": [rec(["Sarah", "Maria"], 0,
                                sentence="Sarah was a better surgeon than Maria so _ got the harder cases."),
                            rec(["trophy", "suitcase"], 1,
                                sentence="The trophy doesn't fit in the suitcase because the _ is too small.")]},
}


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset replaced by rows in the hub's format; returns the list of calls."""
    import datasets

    calls: list[tuple] = []
    state = {"rows": {}, "error": None}

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if state["error"]:
            raise state["error"]
        return [dict(r) for r in state["rows"][split]]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, state


def test_every_hub_task_has_hub_fixture_rows():
    assert set(HUB_TASKS) == set(HUB_ROWS) == set(HUB_EXPECTED)


@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_source_when_the_data_folder_lacks_the_task(name, fake_hub, tmp_path):
    calls, state = fake_hub
    state["rows"] = HUB_ROWS[name]
    hub = SHIPPED[name].spec.hub
    empty_root = make_data_dir(tmp_path / "data", only=[])  # a data folder without this task's folder
    for root in (None, empty_root):
        calls.clear()
        out = prep(name, root, tmp_path / f"cache-{root is None}")
        assert calls == [(hub["path"], hub["name"], s) for s in hub["splits"].values()]
        assert out.source == {"kind": "hub", "path": hub["path"], "name": hub["name"],
                              "splits": {ours: {"split": theirs, "fingerprint": None, "rows": len(HUB_ROWS[name][theirs])}
                                         for ours, theirs in hub["splits"].items()}}
        assert out.sizes == {s: len(r) for s, r in HUB_EXPECTED[name].items()}
        for split, records in HUB_EXPECTED[name].items():
            assert read_records(out.folder / f"{split}.jsonl") == records, split
        assert json.loads((out.folder / ".source.json").read_text()) == {"source": out.source, "sizes": out.sizes}
    ok, where = D.availability(SHIPPED[name].spec, empty_root)
    assert ok and where.startswith(f"hub {hub['path']}") and where.endswith("(needs hub access)")
    assert D.count_rows(SHIPPED[name].spec, empty_root) is None


def test_local_data_wins_over_the_hub(data_dir, fake_hub, tmp_path):
    calls, state = fake_hub
    state["error"] = AssertionError("the hub was asked")
    assert SHIPPED["sst2"].spec.hub
    out = prep("sst2", data_dir, tmp_path / "cache")
    assert out.source["kind"] == "local" and calls == []


def test_hub_failure_names_both_the_data_dir_and_the_hub(fake_hub, tmp_path):
    calls, state = fake_hub
    state["error"] = ConnectionError("huggingface.co unreachable")
    with pytest.raises(DataError) as e:
        prep("winogrande", None, tmp_path / "cache")
    assert str(e.value) == ("task 'winogrande': the hub dataset 'allenai/winogrande' (split 'validation') could not be "
                            "loaded (ConnectionError: huggingface.co unreachable). Pass --data-dir (or set "
                            "$PEFTBENCH_DATA_DIR) to a local data folder instead.")
    assert cache_files(tmp_path / "cache") == []


def test_hub_label_outside_the_label_set(fake_hub, tmp_path):
    """GLUE's test split has label -1: named by hub split and row, with the valid labels."""
    calls, state = fake_hub
    state["rows"] = {"train": HUB_ROWS["sst2"]["train"],
                     "validation": [HUB_ROWS["sst2"]["validation"][0], {"sentence": "x", "label": -1, "idx": 1}]}
    with pytest.raises(DataError) as e:
        prep("sst2", None, tmp_path / "cache")
    assert str(e.value) == ("hub nyu-mll/glue validation row 2: label -1 is not in the task's label set; valid labels: "
                            "'0', '1'.")
    assert cache_files(tmp_path / "cache") == []


def test_hub_label_values_must_match_the_label_words(fake_hub, tmp_path):
    raw = _spec_with(hub={"path": "nyu-mll/glue", "name": "sst2", "splits": {"train": "train", "test": "validation"},
                          "label_values": {"0": "positive", "1": "negative"}})
    with pytest.raises(DataError, match="must map onto the same label words, in the same order, as data.label.values "
                                        r"\(negative, positive\)"):
        D.prepare("sst2", parse_data_spec(raw, "t.yaml"), None, tmp_path / "cache", True)
    assert fake_hub[0] == []


def test_no_data_dir_and_no_hub_is_a_clear_error(tmp_path):
    spec = parse_data_spec(BASE_SPEC, "t.yaml")
    with pytest.raises(DataError) as e:
        D.prepare("tickets", spec, None, tmp_path / "cache", True)
    assert str(e.value) == ("task 'tickets': no data found. Pass --data-dir (or set $PEFTBENCH_DATA_DIR) to a folder "
                            "that holds sst2/; the task names no hub dataset to fall back on.")
    root = make_data_dir(tmp_path / "data", only=[])
    with pytest.raises(DataError, match=rf"no data found \(looked in {re.escape(str(root))}\)\. Pass --data-dir"):
        D.prepare("tickets", spec, root, tmp_path / "cache", True)
    assert D.availability(spec, None) == (False, "no data: pass --data-dir (or set $PEFTBENCH_DATA_DIR)")


def test_hub_row_mapping():
    row = {"id": "q1", "context": "Tracy stayed.", "question": "Why?", "answerA": "a", "answerB": "b",
           "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "C", "n": "2"}
    out = hub_row(row, {"columns": {"q": "{context} {question}", "opts": ["answerA", "answerB"],
                                      "texts": "choices.text"},
                          "label_index": {"field": "answerKey", "among": "choices.label"}}, "w")
    assert (out["q"], out["opts"], out["texts"], out["label"]) == ("Tracy stayed. Why?", ["a", "b"], ["x", "y", "z"], 2)
    assert out["id"] == "q1"  # unmapped fields stay
    assert hub_row(row, {"label_index": {"field": "n", "base": 1}}, "w")["label"] == 1
    assert hub_row(row, {"columns": {}}, "w") == row
    with pytest.raises(DataError, match=r"^hub x row 3: no field 'choices.score' \(the row has: id, context"):
        hub_row(row, {"columns": {"s": "choices.score"}}, "hub x row 3")
    with pytest.raises(DataError, match=r"^w: label 'C' is not one of \['A', 'B'\]"):
        hub_row({**row, "choices": {"text": [], "label": ["A", "B"]}},
                  {"label_index": {"field": "answerKey", "among": "choices.label"}}, "w")
    with pytest.raises(DataError, match=r"^w: label 'x' is not a number"):
        hub_row({"answer": "x"}, {"label_index": {"field": "answer", "base": 1}}, "w")
    with pytest.raises(DataError, match=r"^w: column template '\{context\} \{missing\}' names a field the row lacks"):
        hub_row(row, {"columns": {"q": "{context} {missing}"}}, "w")


def test_data_root_explicit_beats_env_and_missing_folders_are_errors(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert D.data_root(None) is None
    monkeypatch.setenv(D.DATA_DIR_ENV, str(b))
    assert D.data_root(None) == b
    assert D.data_root(a) == a and D.data_root(str(a)) == a
    with pytest.raises(DataError) as e:
        D.data_root(tmp_path / "nope")
    assert str(e.value).startswith(f"--data-dir {tmp_path / 'nope'}: no such folder.")
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(DataError, match=rf"^\$PEFTBENCH_DATA_DIR {re.escape(str(tmp_path / 'gone'))}: no such folder"):
        D.data_root(None)


# ---- 7. the CLI ---------------------------------------------------------------------------------------------------
def _no_session_files(out: Path) -> bool:
    return not (out / "session.json").exists() and not list(out.glob("runs/*.json"))


CLI_ERRORS = [
    # (tasks, retention, task whose file is broken, file, text, expected in the message)
    ("sst2", "none", "sst2", "data__SST-2__train.tsv", lines("sentence\tlabel", "fine \t1", "great film \t5"),
     ":3: label '5' is not in the task's label set; valid labels: '0', '1'."),
    # the retention task's data is checked too, before the training task is trained
    ("sst2", "winogrande", "winogrande", "clean/test.jsonl",
     jsonl({"sentence": "No blank.", "choices": ["a", "b"], "label": 0}), ":1: field 'sentence' must contain '_'"),
]


@pytest.mark.parametrize("tasks,retention,broken,rel,text,needle", CLI_ERRORS, ids=["bad-label", "bad-retention-data"])
def test_cli_run_with_bad_data_exits_2_before_training(tasks, retention, broken, rel, text, needle, capsys, tmp_path):
    root = make_data_dir(tmp_path / "data", only=["sst2", "winogrande"])
    bad = root / SHIPPED[broken].spec.local_folder / rel
    bad.write_text(text)
    out = tmp_path / "o"
    code, stdout, err = run_cli(["run", "--methods", "lora", "--tasks", tasks, "--retention", retention, *TINY,
                                 "--data-dir", str(root), "--output", str(out)], capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith(f"error: {bad}")
    assert needle in err
    assert _no_session_files(out)


def test_cli_run_eval_only_task_and_missing_data_dir(capsys, tmp_path, data_dir):
    code, _, err = run_cli(["run", "--methods", "lora", "--tasks", "piqa", *TINY, "--data-dir", str(data_dir),
                            "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "task 'piqa' has no train split" in err and "--retention piqa" in err
    assert "Traceback" not in err and _no_session_files(tmp_path / "o")
    code, _, err = run_cli(["run", "--methods", "lora", "--tasks", "sst2", *TINY, "--data-dir", str(tmp_path / "nope"),
                            "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and f"--data-dir {tmp_path / 'nope'}: no such folder" in err and "Traceback" not in err


def test_cli_tasks_json_reports_the_fixture_data(capsys, data_dir):
    code, out, _ = run_cli(["tasks", "--data-dir", str(data_dir), "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) >= set(SHIPPED)  # plus tasks of installed plugins (the example plugin adds one)
    for name in FILE_TASKS:
        r = rows[name]
        assert r["available"] is True and r["source"] == f"local {data_dir / SHIPPED[name].spec.local_folder}", name
        assert r["sizes"] == {s: len(v) for s, v in EXPECTED[name].items()}, name
        assert r["eval_only"] == (name in ("piqa", "social_i_qa", "winogrande"))
        assert r["data"]["local"]["folder"] == SHIPPED[name].spec.local_folder
    assert rows["quickstart"]["source"] == "generated (quickstart)" and rows["quickstart"]["sizes"] is None
    assert rows["emotion"]["data"]["labels"] == EMOTIONS


def test_cli_tasks_json_partial_folder_falls_back_to_the_hub(capsys, tmp_path):
    root = make_data_dir(tmp_path / "data", only=["sst2"])
    code, out, _ = run_cli(["tasks", "--data-dir", str(root), "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["sst2"]["sizes"] == {"train": 4, "test": 10}
    assert rows["rte"]["available"] is True and rows["rte"]["source"] == "hub nyu-mll/glue/rte (needs hub access)"
    assert rows["rte"]["sizes"] is None


def test_count_rows_of_an_empty_headered_file_is_zero(tmp_path):
    root = make_data_dir(tmp_path / "data", only=["sst2"])
    (root / "sst2" / "data__SST-2__test.tsv").write_text("")
    assert D.count_rows(SHIPPED["sst2"].spec, root) == {"train": 4, "test": 0}


def _docs_example(tmp_path: Path) -> tuple[Path, Path]:
    """docs/tasks.md's worked example ('Adding a task'), written out exactly as the docs give it."""
    text = (ROOT / "docs" / "tasks.md").read_text()
    section = text[text.index("## Adding a task"):]
    blocks = section.split("```yaml\n")[1:3]
    task_yaml, lm_yaml = (b[:b.index("```")] for b in blocks)
    sample = section[section.index("    text\tcategory"):].split("\n\n")[0]
    tsv = "".join(line[4:] + "\n" for line in sample.splitlines())
    assert tsv == "text\tcategory\nMy invoice is wrong\tbilling\nThe app crashes on start\tbug\n"
    tasks_dir, data = tmp_path / "mytasks", tmp_path / "mydata"
    (tasks_dir / "tickets").mkdir(parents=True)
    (tasks_dir / "tickets" / "task.yaml").write_text(task_yaml)
    (tasks_dir / "tickets" / "lm_eval.yaml").write_text(lm_yaml)
    (data / "tickets").mkdir(parents=True)
    (data / "tickets" / "train.tsv").write_text(tsv)
    (data / "tickets" / "test.tsv").write_text(tsv.replace("My invoice is wrong", "I cannot log in").replace(
        "billing", "account"))
    return tasks_dir, data


def test_docs_worked_example_task_is_listed_and_prepared(capsys, tmp_path):
    tasks_dir, data = _docs_example(tmp_path)
    code, out, _ = run_cli(["tasks", "--tasks-dir", str(tasks_dir), "--data-dir", str(data), "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and "sst2" in rows  # shipped tasks are still listed
    t = rows["tickets"]
    assert (t["available"], t["source"], t["sizes"]) == (True, f"local {data / 'tickets'}", {"train": 2, "test": 2})
    assert t["data"]["labels"] == ["billing", "bug", "account"] and t["eval_only"] is False

    session = Session(SessionConfig(methods=["lora"], tasks=["tickets"], tasks_dirs=[tasks_dir], data_dir=data,
                                    cache_dir=tmp_path / "cache", device="cpu", model="tiny:llama",
                                    output=tmp_path / "o", retention=[]))
    plan = session.plan()
    prepared = plan.prepared["tickets"]
    assert prepared.sizes == {"train": 2, "test": 2} and prepared.source["kind"] == "local"
    labels = ["billing", "bug", "account"]
    assert read_records(prepared.folder / "train.jsonl") == [rec(labels, 0, text="My invoice is wrong"),
                                                             rec(labels, 1, text="The app crashes on start")]
    include = materialize(plan.eval_tasks, plan.prepared, tmp_path / "work")
    assert training_pairs(lm_eval_task(plan.tasks[0], include)) == [
        ("Ticket: My invoice is wrong\nTeam:", " billing"), ("Ticket: The app crashes on start\nTeam:", " bug")]


# ---- 8. end to end on CPU -------------------------------------------------------------------------------------
def test_end_to_end_run_on_fixture_data_with_retention(capsys, tmp_path, data_dir):
    out = tmp_path / "session"
    code, _, err = run_cli(["run", "--methods", "lora", "--tasks", "sst2", *TINY, "--data-dir", str(data_dir),
                            "--retention", "winogrande", "--limit", "8", "--set", "steps=2",
                            "--set", "latency_rounds=0", "--set", "merge_eval=false",
                            "--set", "merge_precisions=false", "--output", str(out)], capsys)
    assert code == 0, err
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {"base--sst2--seed0", "lora--sst2--seed0"}
    test_rows = len(EXPECTED["sst2"]["test"])
    wino_rows = len(EXPECTED["winogrande"]["test"])
    assert test_rows > 8  # so the limit bites
    for key, r in runs.items():
        assert r["status"] == "ok", (key, r.get("error"))
        assert r["data"]["kind"] == "local"
        assert r["data"]["splits"]["test"] == [{"file": "data__SST-2__test.tsv",
                                                "sha256": sha(data_dir / "sst2" / "data__SST-2__test.tsv")}]
        assert r["limit"] == 8
        assert r["eval"]["n_samples"] == min(8, test_rows)
        w = r["retention"]["winogrande"]
        assert w["n_samples"] == min(8, wino_rows) and 0.0 <= w["score"] <= 1.0
    base = runs["base--sst2--seed0"]["retention"]["winogrande"]
    lora = runs["lora--sst2--seed0"]["retention"]["winogrande"]
    assert runs["lora--sst2--seed0"]["train"]["steps"] == 2
    assert lora["base"] == base["score"]
    assert lora["delta"] == pytest.approx(lora["score"] - lora["base"], abs=1e-9)
    session = json.loads((out / "session.json").read_text())
    assert session["tasks"]["sst2"]["data_source"]["kind"] == "local"
    assert session["tasks"]["sst2"]["sizes"] == {"train": 4, "test": 10}
    assert session["tasks"]["winogrande"]["sizes"] == {"test": wino_rows}
    assert session["retention"] == {"sst2": ["winogrande"]}


def test_a_failing_retention_task_is_recorded_and_loses_neither_the_cell_nor_the_other_task(capsys, tmp_path,
                                                                                           data_dir, monkeypatch):
    """One retention task that cannot be scored (found on CPU: lm-eval asserts when a piqa continuation is
    longer than a small model's context) is recorded with its error; the cell stays ok with its own score
    and the other retention task's; the leaderboard shows 'error' in that column."""
    import peftbench.evaluate.scoring as evaluation

    real = evaluation.evaluate

    def failing_on_piqa(model, tokenizer, task, *args, **kwargs):
        if task.name == "piqa":
            raise AssertionError
        return real(model, tokenizer, task, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", failing_on_piqa)
    out = tmp_path / "session"
    code, stdout, err = run_cli(["run", "--methods", "full", "--tasks", "sst2", *TINY, "--data-dir", str(data_dir),
                                 "--retention", "piqa,winogrande", "--limit", "4", "--set", "steps=1",
                                 "--set", "latency_rounds=0", "--output", str(out)], capsys)
    assert code == 0, err
    for key in ("base--sst2--seed0", "full--sst2--seed0"):
        r = json.loads((out / "runs" / f"{key}.json").read_text())
        assert r["status"] == "ok" and r["eval"]["n_samples"] == 4
        piqa, wino = r["retention"]["piqa"], r["retention"]["winogrande"]
        assert piqa["score"] is None and piqa["error"]["type"] == "AssertionError"
        assert piqa["error"]["message"] == "(no message)" and "failing_on_piqa" in piqa["error"]["traceback"]
        assert 0.0 <= wino["score"] <= 1.0
    rows = [line for line in stdout.splitlines() if line.startswith("│ ") and not line.startswith(("│ chance", "│ majority"))]
    assert len(rows) == 2 and all(row.split("│")[-4].strip() == "error" for row in rows)   # the piqa Δ column
