from dataclasses import dataclass, field

import pytest

from peftbench.api.options import build_dataclass, coerce, parse_sets
from peftbench.errors import ConfigError
from peftbench.session.options import OPTION_KEYS
from peftbench.train.config import TrainConfig


@dataclass
class Cfg:
    r: int = field(default=4, metadata={"help": "rank"})
    alpha: float = field(default=8.0, metadata={"help": "alpha"})
    flag: bool = field(default=False, metadata={"help": "flag"})
    names: list[str] = field(default_factory=lambda: ["a"], metadata={"help": "names"})


def test_build_coerces_strings_to_field_types():
    cfg = build_dataclass(Cfg, {"r": "8", "alpha": "1e-1", "flag": "true", "names": "q_proj, v_proj"}, "m")
    assert cfg == Cfg(r=8, alpha=0.1, flag=True, names=["q_proj", "v_proj"])


def test_json_list_syntax_for_lists():
    assert coerce('["x","y"]', list[str], "w") == ["x", "y"]


@pytest.mark.parametrize("key,value,needle", [("r", "eight", "expected an integer"), ("flag", "maybe", "true or false"),
                                              ("alpha", "big", "expected a number"), ("r", "2.5", "integer")])
def test_wrong_type_names_field_and_value(key, value, needle):
    with pytest.raises(ConfigError) as e:
        build_dataclass(Cfg, {key: value}, "method 'x'")
    assert key in str(e.value) and value in str(e.value) and needle in str(e.value)


def test_unknown_key_suggests_and_lists_valid():
    with pytest.raises(ConfigError) as e:
        build_dataclass(Cfg, {"alpah": 1}, "method 'x'")
    msg = str(e.value)
    assert "'alpah'" in msg and "Did you mean 'alpha'" in msg and "r, alpha, flag, names" in msg


def test_parse_sets_splits_train_and_method_options():
    train, per = parse_sets(["steps=10", "lora.r=8", "lr=1e-3"], ["lora", "full"], OPTION_KEYS)
    assert train == {"steps": "10", "lr": "1e-3"} and per == {"lora": {"r": "8"}}


@pytest.mark.parametrize("item,needle", [("steps", "KEY=VALUE"), ("stpes=3", "Did you mean 'steps'"),
                                         ("lorra.r=3", "Did you mean 'lora'")])
def test_parse_sets_errors(item, needle):
    with pytest.raises(ConfigError) as e:
        parse_sets([item], ["lora"], OPTION_KEYS)
    assert needle in str(e.value)


@pytest.mark.parametrize("values,field_name", [({"batch_size": 0}, "batch_size"), ({"warmup_ratio": 2}, "warmup_ratio"),
                                               ({"dtype": "fp8"}, "dtype"), ({"steps": -1}, "steps")])
def test_train_config_validation(values, field_name):
    with pytest.raises(ConfigError) as e:
        build_dataclass(TrainConfig, values, "training options")
    assert field_name in str(e.value)
