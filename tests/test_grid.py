"""Grid expansion (no training): relative layers, zero-epoch modes, epoch scaling, seeds,
de-duplication, labels and errors; every shipped grid preset expands."""
from pathlib import Path

import pytest

from heft.config import ConfigError
from heft.grids.spec import GridSpec, expand, load_grid

GRIDS = sorted(Path("deployments/grids").glob("*.yaml"))
STORIES_PRESET = "deployments/stories-boolq.yaml"


def layers(depth):
    spec = load_grid("deployments/grids/ablation.yaml")
    return sorted({c.config.reft.layer for c in expand(spec, depth_of=lambda name: depth)})


def test_layer_fractions_follow_depth():
    assert layers(32) == [10, 15, 20]  # the paper's layers on Llama-2-7B
    assert layers(6) == [1, 2, 3]      # MiniLM
    assert layers(5) == [1, 2, 3]      # stories260K


def test_layer_fraction_uses_the_real_model_depth(stories):
    spec = load_grid("deployments/grids/reft-layers.yaml", [f"preset={STORIES_PRESET}"])
    cells = expand(spec)
    assert [c.config.reft.layer for c in cells] == [1, 2, 3]
    assert [c.label for c in cells] == ["reft.layer=1", "reft.layer=2", "reft.layer=3"]
    assert cells[1].settings == {"reft.layer_fraction": 0.46875, "reft.layer": 2}


def test_epoch_grid_zero_epochs_mean_no_stage():
    cells = expand(load_grid("deployments/grids/epochs.yaml"), depth_of=lambda n: 6)
    methods = [c.method for c in cells]
    assert len(cells) == 36 and len({c.label for c in cells}) == 36
    assert (methods.count("base"), methods.count("reft-only"), methods.count("lora-only"),
            methods.count("heft")) == (1, 5, 5, 25)
    cell = next(c for c in cells if c.label == "lora.epochs=5 reft.epochs=3")
    assert cell.epochs == {"lora": 5, "reft": 3} and cell.total_epochs == 8
    assert cell.config.lora.schedule == cell.config.reft.schedule == "constant"


def test_paper_preset_scaled_epochs_and_seeds():
    spec = load_grid("deployments/grids/paper.yaml", ["epoch_scale=0.15", "seeds=[0, 1]"])
    cells = expand(spec, depth_of=lambda n: 6)
    assert [(c.label, c.seed) for c in cells][:3] == [("HEFT 3+3", 0), ("HEFT 3+3", 1), ("HEFT 20+20", 0)]
    assert {c.label: c.epochs for c in cells} == {
        "HEFT 3+3": {"lora": 1, "reft": 1}, "HEFT 20+20": {"lora": 3, "reft": 3},
        "LoRA-only 20": {"lora": 3}, "ReFT-only 20": {"reft": 3}}
    assert all(c.config.lora.seed == c.config.reft.seed == c.seed for c in cells)
    # a scaled cell keeps its label (the study finds cells by it) and says what it trains
    assert cells[2].run_name == "HEFT 20+20 (x0.15 = 3+3) seed=0"
    assert [c.title for c in cells[4:7:2]] == ["LoRA-only 20 (x0.15 = 3)", "ReFT-only 20 (x0.15 = 3)"]
    unscaled = expand(load_grid("deployments/grids/paper.yaml"), depth_of=lambda n: 6)
    assert unscaled[0].run_name == "HEFT 3+3 seed=0"


def test_cells_computing_the_same_thing_run_once():
    spec = GridSpec(name="dup", cells=({"label": "LoRA", "mode": "lora-only"},),
                    axes=(("reft.layer", (1, 2, 3)),))
    assert len(expand(spec, depth_of=lambda n: 6)) == 1  # reft.layer does not matter to lora-only


