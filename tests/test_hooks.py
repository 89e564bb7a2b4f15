"""One test per hook (``test_hook_<name>``), and a meta-test that no hook lacks one."""

import shutil
import sys

import pytest

from peftbench import hookimpl
from peftbench.api.plugins import hook_names, make_plugin_manager
from peftbench.session.plan import all_tasks
from peftbench.session.runner import Session, SessionConfig
from peftbench.testing import FakeEvaluator

FAST = ["steps=2", "batch_size=4", "limit=8", "latency_rounds=1", "latency_new_tokens=2", "latency_prompt_lengths=4",
        "merge_precisions=false"]


class Spy:
    """Observes every hook; returns None from the phase hooks so the defaults still run."""

    def __init__(self):
        self.calls = []

    def _log(self, name, **kw):
        self.calls.append((name, kw))

    @hookimpl
    def configure(self, config): self._log("configure", config=config)
    @hookimpl
    def session_start(self, session): self._log("session_start", session=session)
    @hookimpl
    def session_finish(self, session, results): self._log("session_finish", results=results)
    @hookimpl
    def prepare_model(self, run, base_model): self._log("prepare_model", run=run)
    @hookimpl
    def train_model(self, run, prepared, train_data): self._log("train_model", n=len(train_data))
    @hookimpl
    def merge_adapter(self, run, prepared): self._log("merge_adapter", run=run)
    @hookimpl
    def unmerge_adapter(self, run, merged): self._log("unmerge_adapter", run=run)
    @hookimpl
    def save_artifact(self, run, prepared, directory): self._log("save_artifact", directory=directory)
    @hookimpl
    def load_artifact(self, run, directory, base_model): self._log("load_artifact", directory=directory)
    @hookimpl
    def measure_latency(self, run, model, modes): self._log("measure_latency", modes=sorted(modes))
    @hookimpl
    def run_start(self, run): self._log("run_start", key=run.spec.key)
    @hookimpl
    def train_step_end(self, run, step, metrics): self._log("train_step_end", step=step, metrics=metrics)
    @hookimpl
    def run_finish(self, run, result):
        run.record("spy", "seen")
        self._log("run_finish", key=run.spec.key, status=result["status"])

    def names(self, name):
        return [kw for n, kw in self.calls if n == name]


@pytest.fixture(scope="module")
def session_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hooks")
    host = make_plugin_manager(load_entrypoints=False)
    spy, fake = Spy(), FakeEvaluator(0.75)
    host.pm.register(spy, name="spy")
    host.pm.register(fake, name="fake-eval")
    session = Session(SessionConfig(methods=["lora"], model="tiny:llama", device="cpu", output=out / "s",
                                    sets=FAST, cache_dir=out / "cache"), host=host)
    results = session.run()
    yield spy, fake, results, session
    shutil.rmtree(out, ignore_errors=True)


def test_every_hook_has_a_test_here():
    missing = [h for h in hook_names() if not hasattr(sys.modules[__name__], f"test_hook_{h}")]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"


def test_hook_register_methods():
    from peftbench.api.registry import collect_methods

    class Toy:
        @hookimpl
        def register_methods(self, register):
            register("toy", "peftbench_plugins.full.method:FullMethod")

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(Toy(), name="toy")
    from peftbench.errors import PluginError

    with pytest.raises(PluginError, match="must match"):  # registered name must equal the class's name
        collect_methods(host).get("toy")


def test_hook_register_tasks(tmp_path):
    from peftbench.tasks.task import builtin_tasks_dir

    folder = tmp_path / "mytasks" / "copy"
    shutil.copytree(builtin_tasks_dir() / "quickstart", folder)
    text = (folder / "task.yaml").read_text().replace("name: quickstart", "name: mycopy")
    (folder / "task.yaml").write_text(text)

    class Tasks:
        @hookimpl
        def register_tasks(self, register):
            register(tmp_path / "mytasks")

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(Tasks(), name="tasks")
    found = all_tasks(host, [])
    assert {"quickstart", "mycopy"} <= set(found)


def test_hook_register_commands():
    import click
    from click.testing import CliRunner

    from peftbench.cli.main import cli

    class Cmd:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="hello-test")
            def hello():
                click.echo("hello from a plugin")

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(Cmd(), name="cmd")
    host.hook.register_commands(cli=cli)
    res = CliRunner().invoke(cli, ["hello-test"])
    assert res.exit_code == 0 and "hello from a plugin" in res.output


