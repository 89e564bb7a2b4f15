import sys
import types

import pytest

from peftbench import Capabilities, Method, hookimpl
from peftbench.api.plugins import BUILTIN_PLUGINS, hook_names, make_plugin_manager
from peftbench.api.registry import collect_methods
from peftbench.cli.catalog import describe_plugins
from peftbench.errors import PluginError, UsageError


def _module(name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def test_builtins_register_the_four_methods():
    reg = collect_methods(make_plugin_manager(load_entrypoints=False))
    assert {"lora", "qlora", "adapter", "full"} <= set(reg.names())
    assert reg.canonical("fft") == "full" and reg.canonical("LoRA") == "lora"


def test_unknown_method_suggests():
    reg = collect_methods(make_plugin_manager(load_entrypoints=False))
    with pytest.raises(UsageError) as e:
        reg.canonical("lorra", "--methods")
    assert "Did you mean 'lora'" in str(e.value) and "--methods" in str(e.value)


def test_a_plugin_that_raises_on_import_is_reported_not_fatal():
    host = make_plugin_manager(extra_plugins=["peftbench_test_no_such_module_xyz"], load_entrypoints=False)
    assert [f.name for f in host.failures] == ["peftbench_test_no_such_module_xyz"]
    assert "ModuleNotFoundError" in host.failures[0].error
    assert "lora" in collect_methods(host).names()  # the rest still works
    rows = {r["name"]: r for r in describe_plugins(host)}
    assert rows["peftbench_test_no_such_module_xyz"]["status"] == "failed"


def test_strict_mode_reraises():
    with pytest.raises(PluginError, match="failed to load"):
        make_plugin_manager(extra_plugins=["peftbench_test_no_such_module_xyz"], strict=True, load_entrypoints=False)


def test_misspelled_hook_fails_loudly():
    @hookimpl
    def register_method(register):  # missing 's'
        pass

    _module("peftbench_test_misspelled", register_method=register_method)
    with pytest.raises(PluginError, match="does not exist"):
        make_plugin_manager(extra_plugins=["peftbench_test_misspelled"], load_entrypoints=False, strict=True)
    host = make_plugin_manager(extra_plugins=["peftbench_test_misspelled"], load_entrypoints=False)  # issue 20:
    (failure,) = host.failures  # not strict, the plugin is reported and disabled, and the rest works
    assert "does not exist" in failure.error and "register_methods" in failure.error


def test_wrong_argument_name_fails_loudly():
    @hookimpl
    def register_methods(registrar):
        pass

    _module("peftbench_test_wrongarg", register_methods=register_methods)
    host = make_plugin_manager(extra_plugins=["peftbench_test_wrongarg"], load_entrypoints=False)
    (failure,) = host.failures
    assert failure.name == "peftbench_test_wrongarg" and "registrar" in failure.error
    with pytest.raises(PluginError, match="registrar"):
        make_plugin_manager(extra_plugins=["peftbench_test_wrongarg"], load_entrypoints=False, strict=True)


def test_name_collision_names_both_plugins():
    @hookimpl
    def register_methods(register):
        register("lora", "x:Y")

    _module("peftbench_test_collide", register_methods=register_methods)
    host = make_plugin_manager(extra_plugins=["peftbench_test_collide"], load_entrypoints=False)
    with pytest.raises(PluginError) as e:
        collect_methods(host, strict=True)  # issue 20: not strict by default (the host's --strict-plugins)
    assert "peftbench_test_collide" in str(e.value) and "peftbench_plugins.lora" in str(e.value)
    assert collect_methods(host, strict=False).errors  # non-strict: recorded, rest usable


def test_disabled_plugin_is_not_loaded():
    host = make_plugin_manager(disable=["peftbench_plugins.qlora"], load_entrypoints=False)
    assert "qlora" not in collect_methods(host).names()
    assert any(r["status"] == "disabled" for r in describe_plugins(host))


def test_bad_method_classes_are_rejected():
    from dataclasses import dataclass

    from peftbench.api.method import validate_method_class

    class NoConfig(Method):
        name = "x"
        Config = dict

    with pytest.raises(PluginError, match="must be a dataclass"):
        validate_method_class(NoConfig, "p")

    @dataclass
    class C:
        a: int = 1  # no help text

    class NoHelp(Method):
        name = "x"
        Config = C

    with pytest.raises(PluginError, match="without help text"):
        validate_method_class(NoHelp, "p")

    from dataclasses import field

    @dataclass
    class D:
        a: int = field(default=1, metadata={"help": "a"})

    class Missing(Method):
        name = "x"
        Config = D

    with pytest.raises(PluginError, match="prepare"):
        validate_method_class(Missing, "p")

    class FalseMerge(Method):
        name = "x"
        Config = D
        capabilities = Capabilities(mergeable=True, can_disable=False)

        def prepare(self, m, c): return m
        def save(self, m, d, c): return []
        def load(self, d, b, c): return b

    with pytest.raises(PluginError, match="mergeable"):
        validate_method_class(FalseMerge, "p")


def test_hook_names_are_the_documented_set():
    assert set(hook_names()) == {
        "register_methods", "register_tasks", "register_commands", "configure", "session_start", "session_finish",
        "prepare_model", "train_model", "evaluate_model", "merge_adapter", "unmerge_adapter", "save_artifact",
        "load_artifact", "measure_latency", "run_start", "train_step_end", "run_finish"}
    assert BUILTIN_PLUGINS[0] == "peftbench.session.defaults"


PLUGIN_NEEDING_WHAT_IS_MISSING = '''
import dataclasses
from peftbench import Capabilities, Method, hookimpl

@dataclasses.dataclass
class Cfg:
    pass

class GpuOnly(Method):
    name = "gpuonly"
    Config = Cfg
    capabilities = Capabilities(needs_cuda=True, can_disable=False)
    def prepare(self, model, config): raise AssertionError("must not be called on CPU")
    def save(self, model, directory, config): return []
    def load(self, directory, base_model, config): return base_model

class NeedsPkg(GpuOnly):
    name = "needspkg"
    capabilities = Capabilities(can_disable=False)
    requires = ("no_such_package_xyz",)

@hookimpl
def register_methods(register):
    register("gpuonly", GpuOnly)
    register("needspkg", NeedsPkg)
'''


def test_a_method_that_cannot_run_here_is_skipped_with_its_reason(tmp_path, monkeypatch, capsys):
    import json

    from peftbench.testing import run_cli

    (tmp_path / "needy_plugin.py").write_text(PLUGIN_NEEDING_WHAT_IS_MISSING)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "s"
    code, stdout, err = run_cli(["--plugin", "needy_plugin", "run", "--methods", "lora,gpuonly,needspkg", "--model",
                                 "tiny:llama", "--device", "cpu", "--output", str(out), "--set", "steps=2", "--set",
                                 "limit=8", "--set", "latency_rounds=0", "--set", "merge_precisions=false"], capsys)
    assert code == 0, err  # skipped cells are not failures
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert runs["lora--quickstart--seed0"]["status"] == "ok"
    assert runs["gpuonly--quickstart--seed0"]["status"] == "skipped"
    assert runs["gpuonly--quickstart--seed0"]["reason"] == "needs a CUDA device"
    assert runs["needspkg--quickstart--seed0"]["status"] == "skipped"
    assert "no_such_package_xyz" in runs["needspkg--quickstart--seed0"]["reason"]
    assert "skipped: needs a CUDA device" in stdout  # the leaderboard says why


def test_qlora_on_cpu_reading_the_state_dict_leaves_the_model_unchanged():
    """bitsandbytes >= 0.50 repacks 4-bit weights for an AVX512-BF16 CPU kernel at the first no-grad forward and
    unpacks them lossily in state_dict(); the QLoRA plugin keeps one layout, so saving a model never changes it."""
    import torch

    from peftbench.models.sources import load_model

    method = collect_methods(make_plugin_manager(load_entrypoints=False)).get("qlora")
    if not method.availability("cpu"):
        pytest.skip("qlora unavailable on CPU")
    torch.manual_seed(0)
    model = method.prepare(load_model("tiny:llama")[0], method.make_config({})).eval()
    ids = torch.randint(5, 200, (2, 9))
    with torch.no_grad():
        first = model(input_ids=ids).logits
        state = {k: v.clone() for k, v in model.state_dict().items()}
        again = model(input_ids=ids).logits
        assert torch.equal(first, again)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_plugin_options_decide_the_commands_listed_and_run(capsys):
    """--plugin is a real option of the root group: the host it builds is there before a sub-command is looked
    up, so --help lists the plugin's command (in either order) and it runs; without the option it does not exist."""
    import click

    from peftbench.testing import run_cli

    @hookimpl
    def register_commands(cli):
        @cli.command("hello-from-plugin")
        def hello():
            """Greet from a --plugin module."""
            click.echo("hello")

    name = _module("peftbench_test_commands", register_commands=register_commands).__name__
    for argv in (["--plugin", name, "--help"], ["--help", "--plugin", name]):
        code, out, _ = run_cli(argv, capsys)
        assert code == 0 and "hello-from-plugin  Greet from a --plugin module." in out
    code, out, err = run_cli(["--plugin", name, "hello-from-plugin"], capsys)
    assert code == 0 and out == "hello\n", err
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "hello-from-plugin" not in out
    code, _, err = run_cli(["hello-from-plugin"], capsys)
    assert code == 2 and "No such command 'hello-from-plugin'" in err


def test_registration_hooks_go_through_pluggy_in_load_order(tmp_path):
    """Registrations are credited to their plugin and taken in load order (built-ins first), though pluggy
    calls the last-loaded plugin first; a wrapper of the hook sees the call."""
    from peftbench.api.plugins import registrations, task_dirs

    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_methods(self, register):
            seen.append("before")
            yield
            seen.append("after")

    class Late:
        @hookimpl
        def register_methods(self, register):
            register("late-one", "x:Y")
            register("late-two", "x:Z", aliases=("l2",))

        @hookimpl
        def register_tasks(self, register):
            register(tmp_path)

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(Late(), name="late")
    host.pm.register(Wrapper(), name="wrapper")
    made = [(r.plugin, r.args) for r in registrations(host, "register_methods")]
    assert seen == ["before", "after"]
    builtins = [f"peftbench_plugins.{m}" for m in ("lora", "qlora", "adapter", "full", "peft_tuners")]
    assert list(dict.fromkeys(p for p, _ in made)) == [*builtins, "late"]  # built-ins first, in their order
    assert made[-2:] == [("late", ("late-one", "x:Y")), ("late", ("late-two", "x:Z"))]
    assert collect_methods(host).entries["late-two"].plugin == "late"
    assert task_dirs(host)[-1] == tmp_path  # a later folder's task of the same name wins
