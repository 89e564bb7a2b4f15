"""Issue 20, plugins that cannot take the tool down: broken and colliding plugins, bad --plugin names, and
the contract suite's messages, each injected as a user would meet it and checked by its outcome."""

import ast
import dataclasses
import importlib
import importlib.metadata
import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

from peftbench.api.plugins import make_plugin_manager
from peftbench.api.registry import collect_methods
from peftbench.errors import PluginError
from peftbench.testing import FakeEvaluator, MethodContract, run_cli

ROOT = Path(__file__).resolve().parent.parent
FAST = ["steps=2", "batch_size=4", "limit=8", "latency_rounds=0", "merge_precisions=false"]

NORM_ONLY = '''
import dataclasses
from pathlib import Path

import torch

from peftbench import Method, hookimpl


@dataclasses.dataclass
class NormConfig:
    pass


class NormOnly(Method):
    """Trains the final norm's weights; sets no ``capabilities`` and has no disabled()."""

    name = "normonly"
    Config = NormConfig

    def prepare(self, model, config):
        for n, p in model.named_parameters():
            p.requires_grad_(n == "model.norm.weight")
        return model

    def save(self, model, directory, config):
        path = Path(directory) / "norm.pt"
        torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, path)
        return [path]

    def load(self, directory, base_model, config):
        base_model.load_state_dict(torch.load(Path(directory) / "norm.pt"), strict=False)
        return base_model
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """``plugin_module(name, source)`` writes a throwaway module that ``--plugin name`` can import."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        return name

    return write


@pytest.fixture(autouse=True)
def fresh_cli(monkeypatch):
    """The root group keeps one plugin host per set of plugin options: each test builds its own."""
    from peftbench.cli.main import cli

    monkeypatch.setattr(cli, "_loaded", {})
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def installed(monkeypatch):
    """``installed(entry_point, module, distribution)``: make ``module`` an installed plugin, found through
    an entry point of group ``peftbench`` beside the real ones."""
    real = importlib.metadata.entry_points
    extra = []

    def entry_points(**kw):
        found = list(real(**kw))
        return [*found, *extra] if kw.get("group") == "peftbench" else found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    def install(name: str, module: str, dist: str) -> None:
        extra.append(types.SimpleNamespace(name=name, dist=types.SimpleNamespace(name=dist, version="0.1.0"),
                                           load=lambda: importlib.import_module(module)))

    return install


def _rows(capsys, *argv):
    code, out, err = run_cli([*argv, "plugins", "--json"], capsys)
    assert code == 0, err
    return {r["name"]: r for r in json.loads(out)}


# ---- 1. a misspelled hook name ---------------------------------------------------------------------------

MISSPELLED = '''
import click
from peftbench import hookimpl

@hookimpl
def register_method(register):      # the hook is register_methods
    register("bitfit", "x:Y")

@hookimpl
def register_commands(cli):
    @cli.command("bitfit-info")
    def info():
        """Say hello."""
        click.echo("hello")
'''


def test_a_misspelled_hook_of_an_installed_package_disables_it_and_every_command_works(
        plugin_module, installed, capsys):
    installed("bitfit", plugin_module("peftbench_bitfit_typo", MISSPELLED), "peftbench-bitfit")
    code, out, err = run_cli(["--help"], capsys)
    assert code == 0 and "Usage: peftbench" in out, err
    assert "bitfit-info" not in out  # disabled: none of its hooks run, its command included
    row = _rows(capsys)["bitfit"]
    assert row["status"] == "failed" and row["distribution"] == "peftbench-bitfit"
    for part in ("'register_method'", "did you mean 'register_methods'?", "package peftbench-bitfit",
                 "It is disabled", "Fix the package peftbench-bitfit", "--disable-plugin bitfit"):
        assert part in row["error"], (part, row["error"])
    code, out, err = run_cli(["plugins"], capsys)
    assert code == 0 and "register_method" in out and "--disable-plugin bitfit" in out, err
    code, out, err = run_cli(["methods", "--json"], capsys)
    assert code == 0 and "lora" in {r["name"] for r in json.loads(out)}, err
    assert _rows(capsys, "--disable-plugin", "bitfit")["bitfit"]["status"] == "disabled"


def test_a_run_beside_a_broken_plugin_says_so_and_runs(plugin_module, capsys, tmp_path):
    """peftbench run does not stop for a disabled plugin, but warns on stderr which one and why."""
    name = plugin_module("typo_run_mod", MISSPELLED)
    code, _, err = run_cli(["--plugin", name, "run", "--methods", "lora", "--model", "tiny:llama", "--device", "cpu", "--no-base",
                            "--output", str(tmp_path / "o"), "--set", "steps=1", "--set", "batch_size=2",
                            "--set", "limit=4", "--set", "latency_rounds=0", "--set", "merge_precisions=false"],
                           capsys)
    assert code == 0, err
    assert f"warning: plugin '{name}'" in err and f"--disable-plugin {name}" in err


def test_a_misspelled_hook_is_fatal_with_strict_plugins(plugin_module, capsys):
    name = plugin_module("typo_strict_mod", MISSPELLED)
    code, _, err = run_cli(["--strict-plugins", "--plugin", name, "methods"], capsys)
    assert code in (1, 2) and "Traceback" not in err
    assert "'register_method'" in err and "did you mean 'register_methods'?" in err
    assert f"--disable-plugin {name}" in err and "It is disabled" not in err
    host = make_plugin_manager(extra_plugins=[name], load_entrypoints=False)
    assert name not in dict(host.pm.list_name_plugin())  # not strict: unregistered
    assert [f.kind for f in host.failures] == ["hook"]


# ---- 2. a method name another plugin registered ------------------------------------------------------------

COLLIDING = NORM_ONLY + '''

