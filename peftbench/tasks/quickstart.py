"""The ``quickstart`` task's data, generated deterministically (no download).

Each example is a sentence that mentions one thing from one of four everyday categories (fruit,
animals, vehicles, tools); the answer is an arbitrary nonce tag per category (``dax``, ``wug``, ``fep``,
``lum``). A model cannot know the tags zero-shot (chance is 25 %), but it already knows the categories,
so fine-tuning can teach the mapping in a few hundred steps. Train and test use disjoint items, so a
high score means the category -> tag rule was learnt, not memorised.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from peftbench.system.files import atomic_write

VERSION = 1
TAGS = ("dax", "wug", "fep", "lum")
CATEGORIES = {
    "fruit": "apple banana cherry grape lemon mango peach pear plum orange melon kiwi lime apricot coconut "
             "papaya fig raspberry strawberry blueberry pineapple watermelon tangerine grapefruit lychee "
             "guava nectarine pomegranate blackberry cranberry",
    "animal": "horse tiger zebra camel otter sheep goat wolf lion bear rabbit monkey giraffe elephant fox "
              "deer squirrel kangaroo donkey leopard panda koala hippo cheetah moose beaver hamster mouse "
              "buffalo raccoon",
    "vehicle": "car bus truck bicycle train tram taxi van motorcycle scooter tractor ambulance airplane "
               "helicopter boat ship submarine canoe yacht jeep limousine minivan ferry rocket sled wagon "
               "trolley skateboard glider caravan",
    "tool": "hammer wrench screwdriver saw drill chisel pliers shovel rake axe ladder trowel hacksaw clamp "
            "mallet crowbar sander stapler scissors spanner chainsaw hoe pickaxe sickle scythe vise awl "
            "multimeter jigsaw sledgehammer",
}
TEMPLATES = (
    "I saw the {x} today.",
    "She talked about the {x} for an hour.",
    "There is the {x} in the picture.",
    "My friend wants the {x} back.",
    "We read a story about the {x}.",
    "The {x} was mentioned twice.",
    "Nobody expected the {x} to be there.",
    "He drew the {x} on the wall.",
    "They could not find the {x} anywhere.",
    "The {x} is on the first page.",
)
TEST_ITEMS_PER_CATEGORY = 8
TRAIN_EXAMPLES = 2000


def _examples(items_by_cat: dict[str, list[str]], rng: random.Random | None, n: int | None) -> list[dict]:
    cats = list(CATEGORIES)
    rows = []
    if rng is None:  # every item x template, in a fixed order
        for ci, cat in enumerate(cats):
            for item in items_by_cat[cat]:
                for t in TEMPLATES:
                    rows.append({"text": t.format(x=item), "choices": list(TAGS), "label": ci})
        return rows
    for _ in range(n or 0):
        ci = rng.randrange(len(cats))
        item = rng.choice(items_by_cat[cats[ci]])
        rows.append({"text": rng.choice(TEMPLATES).format(x=item), "choices": list(TAGS), "label": ci})
    return rows


def generate(directory: Path) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` into ``directory`` (idempotent); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261122)
    train_items, test_items = {}, {}
    for cat, words in CATEGORIES.items():
        items = words.split()
        rng.shuffle(items)
        test_items[cat] = sorted(items[:TEST_ITEMS_PER_CATEGORY])
        train_items[cat] = sorted(items[TEST_ITEMS_PER_CATEGORY:])
    test = _examples(test_items, None, None)
    # interleave the classes so that any prefix (--limit N) stays balanced: label order 0,1,2,3,0,1,...
    per_class = [[r for r in test if r["label"] == c] for c in range(len(CATEGORIES))]
    for rows in per_class:
        rng.shuffle(rows)
    test = [rows[i] for i in range(len(per_class[0])) for rows in per_class]
    return write_splits(directory, {"train": _examples(train_items, rng, TRAIN_EXAMPLES), "test": test})


def write_splits(directory: Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """Write each generated split as ``<split>.jsonl`` unless it already holds the same rows; return the paths."""
    paths = {}
    for split, rows in splits.items():
        path = directory / f"{split}.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if not path.exists() or path.read_text() != text:
            atomic_write(path, lambda f, text=text: f.write(text))  # sessions may generate it side by side
        paths[split] = path
    return paths
