import dataclasses

import pytest
import yaml

from poodle.config import Config, ConfigError, from_dict, load_config, parse_override, shipped_configs


def test_every_shipped_config_loads_and_validates():
    names = shipped_configs()
    assert {"poodle_bdd100k", "poodle_ablation", "flowe_bdd100k", "poodle_wt", "pooled_only"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name


def test_bdd100k_recipe_is_the_dataclass_default():
    # The dataclass defaults are the full recipe; the YAML only repeats them.
    assert load_config("poodle_bdd100k").to_dict() == Config().to_dict()


def test_inheritance_and_table4_switches():
    row1 = load_config("table4_row1_flowe")
    assert row1.model.dilated and not row1.model.decoder_top_down and not row1.model.decoder_lateral
    assert row1.objective.dense and not row1.objective.pooled
    assert row1.data.resolution == (256, 512)  # from poodle_ablation
    row7 = load_config("table4_row7_poodle")
    assert row7.objective.dense and row7.objective.pooled
    assert row7.model.decoder_top_down and row7.model.decoder_lateral and not row7.model.dilated


def test_overrides_are_typed():
    cfg = load_config("poodle_bdd100k", ["optim.lr=1e-3", "data.resolution=[64,128]", "model.arch=resnet18"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.data.resolution == (64, 128)
    assert cfg.model.arch == "resnet18"
    assert parse_override("run.seed=3") == (["run", "seed"], 3)


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config("poodle_bdd100k", ["optim.lrr=1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "optim.lr" in msg and "Did you mean 'lr'" in msg
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        from_dict({"modle": {}})


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.arch=resnet51", "choose one of: resnet18, resnet34, resnet50"),
        ("run.seed=1.5", "run.seed must be an integer"),
        ("model.dilated=yes please", "must be true or false"),
        ("data.resolution=[64]", "list of 2 values"),
        ("optim.stop_epochs=400", "optim.stop_epochs (400.0) must be <= optim.schedule_epochs"),
        ("subcrops.area=[0.3,0.05]", "subcrops.area must be (low, high)"),
        ("objective.dense=false", None),
    ],
)
def test_bad_values_get_clear_errors(override, fragment):
    if fragment is None:  # dense off alone is valid (pooled-only)
        load_config("poodle_bdd100k", [override])
        return
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config("poodle_bdd100k", [override])


def test_no_loss_enabled_is_an_error():
    with pytest.raises(ConfigError, match="at least one"):
        load_config("poodle_bdd100k", ["objective.dense=false", "objective.pooled=false"])


def test_yaml_file_and_round_trip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: poodle_ablation\nrun:\n  seed: 7\n")
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.run.seed == 7 and cfg.data.resolution == (256, 512)
    # What a checkpoint stores (a plain dict) rebuilds the same config, also through YAML.
    again = from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_missing_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="shipped configs: .*poodle_bdd100k"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="inheritance loop"):
        load_config(str(loop))
