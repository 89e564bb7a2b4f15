from pathlib import Path

from peftbench.plugins import hook_names

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def test_every_hook_has_a_docs_section_with_its_exact_signature():
    import inspect

    from peftbench import hookspecs

    text = DOCS.read_text()
    for name in hook_names():
        sig = f"### `{name}{inspect.signature(getattr(hookspecs, name))}`"
        assert sig in text, f"docs/plugins.md lacks the section {sig}"