def test_hook_configure(session_run):
    spy, *_ = session_run
    (call,) = spy.names("configure")
    assert call["config"].model == "tiny:llama"


def test_hook_session_start(session_run):
    spy, *_ = session_run
    assert len(spy.names("session_start")) == 1


def test_hook_session_finish(session_run):
    spy, _, results, _ = session_run
    (call,) = spy.names("session_finish")
    assert [r["key"] for r in call["results"]] == [r["key"] for r in results] == ["base--quickstart--seed0",
                                                                                  "lora--quickstart--seed0"]


def test_hook_prepare_model(session_run):
    spy, *_ = session_run
    assert [c["run"].spec.method for c in spy.names("prepare_model")] == ["lora"]


def test_hook_train_model(session_run):
    spy, _, results, _ = session_run
    assert spy.names("train_model") == [{"n": 1490}]  # quickstart's 2,000 rows less its validation split
    assert results[1]["train"]["steps"] == 2


def test_hook_evaluate_model(session_run):
    _, fake, results, _ = session_run
    assert fake.calls == 3  # the base row, lora and lora merged, all through the plugin's override
    assert results[1]["eval"]["metrics"] == {"acc": 0.75}


def test_hook_merge_adapter(session_run):
    spy, _, results, _ = session_run
    assert len(spy.names("merge_adapter")) == 2  # the merge check in place, and the merged model timed
    assert results[1]["merge"]["ok"] is True and results[1]["merge"]["greedy_agreement"] == 1.0


def test_hook_unmerge_adapter(session_run):
    spy, _, results, _ = session_run
    assert len(spy.names("unmerge_adapter")) == 1 and results[1]["merge"]["unmerge_ok"] is True


def test_hook_save_artifact(session_run):
    spy, _, results, _ = session_run
    assert len(spy.names("save_artifact")) == 1
    assert "adapter_model.safetensors" in results[1]["artifact"]["files"]


def test_hook_load_artifact(session_run):
    spy, _, results, _ = session_run
    # the reload check, and the merged model timed (loaded from the artifact, then merged)
    assert len(spy.names("load_artifact")) == 2 and results[1]["reload"]["ok"] is True


def test_hook_measure_latency(session_run):
    spy, _, results, _ = session_run
    assert [c["modes"] for c in spy.names("measure_latency")] == [["base", "merged", "unmerged"]]
    assert set(results[1]["latency"]["regimes"]["eager"][0]["overhead"]) == {"unmerged", "merged"}


def test_hook_run_start(session_run):
    spy, *_ = session_run
    assert [c["key"] for c in spy.names("run_start")] == ["base--quickstart--seed0", "lora--quickstart--seed0"]


def test_hook_train_step_end(session_run):
    spy, *_ = session_run
    steps = spy.names("train_step_end")
    assert [c["step"] for c in steps] == [1, 2] and all(c["metrics"]["loss"] > 0 for c in steps)


def test_hook_run_finish(session_run):
    spy, _, results, _ = session_run
    assert [c["status"] for c in spy.names("run_finish")] == ["ok", "ok"]
    assert results[1]["extras"] == {"spy": "seen"}  # run.record() lands in the run file


def test_a_phase_hook_can_replace_the_default():
    class Override:
        @hookimpl
        def train_model(self, run, prepared, train_data):
            from peftbench.api.records import TrainResult

            return TrainResult(steps=0, tokens=0, examples=0, epochs=0, wall_time_s=0, tokens_per_s=0,
                               peak_memory_bytes=0, peak_memory_kind="none", lr=0, losses=[], final_loss=0.0)

    host = make_plugin_manager(load_entrypoints=False)
    host.pm.register(Override(), name="override")
    host.pm.register(FakeEvaluator(), name="fake")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        s = Session(SessionConfig(methods=["full"], model="tiny:llama", device="cpu", output=f"{d}/o", sets=FAST,
                                  cache_dir=f"{d}/c", base_row=False), host=host)
        (res,) = s.run()
    assert res["status"] == "ok" and res["train"]["steps"] == 0
