"""The ``quickstart_gen`` task's data, generated deterministically (no download): one-step word problems
whose answer the model writes, laid out as GSM8K's are (the working, then ``#### N``).

``Tom has 12 marbles and gets 7 more. How many marbles does Tom have now?`` -> ``12 + 7 = 19\\n#### 19``.
Problems add, subtract or multiply small numbers. A test problem's pair of numbers never occurs in a
training problem, so a high score needs the arithmetic, not recall. It exercises everything a generative
task does (a multi-line answer, the ``#### N`` extraction, the stop sequence) on any machine, without data.
"""

from __future__ import annotations

import random
from pathlib import Path

from peftbench.tasks.quickstart import write_splits

VERSION = 1
NAMES = ("Tom", "Ana", "Li", "Sam", "Ravi", "Mia", "Omar", "Zoe")
THINGS = ("marbles", "apples", "stamps", "books", "coins", "shells", "pencils", "cards")
PROBLEMS = {  # operation -> (question template, sign, how its numbers are drawn)
    "add": ("{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", "+"),
    "sub": ("{name} had {a} {thing} and gave away {b}. How many {thing} does {name} have left?", "-"),
    "mul": ("{name} buys {a} bags with {b} {thing} in each. How many {thing} does {name} buy?", "*"),
}
TRAIN_EXAMPLES = 2000
TEST_EXAMPLES = 240


def _numbers(op: str, rng: random.Random) -> tuple[int, int]:
    if op == "mul":
        return rng.randint(2, 12), rng.randint(2, 12)
    a, b = rng.randint(2, 60), rng.randint(1, 40)
    return (max(a, b), min(a, b)) if op == "sub" else (a, b)


def held_out(op: str, a: int, b: int) -> bool:
    """Whether a pair of numbers belongs to the test split (about one pair in five, per operation)."""
    return (a * 7 + b * 3 + len(op)) % 5 == 0


def problem(op: str, a: int, b: int, name: str, thing: str) -> dict[str, str]:
    template, sign = PROBLEMS[op]
    result = {"+": a + b, "-": a - b, "*": a * b}[sign]
    return {"question": template.format(name=name, thing=thing, a=a, b=b),
            "answer": f"{a} {sign} {b} = {result}\n#### {result}"}


def _split(rng: random.Random, n: int, test: bool) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    ops = list(PROBLEMS)
    while len(rows) < n:
        op = ops[len(rows) % len(ops)]  # the operations take turns: any --limit prefix mixes all three
        a, b = _numbers(op, rng)
        if held_out(op, a, b) == test:
            rows.append(problem(op, a, b, rng.choice(NAMES), rng.choice(THINGS)))
    return rows


def generate(directory: Path) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` into ``directory`` (idempotent); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261123)
    return write_splits(directory, {"train": _split(rng, TRAIN_EXAMPLES, test=False),
                                    "test": _split(rng, TEST_EXAMPLES, test=True)})
