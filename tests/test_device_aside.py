"""benchmarks/device/aside.sh: moves what the GPU commands do not read out of the working tree (the device tool
carries the tree and the carried paths, 64 MiB in all) and puts it back unchanged."""

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks/device/aside.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash, git")

FILES = {"docs/a.md": "a", "tests/t.py": "t", "results/.hidden": "h", "results/latency-gpu/l.json": "l",
         "results/reference/boolq/session.json": "b", "results/reference/sst2/session.json": "s",
         "results/reference/sst2/runs/x.json": "x", "peftbench/c.py": "c"}


def _aside(root, aside, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PEFTBENCH_ROOT": str(root), "ASIDE": str(aside)})


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def test_aside_keeps_only_the_named_results_and_restores_everything(tmp_path):
    root, aside = tmp_path / "repo", tmp_path / "aside"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    out = _aside(root, aside, "out", "results/reference/sst2/")
    assert out.returncode == 0, out.stderr
    assert "the tree is now" in out.stdout
    assert set(_tree(root)) == {"peftbench/c.py", "results/reference/sst2/session.json",
                                "results/reference/sst2/runs/x.json"}
    again = _aside(root, aside, "out")
    assert again.returncode == 2 and "run 'back' first" in again.stderr
    back = _aside(root, aside, "back")
    assert back.returncode == 0, back.stderr
    assert _tree(root) == FILES and not aside.exists()
    missing = _aside(root, aside, "out", "results/nothere")
    assert missing.returncode == 2 and "nothing to keep at results/nothere" in missing.stderr
    assert _tree(root) == FILES and not aside.exists()


def test_back_never_overwrites_a_file_made_since(tmp_path):
    root, aside = tmp_path / "repo", tmp_path / "aside"
    (root / "docs").mkdir(parents=True)
    (root / "docs/a.md").write_text("old")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert _aside(root, aside, "out").returncode == 0
    (root / "docs").mkdir()
    (root / "docs/a.md").write_text("new")
    back = _aside(root, aside, "back")
    assert back.returncode == 1 and "docs/a.md is in the tree again" in back.stderr
    assert (root / "docs/a.md").read_text() == "new" and (aside / "docs/a.md").read_text() == "old"
