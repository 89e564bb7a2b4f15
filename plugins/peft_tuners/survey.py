"""Measure every PEFT tuner on tiny:llama and write the catalog (``catalog.json``) and the docs' table.

    python -m peftbench_plugins.peft_tuners.survey            # measure, write catalog.json
    python -m peftbench_plugins.peft_tuners.survey --docs docs/methods.md   # also rewrite the table there

For each ``peft.PeftType``: its config's fields become options; a tuner peftbench cannot run faithfully
(``tuners.TUNERS[key].not_offered``) stops there. Otherwise, on tiny:llama in fp32 on CPU, with its
defaults: ``prepare`` must work and leave parameters to train; the trainable parameters are moved off their
initial values (seeded noise) so the adapter changes the output, then

* ``can_disable``: logits inside PEFT's ``disable_adapter()`` equal the base model's (within ``TOL``);
* ``mergeable``: ``merge_adapter`` reproduces the unmerged logits, ``unmerge_adapter`` restores them, and
  ``merge_and_unload`` gives the same logits (each within ``TOL``);
* its forward pass must run with the model cast to bfloat16 (a run's merge check for bf16 serving does so);

and finally peftbench's method contract suite (``peftbench.testing.MethodContract``) runs on the method so
made. A tuner that fails any of it is listed, not offered, with the failure as its reason.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .catalog import CATALOG
from .fitting import FITS, OWN_DEFAULTS, fit_help
from .tuners import TUNERS

NOISE = 0.02     # std of the seeded noise added to the trainable parameters before the parity checks
CONTRACT_TESTS = ("test_class_passes_registration_checks", "test_config_round_trips_through_json",
                  "test_only_trainable_parameters_change", "test_training_changes_the_model",
                  "test_disabled_computes_the_base_model", "test_merge_matches_unmerged_and_unmerge_restores",
                  "test_unload_serves_the_merged_weights", "test_stacked_modules_are_on_the_path_and_leave_no_trace",
                  "test_save_load_round_trips_the_logits")


def peft_tuners() -> dict[str, type]:
    """Every tuner key (``vera``) of the installed peft, with its config class (``dora`` is ``lora``'s)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(t.value).lower(): cls for t, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def survey(contract: bool = True, only: list[str] | None = None) -> dict[str, Any]:
    import peft

    found = peft_tuners()
    unknown = sorted(set(found) - set(TUNERS))
    if unknown:
        raise SystemExit(f"peft {peft.__version__} has tuners tuners.py does not know: {', '.join(unknown)}; "
                         "add each to TUNERS (learning rate and its source)")
    tuners = {key: survey_tuner(key, found[TUNERS[key].base or key], contract) for key in sorted(only or TUNERS)}
    for facts in tuners.values():
        del facts["peft_version"]  # said once, for the whole catalog
    return {"peft_version": peft.__version__, "model": "tiny:llama", "tuners": tuners}


def survey_tuner(key: str, config_class: type, contract: bool = True) -> dict[str, Any]:
    """One tuner's catalog entry: what it is, its options, and what it did on tiny:llama."""
    import peft

    from .fields import describe_config

    options, skipped = describe_config(config_class)
    facts: dict[str, Any] = {
        "peft_type": (TUNERS[key].base or key).upper(), "peft_version": peft.__version__, "config_class": f"{config_class.__module__}:{config_class.__name__}",
        "prompt_style": issubclass(config_class, peft.PromptLearningConfig),
        "offered": False, "reason": TUNERS[key].not_offered,
        "capabilities": {"mergeable": False, "can_disable": False}, "trainable_parameters": None,
        "options": _own_options(key, options), "skipped": skipped,
    }
    if facts["reason"]:
        return facts
    facts["offered"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        facts["reason"] = _measure(key, facts) or (_contract(key, facts) if contract else "")
    facts["offered"] = not facts["reason"]
    if not facts["offered"]:
        facts["capabilities"] = {"mergeable": False, "can_disable": False}
    return facts


def _own_options(key: str, options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PEFT's options with peftbench's model-fitted and own defaults (fitting.py) in place."""
    out = []
    for option in options:
        option, where = dict(option), (key, option["name"])
        if where in FITS:
            if option["default"] not in (None, FITS[where].peft_default):
                raise SystemExit(f"{key}.{option['name']}: PEFT's default is now {option['default']!r}, fitting.py "
                                 f"says {FITS[where].peft_default!r}: update fitting.FITS")
            option.update(default=None, help=fit_help(key, option["name"], option["help"]), fitted=True)
            if not option["type"].endswith(" | None"):
                option["type"] += " | None"
        if where in OWN_DEFAULTS:
            value, why = OWN_DEFAULTS[where]
            option.update(default=value, help=f"{option['help']} {why}.")
        if option["name"] in TUNERS[key].defaults:
            value = TUNERS[key].defaults[option["name"]]
            option.update(default=value, help=f"{option['help']} (peft:{key}: {value}, PEFT's default for "
                                              f"{TUNERS[key].base} is {option['default']})")
        out.append(option)
    return out


def _measure(key: str, facts: dict[str, Any]) -> str:
    """Measure ``facts``' capabilities in place; the reason the tuner cannot be offered ('' if none)."""
    import torch

    from peftbench.testing import TOL, logits, probe_batch, tiny_llama

    from .method import build_class

    method = build_class(key, facts)()
    base, tok = tiny_llama()
    ids = probe_batch(tok)
    reference = logits(base, ids)
    bound = TOL * max(1.0, float(reference.abs().max()))
    try:
        model = method.prepare(base, method.make_config({}))
    except Exception as e:
        return f"on tiny:llama with its defaults, PEFT raises {type(e).__name__}: {_short(e)}"
    model.eval()
    trainable = [p for _, p in method.trainable_parameters(model)]
    facts["trainable_parameters"] = sum(p.numel() for p in trainable)
    if not trainable:
        return "on tiny:llama with its defaults it leaves no parameter to train"
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn_like(p) * NOISE)
    try:
        adapted = logits(model, ids)
    except Exception as e:
        return f"its forward pass on tiny:llama raises {type(e).__name__}: {_short(e)}"
    if adapted.shape != reference.shape:
        return (f"its logits have shape {tuple(adapted.shape)}, the base model's {tuple(reference.shape)}: it "
                "adds positions (virtual tokens) that peftbench's evaluation does not expect")
    if float((adapted - reference).abs().max()) <= bound:
        return "its trainable parameters do not reach the output (moving them leaves the logits as they were)"
    caps = facts["capabilities"]
    caps["can_disable"] = _same(lambda: _disabled_logits(model, ids), reference, bound)
    caps["mergeable"] = _mergeable(model, ids, adapted, bound)
    return _bf16_failure(model, ids)


def _bf16_failure(model, ids) -> str:
    """Why the tuner cannot run cast to bfloat16 ('' if it can): a run checks merging for bf16 serving."""
    import torch

    from peftbench.latency.casting import cast_floating
    from peftbench.testing import logits

    try:
        logits(cast_floating(copy.deepcopy(model), torch.bfloat16), ids)
    except Exception as e:
        return (f"cast to bfloat16 (a run's merge check for bf16 serving does so) its forward pass raises "
                f"{type(e).__name__}: {_short(e)}")
    return ""


def _disabled_logits(model, ids):
    from peftbench.testing import logits

    with model.disable_adapter():
        return logits(model, ids)


def _mergeable(model, ids, adapted, bound: float) -> bool:
    from peftbench.testing import logits

    def merged():
        model.merge_adapter()
        return logits(model, ids)

    def unmerged():
        model.unmerge_adapter()
        return logits(model, ids)

    def unloaded():
        return logits(copy.deepcopy(model).merge_and_unload(), ids)

    return all(_same(f, adapted, bound) for f in (merged, unmerged, unloaded))


def _same(compute, expected, bound: float) -> bool:
    try:
        got = compute()
    except Exception:  # NotImplementedError, ValueError: PEFT cannot do it for this tuner
        return False
    return got.shape == expected.shape and float((got - expected).abs().max()) <= bound


def _contract(key: str, facts: dict[str, Any]) -> str:
    """Run the method contract suite on the method these facts make; the first failure, or ''."""
    from peftbench.testing import MethodContract

    from .method import build_class

    method = build_class(key, facts)()
    suite = MethodContract()
    for name in CONTRACT_TESTS:
        test = getattr(suite, name)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                given = {"method": method, "config": method.make_config({}), "tmp_path": Path(tmp)}
                test(**{arg: given[arg] for arg in inspect.signature(test).parameters})
        except Exception as e:
            return f"fails the method contract ({name}): {_short(e)}"
    return ""


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def markdown_table(catalog: dict[str, Any]) -> str:
    """The docs' table of every tuner: offered or why not, and its capabilities as measured."""
    rows = ["| `--methods` | PEFT type | offered | mergeable | `disabled()` | virtual tokens | trainable "
            "params on tiny:llama | default lr |",
            "|---|---|---|---|---|---|---|---|"]
    for key, t in sorted(catalog["tuners"].items()):
        caps = t["capabilities"]
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        offered = "yes" if t["offered"] else f"no: {t['reason']}"
        params = f"{t['trainable_parameters']:,}" if t["trainable_parameters"] is not None else "–"
        rows.append(f"| `peft:{key}` | {t['peft_type']} | {offered.replace('|', '/')} | {yes(caps['mergeable'])} | "
                    f"{yes(caps['can_disable'])} | {yes(t['prompt_style'])} | {params} | {TUNERS[key].lr:g} |")
    return "\n".join(rows) + "\n"


START, END = "<!-- peft-tuners table: start -->", "<!-- peft-tuners table: end -->"


def with_table(text: str, table: str) -> str:
    """``text`` (docs/methods.md) with the part between the table markers replaced by ``table``."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"the docs file has no {START} marker")
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=Path, help="a markdown file whose tuner table to rewrite")
    parser.add_argument("--only", nargs="*", help="survey only these tuners (printed, catalog untouched)")
    args = parser.parse_args(argv)
    catalog = survey(only=args.only)
    if args.only:
        print(json.dumps(catalog, indent=1))
        return
    CATALOG.write_text(json.dumps(catalog, indent=1) + "\n", encoding="utf-8")
    offered = [k for k, t in catalog["tuners"].items() if t["offered"]]
    print(f"{len(offered)} of {len(catalog['tuners'])} tuners offered: {', '.join(offered)}")
    if args.docs:
        args.docs.write_text(with_table(args.docs.read_text(encoding="utf-8"), markdown_table(catalog)),
                             encoding="utf-8")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
