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


def test_flowe_bdd100k_is_the_releases_in_house_flowe():
    cfg = load_config("flowe_bdd100k")  # baselines-spec section 6, row by row
    m, o, a, d, f, opt = cfg.model, cfg.objective, cfg.augment, cfg.data, cfg.flow, cfg.optim
    assert (m.arch, m.dilated, m.decoder_top_down, m.decoder_lateral) == ("resnet50", True, False, False)
    assert not m.head_bias
    assert (o.dense, o.pooled, o.dense_weight) == (True, False, 1.0)
    assert (o.occlusion, o.occlusion_threshold_px, o.mask_out_of_frame) == ("absolute", 3.54, False)
    assert (o.target_order, o.dense_eps, o.ema_momentum) == ("warp_then_unaffine", 1e-6, 0.996)
    assert (a.blur_kernel, a.blur_sigma, a.blur_p, a.affine, a.hflip_p) == (51, (0.1, 2.0), 0.5, True, 0.5)
    assert (a.affine_scale, a.affine_degrees) == ((0.9, 1.1), 10.0)
    assert (d.resolution, d.scale, d.dt_frames, d.repeat) == ((512, 1024), (0.75, 1.25), (15, 30), 2)
    assert d.start_range == "full"
    assert (f.source, f.iters) == ("raft_large", 30)
    assert (opt.optimizer, opt.lr, opt.weight_decay, opt.min_lr, opt.eps) == ("adamw", 5e-4, 0.01, 1e-4, 1e-6)
    assert (opt.warmup_epochs, opt.schedule_epochs, opt.stop_epochs) == (2.0, 300.0, 100.0)
    # Kept as PooDLe on purpose (documented in the YAML): the exact warp and the flow-carried target valid mask.
    assert (o.warp_convention, o.warp_target_valid) == ("exact", True)


def test_table4_row1_keeps_the_shared_ablation_recipe():
    # Row 1 differs from the PooDLe ablation recipe only in architecture and losses, never in the FlowE switches.
    row1 = load_config("table4_row1_flowe").to_dict()
    shared = load_config(
        "poodle_ablation",
        ["model.dilated=true", "model.decoder_top_down=false", "model.decoder_lateral=false",
         "objective.pooled=false", "objective.dense_weight=1.0"],
    ).to_dict()  # fmt: skip
    shared["name"] = row1["name"]
    assert row1 == shared
    defaults = Config()
    assert row1["objective"]["occlusion"] == defaults.objective.occlusion == "ddflow"
    assert row1["model"]["head_bias"] and row1["objective"]["mask_out_of_frame"] and row1["augment"]["blur_kernel"] == 0
    assert row1["objective"]["dense_eps"] == 1e-7 and row1["objective"]["warp_convention"] == "exact"


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
        ("objective.occlusion=relative", "objective.occlusion = 'relative' is not valid; choose one of: ddflow"),
        ("objective.warp_convention=half", "choose one of: exact, release"),
        ("objective.occlusion_threshold_px=0", "objective.occlusion_threshold_px must be > 0"),
        ("objective.dense_eps=0", "objective.dense_eps must be > 0"),
        ("objective.mask_out_of_frame=1", "must be true or false"),
        ("model.head_bias=no", None),  # YAML reads `no` as false
        ("augment.blur_kernel=50", "augment.blur_kernel must be 0 (size from augment.blur_kernel_frac) or an odd"),
        ("augment.blur_kernel=-1", "augment.blur_kernel must be 0"),
        ("augment.blur_kernel=5.5", "augment.blur_kernel must be an integer"),
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
