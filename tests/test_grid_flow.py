"""Flow heft-grid on stories260K + the keyword task: which stages are Cached and which ran
for each kind of grid change, the paper preset's report, MLflow parent/child nesting."""
import pytest

from flows.grid_flow import heft_grid
from heft.store.artifacts import ArtifactStore
from heft.grids.spec import load_grid

SHARED_STAGES = ["data", "lora", "merge", "evaluate", "evaluate"]


@pytest.fixture(scope="module")
def base(stories, keyword_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    return tmp, ["preset=deployments/stories-boolq.yaml", "model.max_length=64",
                 f"data.source={keyword_data}", "data.holdout_size=60", "data.valid_size=40",
                 "data.max_train=240", "lora.lr=3e-3", "reft.lr=1e-2", "lora.epochs=2", "reft.epochs=2",
                 f"tracking_uri=sqlite:///{tmp}/mlflow.db"]


def run(base, grid, *extra, root="art", register=None):
    tmp, overrides = base
    spec = load_grid(grid, overrides + [f"artifact_root={tmp}/{root}", *extra])
    return heft_grid(spec=spec, report_dir=str(tmp / f"report-{spec.name}-{len(list(tmp.iterdir()))}"),
                     register=register)


def states(cell):
    return [(s["stage"], s["state"]) for s in cell["stages"] if s["stage"] != "base"]


def ran(cell):
    return [stage for stage, state in states(cell) if state == "Completed"]


@pytest.fixture(scope="module")
def ablation(harness, base, tmp_path_factory):
    spec = "deployments/grids/ablation.yaml"
    first = run(base, spec, root="abl")
    return first, run(base, spec, root="abl")


def test_ablation_trains_lora_once_and_reruns_only_reft(ablation):
    first, _ = ablation
    cells = first["cells"]
    assert len(cells) == 9  # 3 layers x 3 dims
    assert ran(cells[0]) == SHARED_STAGES + ["reft", "evaluate"]
    for cell in cells[1:]:
        assert [st for s, st in states(cell)][:5] == ["Cached"] * 5, cell["label"]
        assert ran(cell) == ["reft", "evaluate"]
    assert len({c["stages"][2]["key"] for c in cells}) == 1  # one LoRA artifact


def test_finished_grid_reruns_fully_cached(ablation):
    first, again = ablation
    assert all(state == "Cached" for c in again["cells"] for _, state in states(c))
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in first["rows"]]
    assert again["seconds"] < first["seconds"]