class Lora(NormOnly):
    name = "lora"


@hookimpl
def register_methods(register):
    register("lora", Lora)
    register("normonly", NormOnly)
'''


def test_a_taken_method_name_is_reported_as_a_conflict_and_ignored(plugin_module, capsys):
    name = plugin_module("collide_mod", COLLIDING)
    row = _rows(capsys, "--plugin", name)[name]
    assert row["status"] == "conflict" and row["methods"] == ["normonly"]
    for part in ("'lora'", "collide_mod", "peftbench_plugins.lora", "ignored", f"--disable-plugin {name}"):
        assert part in row["error"], (part, row["error"])
    code, out, err = run_cli(["--plugin", name, "methods", "--json"], capsys)
    methods = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and methods["lora"]["plugin"] == "peftbench_plugins.lora", err  # the first keeps it
    code, _, err = run_cli(["--strict-plugins", "--plugin", name, "plugins"], capsys)
    assert code in (1, 2) and "already taken" in err and "Traceback" not in err


def test_a_taken_method_name_does_not_stop_runs_that_do_not_use_it(plugin_module, tmp_path):
    from peftbench.session.runner import Session, SessionConfig

    host = make_plugin_manager(extra_plugins=[plugin_module("collide_run", COLLIDING)], load_entrypoints=False)
    host.pm.register(FakeEvaluator(0.5), name="fake-eval")
    session = Session(SessionConfig(methods=["full"], model="tiny:llama", device="cpu", output=tmp_path / "s",
                                    sets=FAST, cache_dir=tmp_path / "cache", base_row=False), host=host)
    results = session.run()
    assert [r["status"] for r in results] == ["ok"]
    assert session.plan().registry.entries["lora"].plugin == "peftbench_plugins.lora"


def test_a_registration_hook_that_raises_is_reported_not_fatal(plugin_module, capsys):
    name = plugin_module("raising_reg", '''
        from peftbench import hookimpl

        @hookimpl
        def register_methods(register):
            raise RuntimeError("boom")
    ''')
    row = _rows(capsys, "--plugin", name)[name]
    assert row["status"] == "failed" and "RuntimeError: boom" in row["error"]
    assert "lora" in collect_methods(make_plugin_manager(extra_plugins=[name], load_entrypoints=False)).names()
    with pytest.raises(PluginError, match="boom"):
        collect_methods(make_plugin_manager(extra_plugins=[name], load_entrypoints=False, strict=True))


# ---- 3. --plugin naming a module that cannot be imported -----------------------------------------------------

@pytest.mark.parametrize("command", [["plugins"], ["methods"], ["--help"]])
def test_a_plugin_option_naming_no_module_exits_2(command, capsys):
    code, out, err = run_cli(["--plugin", "no.such.module", *command], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "--plugin no.such.module" in err and "ModuleNotFoundError" in err
    assert "dotted name of an importable Python module" in err and "PYTHONPATH" in err


def test_a_plugin_option_naming_a_module_that_raises_on_import_exits_2(plugin_module, capsys):
    name = plugin_module("raises_on_import", "import no_such_dependency_xyz\n")
    code, _, err = run_cli(["--plugin", name, "methods"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"--plugin {name}: importing the module failed" in err and "no_such_dependency_xyz" in err
    assert "raises_on_import.py" in err


# ---- 4. a method of a plugin that failed to import -----------------------------------------------------------

def test_a_method_of_a_plugin_that_failed_to_import_names_the_import_error(plugin_module, installed, tmp_path, capsys):
    installed("bitfit", plugin_module("peftbench_bitfit_broken", "raise ImportError('needs torch>=9')\n"),
              "peftbench-bitfit")
    code, out, err = run_cli(["run", "--methods", "bitfit", "--model", "tiny:llama", "--device", "cpu",
                              "--output", str(tmp_path / "s")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "method 'bitfit' comes from plugin 'bitfit' (package peftbench-bitfit), which failed to load: " \
           "ImportError: needs torch>=9" in err
    assert "--disable-plugin bitfit" in err and not (tmp_path / "s" / "runs").exists()


# ---- 5. a method class that sets no capabilities -------------------------------------------------------------

def test_a_method_without_capabilities_claims_nothing_and_runs(plugin_module, tmp_path):
    from peftbench import Capabilities
    from peftbench.api.method import validate_method_class
    from peftbench.session.runner import Session, SessionConfig

    mod = importlib.import_module(plugin_module("norm_only", NORM_ONLY + '''
