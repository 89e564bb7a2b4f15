"""--resume of a folder written before an option existed (issue 22 added bucketing, compile_mode=auto)."""

def test_an_option_added_since_at_its_default_keeps_a_folder_resumable():
    """A session recorded before an option existed ran as the option's default says: --resume keeps it."""
    from peftbench.session.policies import _other_cell, option_defaults, plan_changes

    defaults = option_defaults()
    old = {"plan": ["a"], "train_configs": {"lora--sst2": {"steps": 3}}, "method_configs": {}, "tasks": {},
           "retention": {}}
    new = {**old, "train_configs": {"lora--sst2": {**defaults, "steps": 3}}}
    assert plan_changes(old, new) == []
    new["train_configs"]["lora--sst2"]["bucketing"] = "on"
    assert plan_changes(old, new) == ['training options of lora on sst2: bucketing "auto" -> "on"']
    assert _other_cell({"config": {"train": {"steps": 3}}}, {"config": {"train": {**defaults, "steps": 3}}}) is None
    assert _other_cell({"config": {"train": {"steps": 3}}},
                       {"config": {"train": {**defaults, "steps": 3, "bucketing": "off"}}}) is not None