def test_ablation_report_heatmap_and_mlflow_nesting(ablation, base):
    from mlflow import MlflowClient
    first, _ = ablation
    report = first["report_dir"]
    data = open(f"{report}/ablation.png", "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import os
    assert not os.path.exists(f"{report}/accuracy_vs_epochs.png")  # every cell trains the same epochs
    table = open(f"{report}/report.md").read()
    assert table.count("| reft.layer=") == 9 and "7 / 0" in table and "2 / 5" in table
    client = MlflowClient(f"sqlite:///{base[0]}/mlflow.db")
    grid = client.get_run(first["mlflow_run_id"])
    assert grid.data.tags["heft.kind"] == "grid" and grid.data.params["grid.cells"] == "9"
    assert grid.data.metrics["steps_built"] == 7 + 8 * 2
    files = {f.path for f in client.list_artifacts(grid.info.run_id, "report")}
    assert {"report/grid.yaml", "report/report.md", "report/results.csv", "report/ablation.png"} <= files
    exp = grid.info.experiment_id
    cells = client.search_runs([exp], f"tags.mlflow.parentRunId = '{grid.info.run_id}'")
    assert len(cells) == 9 and {r.data.tags["heft.grid"] for r in cells} == {"ablation"}
    assert all("heldout_accuracy" in r.data.metrics and "reft.rank" in r.data.params for r in cells)
    stages = client.search_runs([exp], f"tags.mlflow.parentRunId = '{first['cells'][0]['run_id']}'")
    assert {r.info.run_name.split(" · ")[0] for r in stages} >= {"lora", "merge", "reft", "evaluate:heft"}
    # named by what tells them apart in this grid: 'reft · layer=1 · rank=2 · seed=0'
    names = {r.info.run_name for r in stages}
    assert "lora · seed=0" in names and f"evaluate:heft · {first['cells'][0]['title']} seed=0" in names, names
    assert any(n.startswith("reft · layer=") and " · rank=" in n for n in names), names


@pytest.mark.long  # 50 s: the ablation above keeps what a change reruns in the default tier
def test_lora_rank_change_reruns_everything_below_data(harness, base):
    out = run(base, "deployments/grids/lora-rank.yaml", root="rank")
    second = out["cells"][1]
    assert states(second)[0] == ("data", "Cached")
    assert ran(second) == ["lora", "merge", "evaluate", "evaluate", "reft", "evaluate"]


@pytest.mark.long  # 30 s; tests/test_checkpoints.py keeps the continuation in the default tier
def test_epoch_grid_continues_lora_from_checkpoints(harness, base):
    tmp, _ = base
    out = run(base, "deployments/grids/epochs.yaml", "axes={lora.epochs: [1, 2], reft.epochs: [0, 1]}",
              root="ep")
    cells = {c["label"]: c for c in out["cells"]}
    assert [c["method"] for c in out["cells"]] == ["lora-only", "heft", "lora-only", "heft"]
    assert ran(cells["lora.epochs=1 reft.epochs=1"]) == ["reft", "evaluate"]  # LoRA-1 from cell 1
    longer = cells["lora.epochs=2 reft.epochs=0"]
    assert "lora" in ran(longer)
    lora_key = next(s["key"] for s in longer["stages"] if s["stage"] == "lora")
    assert ArtifactStore(f"{tmp}/ep").find("lora", lora_key).metrics["resumed_from_epoch"] == 1
    assert ran(cells["lora.epochs=2 reft.epochs=1"]) == ["reft", "evaluate"]


@pytest.mark.long  # 65 s: nine cells with seeds
def test_orderings_with_seeds_share_stages_and_report_spread(harness, base):
    out = run(base, "deployments/grids/orderings.yaml", "seeds=[0, 1]", root="ord", register="heft-orderings")
    cells = {(c["label"], c["seed"]): c for c in out["cells"]}
    # the registered model is the cell with the best validation accuracy (the first of equals)
    from mlflow import MlflowClient
    client = MlflowClient(base[1][-1].removeprefix("tracking_uri="))
    champion = client.get_model_version_by_alias("heft-orderings", "champion")
    scored = [c for c in out["cells"] if c["valid_accuracy"] is not None]
    best = max(scored, key=lambda c: c["valid_accuracy"])
    assert champion.tags["heft.cell"] == best["label"] and int(champion.tags["heft.seed"]) == best["seed"]
    assert champion.tags["valid_accuracy"] == f"{max(c['valid_accuracy'] for c in scored):.2%}"  # readable
    assert champion.tags["heft.alias_given"] == "champion" and champion.run_id == best["run_id"]  # the cell
    assert "base" not in {champion.tags["heft.cell"]}  # an untrained cell has no validation accuracy
    assert ran(cells[("HEFT", 0)]) == ["reft", "evaluate"]            # LoRA/merge from "LoRA only"
    assert ran(cells[("ReFT->LoRA", 0)]) == ["lora", "evaluate"]      # ReFT from "ReFT only"
    assert states(cells[("LoRA only", 1)])[0] == ("data", "Cached")   # a new seed retrains
    assert "lora" in ran(cells[("LoRA only", 1)])
    rows = {r["label"]: r for r in out["rows"]}
    assert list(rows) == ["base", "LoRA only", "ReFT only", "HEFT", "ReFT->LoRA"]
    assert rows["base"]["seeds"] == [0]  # nothing trains: a second seed would compute the same thing
    assert all(r["seeds"] == [0, 1] and len(r["accuracies"]) == 2 for k, r in rows.items() if k != "base")
    assert rows["LoRA only"]["mean"] > 0.8 and rows["HEFT"]["mean"] > 0.8 and rows["ReFT->LoRA"]["mean"] > 0.8
    assert rows["base"]["mean"] < 0.7


@pytest.mark.slow  # slow tier: 26 s; the study's paper rows stay in test_study
def test_paper_preset_report_has_its_four_rows(harness, base):
    out = run(base, "deployments/grids/paper.yaml", "epoch_scale=0.15", root="paper")
    assert [r["label"] for r in out["rows"]] == ["HEFT 3+3", "HEFT 20+20", "LoRA-only 20", "ReFT-only 20"]
    assert [r["total_epochs"] for r in out["rows"]] == [2, 6, 3, 3]
    for r in out["rows"]:
        assert 0.0 <= r["mean"] <= 1.0
    assert {r["label"]: r["mean"] for r in out["rows"]}["LoRA-only 20"] > 0.8
    lora_only = out["cells"][2]
    assert states(lora_only)[1] == ("lora", "Cached")  # HEFT 20+20's LoRA stage
    table = open(f"{out['report_dir']}/report.md").read().splitlines()
    body = [line for line in table if line.startswith("| ") and not line.startswith("| cell")]
    assert [line.split(" | ")[0][2:] for line in body] == [  # the scaled epochs said beside the label
        "HEFT 3+3 (x0.15 = 1+1)", "HEFT 20+20 (x0.15 = 3+3)", "LoRA-only 20 (x0.15 = 3)",
        "ReFT-only 20 (x0.15 = 3)"]
