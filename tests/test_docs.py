import inspect
from pathlib import Path

from peftbench.api.plugins import hook_names

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "docs" / "plugins" / "hooks.md"


def test_every_hook_has_a_docs_section_with_its_exact_signature():
    from peftbench.api import hookspecs

    text = HOOKS.read_text()
    for name in hook_names():
        sig = f"### `{name}{inspect.signature(getattr(hookspecs, name))}`"
        assert sig in text, f"docs/plugins/hooks.md lacks the section {sig}"


def test_every_hook_has_an_example():
    from peftbench.api.plugin_docs import EXAMPLES

    assert set(EXAMPLES) == set(hook_names())


def test_the_hook_reference_is_current():
    from peftbench.api.plugin_docs import hooks_markdown

    assert HOOKS.read_text() == hooks_markdown(), (
        "docs/plugins/hooks.md is stale: python -m peftbench.api.plugin_docs > docs/plugins/hooks.md")


def test_docs_links_resolve():
    import re

    for doc in [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md"),
                *(ROOT / "results").rglob("README.md"), ROOT / "plugins/peftbench-ia3/README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


def test_the_results_schema_doc_is_current():
    from peftbench.results.schema_docs import schema_markdown

    assert (ROOT / "docs/results-schema.md").read_text() == schema_markdown(), (
        "docs/results-schema.md is stale: python -m peftbench.results.schema_docs > docs/results-schema.md")


def test_training_options_doc_is_current_and_lists_the_loop_options(capsys):
    from peftbench.session.options import options_markdown
    from peftbench.testing import run_cli

    text = (ROOT / "docs" / "training-options.md").read_text()
    assert text == options_markdown(), \
        "docs/training-options.md is stale: peftbench options --markdown > docs/training-options.md"
    code, out, _ = run_cli(["options", "--json"], capsys)
    rows = {r["name"]: r for r in __import__("json").loads(out)}
    assert code == 0 and rows["padding_free"]["default"] is True and rows["compile"]["default"] == "auto"
    assert rows["loop"]["help"] and rows["optimizer"]["default"] == "adamw"