@hookimpl
def register_methods(register):
    register("normonly", NormOnly)
'''))
    host = make_plugin_manager(extra_plugins=["norm_only"], load_entrypoints=False)
    host.pm.register(FakeEvaluator(0.5), name="fake-eval")
    results = Session(SessionConfig(methods=["normonly"], model="tiny:llama", device="cpu", output=tmp_path / "s",
                                    sets=FAST, cache_dir=tmp_path / "cache", base_row=False), host=host).run()
    assert [r["status"] for r in results] == ["ok"], results[0].get("error")
    assert "capabilities" not in vars(mod.NormOnly)
    assert mod.NormOnly.capabilities == Capabilities() and not any(dataclasses.asdict(Capabilities()).values())
    validate_method_class(mod.NormOnly, "norm_only")


def test_a_capability_claimed_without_its_member_names_the_class(plugin_module):
    from peftbench import Capabilities
    from peftbench.api.method import validate_method_class

    mod = importlib.import_module(plugin_module("claims_disable", NORM_ONLY))

    class Claims(mod.NormOnly):
        capabilities = Capabilities(can_disable=True)

    with pytest.raises(PluginError) as e:
        validate_method_class(Claims, "claims_disable")
    assert "Claims" in str(e.value) and "can_disable" in str(e.value) and "disabled()" in str(e.value)


# ---- 6. contract-suite messages ---------------------------------------------------------------------------

BROKEN = NORM_ONLY + '''

class Forgets(NormOnly):
    """Loads nothing back, and merges though it does not claim to."""

    name = "forgets"

    def load(self, directory, base_model, config):
        return base_model

    def merge(self, model):
        return model
'''


def test_contract_failures_say_what_was_expected_what_was_seen_and_a_hint(plugin_module, tmp_path):
    method = importlib.import_module(plugin_module("forgets_mod", BROKEN)).Forgets()
    config = method.make_config({})
    suite = type("TestForgets", (MethodContract,), {"method_name": "forgets"})()
    with pytest.raises(AssertionError) as e:
        suite.test_save_load_round_trips_the_logits(method, config, tmp_path)
    text = str(e.value)
    assert text.startswith("the method contract expects load(save(model))") and "seen: " in text and "Hint: " in text
    with pytest.raises(AssertionError) as e:
        suite.test_merge_matches_unmerged_and_unmerge_restores(method, config)
    assert "merge() to raise peftbench.NotSupported, since capabilities say mergeable=False" in str(e.value)
    assert "seen: merge() returned normally" in str(e.value) and "Hint: " in str(e.value)


def test_every_check_of_the_contract_suite_carries_a_message():
    tree = ast.parse((ROOT / "peftbench" / "testing.py").read_text())
    bare = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert) and n.msg is None]
    assert not bare, f"asserts without a message in peftbench/testing.py, lines {bare}"
    (suite,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MethodContract"]
    raises = [n.lineno for n in ast.walk(suite) if isinstance(n, ast.Attribute) and n.attr == "raises"]
    assert not raises, f"pytest.raises (a bare 'DID NOT RAISE') in MethodContract, lines {raises}"


# ---- 7. the plugin guide -------------------------------------------------------------------------------------

def test_the_plugin_guide_covers_imports_capabilities_the_run_object_and_tracebacks():
    from peftbench.api.records import RunContext

    guide = " ".join(((ROOT / "docs/plugins/README.md").read_text() + (ROOT / "docs/plugins/tutorial.md").read_text())
                     .split())
    assert "from peftbench import" in guide and "from peftbench.testing import MethodContract" in guide
    assert "`Capabilities()` claims nothing" in guide and "Every flag defaults to False" in guide
    assert "`can_disable` defaults to False" in guide
    missing = [f.name for f in dataclasses.fields(RunContext) if f"`{f.name}`" not in guide]
    assert not missing and "`record(key, value)`" in guide, missing
    assert "`error.traceback`" in guide and "runs/" in guide
