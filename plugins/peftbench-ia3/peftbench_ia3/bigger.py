"""The data generator of the example task `bigger`: which of two numbers is bigger (answers: first/second)."""

import json
import random
from pathlib import Path


def generate(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    pairs = [(a, b) for a in range(1, 60) for b in range(1, 60) if a != b]
    rng.shuffle(pairs)
    for split, rows in (("test", pairs[:200]), ("train", pairs[200:1200])):
        text = "".join(json.dumps({"a": a, "b": b, "choices": ["first", "second"], "label": int(b > a)}) + "\n"
                       for a, b in rows)
        tmp = directory / f".{split}.jsonl.tmp"
        tmp.write_text(text)
        tmp.replace(directory / f"{split}.jsonl")