@pytest.mark.parametrize("overrides,message", [
    (["bogus=1"], "unknown option 'bogus'"),
    (["reft.layr=2"], "unknown option 'reft.layr'"),
    (["epoch_scale=0"], "grid.epoch_scale=0.0"),
])
def test_grid_errors_name_the_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        expand(load_grid("deployments/grids/reft-layers.yaml", overrides), depth_of=lambda n: 6)


def test_bad_layer_fraction_and_unknown_grid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"reft.layer_fraction=1.5"):
        expand(GridSpec(name="x", axes=(("reft.layer_fraction", (1.5,)),)), depth_of=lambda n: 6)
    (tmp_path / "g.yaml").write_text("name: g\naxis: {reft.rank: [2]}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['axis'\]"):
        load_grid(str(tmp_path / "g.yaml"))


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_every_shipped_grid_expands(path):
    cells = expand(load_grid(str(path)), depth_of=lambda n: 32)
    assert cells and len({(c.label, c.seed) for c in cells}) == len(cells)


def test_prefect_yaml_grid_deployments_point_at_heft_grid():
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    spec = yaml.safe_load(open("prefect.yaml"))
    grids = [d for d in spec["deployments"] if d["entrypoint"].endswith(":heft_grid")]
    assert {d["name"] for d in grids} >= {"reft-layers", "paper", "epochs", "ablation", "orderings"}
    assert load_flow_from_entrypoint(grids[0]["entrypoint"]).name == "heft-grid"
    for d in grids:
        assert expand(load_grid(d["parameters"]["grid"]), depth_of=lambda n: 6)


def test_studies_resolve_to_the_paper_settings_and_the_scaled_minilm_ones():
    from study.spec import load_study

    def depth(name):
        return 32 if "Llama" in name else 6
    big = {g.name: expand(g, depth_of=depth)
           for g in load_study("deployments/study/llama2-7b.yaml").grid_specs()}
    cmp = {(c.label, c.seed): c for c in big["study-comparison"]}
    assert len(cmp) == 21  # 7 cells x 3 seeds
    heft20 = cmp[("HEFT 20+20", 2)].config
    assert (heft20.lora.epochs, heft20.reft.epochs, heft20.reft.layer, heft20.reft.rank) == (20, 20, 15, 4)
    assert (heft20.lora.rank, heft20.lora.alpha, heft20.reft.lr) == (8, 32, 2e-4)
    assert heft20.model.name == "meta-llama/Llama-2-7b-hf" and heft20.data.source == "google/boolq"
    assert sorted({c.config.reft.layer for c in big["study-ablation"]}) == [5, 10, 15, 16, 21]
    small = {g.name: expand(g, depth_of=depth)
             for g in load_study("deployments/study/minilm.yaml").grid_specs()}
    scaled = {c.label: c.epochs for c in small["study-comparison"]}
    assert scaled["HEFT 3+3"] == {"lora": 1, "reft": 1} and scaled["HEFT 20+20"] == {"lora": 5, "reft": 5}
    assert scaled["LoRA-only 6 (HEFT 3+3's epochs)"] == {"lora": 2}
    # all training rows everywhere (2,000 did not learn) but the standalone SmolLM2 grid (CPU scale)
    assert {c.config.data.max_train for name, cs in small.items() if name != "study-smollm2"
            for c in cs} == {0}
    smol = small["study-smollm2"]
    assert {(c.config.data.max_train, c.config.data.max_eval, c.config.model.gguf_file) for c in smol} == \
        {(320, 300, "SmolLM2-135M-Instruct.Q4_1.gguf")}
    assert {c.epochs["lora"] for c in smol if "lora" in c.epochs} == {1, 2}  # not scaled by the study
    question = small["study-question-only"][0].config
    assert question.data.format == "question"  # all 9,427 train questions, the dev split held out
    boolq = "../shared/data/boolq/"
    assert (question.data.source, question.data.eval_source) == (boolq + "train_no_passage.jsonl",
                                                               boolq + "validation.jsonl")
