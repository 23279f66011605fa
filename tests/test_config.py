import pytest

from heft.config import ConfigError, LoraConfig, ReftConfig, RunConfig, flat_params, parse_positions
from heft.presets import load_run_config


@pytest.mark.parametrize("spec,expected",
                         [("f1+l1", (1, 1)), ("l1", (0, 1)), ("f2", (2, 0)), ("f3+l2", (3, 2))])
def test_positions_parse(spec, expected):
    assert parse_positions(spec) == expected


@pytest.mark.parametrize("spec", ["", "last", "f0", "l0+f1", "f1+", "+l1", "f1l1"])
def test_positions_reject_names_value(spec):
    with pytest.raises(ConfigError, match="reft.positions"):
        parse_positions(spec)


@pytest.mark.parametrize("make,field", [
    (lambda: LoraConfig(rank=0), "lora.rank=0"),
    (lambda: LoraConfig(epochs=-1), "lora.epochs=-1"),
    (lambda: ReftConfig(rank=0), "reft.rank=0"),
    (lambda: ReftConfig(layer=-2), "reft.layer=-2"),
    (lambda: RunConfig(mode="both"), "mode='both'"),
])
def test_bad_values_name_field_and_value(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert field in str(err.value)


def test_paper_defaults():
    cfg = RunConfig()
    assert (cfg.lora.rank, cfg.lora.alpha) == (8, 32)
    assert (cfg.reft.layer, cfg.reft.rank, cfg.reft.lr) == (15, 4, 2e-4)


def test_run_seed_overrides_stage_seeds():
    cfg = RunConfig(seed=7)
    assert cfg.lora.seed == cfg.reft.seed == 7


def test_preset_and_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {name: some/model}\nlora: {epochs: 2}\n")
    cfg = load_run_config(preset, ["lora.rank=16", "reft.positions=l1",
                                   "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.model.name == "some/model" and cfg.lora.epochs == 2 and cfg.lora.rank == 16
    assert cfg.reft.positions == "l1" and cfg.lora.target_modules == ("q_proj", "v_proj")
    assert flat_params(cfg)["lora.target_modules"] == "q_proj,v_proj"


@pytest.mark.parametrize("overrides,needle", [
    (["lora.rnk=4"], "unknown option 'lora.rnk'"),
    (["nope=1"], "unknown option 'nope'"),
    (["reft.layer"], "expected key=value"),
    (["reft.rank=-1"], "reft.rank=-1"),
])
def test_override_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_run_config(None, overrides)


def test_malformed_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)


@pytest.mark.parametrize("preset", ["deployments/minilm-boolq.yaml", "deployments/stories-boolq.yaml",
                                    "deployments/llama2-7b-boolq.yaml"])
def test_presets_load(preset):
    cfg = load_run_config(preset)
    assert cfg.lora.alpha == 32 and cfg.reft.rank == 4
    # the paper's LoRA rank 8, except MiniLM's validation-chosen recipe (all linear layers, r=16)
    assert cfg.lora.rank == (16 if "minilm" in preset else 8)


@pytest.mark.parametrize("text,key,first,second", [
    # a second section replaces the first whole: epochs and lr would fall back to defaults
    ("lora:\n  epochs: 5\n  lr: 0.01\nreft: {layer: 2}\nlora:\n  rank: 4\n", "lora", 1, 5),
    ("model: {name: x}\nlora:\n  rank: 8\n  epochs: 2\n  rank: 16\n", "lora.rank", 3, 5),
    ("reft: {layer: 2, layer: 3}\n", "reft.layer", 1, 1),
])
def test_duplicate_keys_in_a_preset_are_refused_with_both_lines(tmp_path, text, key, first, second):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == (f"{path}: duplicate key '{key}' at line {second} (first at line {first}); "
                              "YAML would silently keep only the last one")


def test_duplicate_axes_in_a_grid_are_refused(tmp_path):
    from heft.grids.spec import load_grid
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\npreset: deployments/stories-boolq.yaml\naxes:\n  reft.layer: [1, 2, 3]\n"
                    "  lora.rank: [4, 8]\nseeds: [0]\naxes:\n  reft.layer: [1, 2]\n  lora.rank: [4, 8]\n")
    with pytest.raises(ConfigError, match=rf"{grid}: duplicate key 'axes' at line 7 \(first at line 3\)"):
        load_grid(str(grid))
