"""The Prefect flow: cached task states on rerun, partial reruns, MLflow nesting, errors before work."""
import dataclasses

import pytest

from flows.cli import main as cli
from flows.heft_flow import heft
from heft.config import ConfigError, DataConfig, LoraConfig, ModelConfig, ReftConfig, RunConfig


@pytest.fixture(scope="module")
def cfg(stories, keyword_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flow")
    return RunConfig(model=ModelConfig(name=str(stories), max_length=64),
                     data=DataConfig(source=str(keyword_data), holdout_size=60, valid_size=40, max_train=120),
                     lora=LoraConfig(epochs=2, lr=3e-3), reft=ReftConfig(epochs=2, lr=1e-2, layer=3),
                     artifact_root=str(tmp / "art"), tracking_uri=f"sqlite:///{tmp}/mlflow.db")


def label(run) -> str:
    """'reft' of stage run 'reft · layer=3 · rank=4 · epochs=2 · seed=0'."""
    return run.info.run_name.split(" · ")[0]


def states(result):
    return {(s.stage, i): (s.state, s.cache) for i, s in enumerate(result.stages)}


@pytest.fixture(scope="module")
def runs(harness, cfg):
    first = heft(cfg)
    second = heft(cfg)
    moved = heft(dataclasses.replace(cfg, reft=dataclasses.replace(cfg.reft, layer=2)))
    return first, second, moved


def test_first_run_trains_every_stage(runs):
    first, _, _ = runs
    assert [s.stage for s in first.stages] == ["data", "base", "lora", "merge", "evaluate", "evaluate",
                                                    "reft", "evaluate"]
    assert all(s.state == "Completed" for s in first.stages if s.stage != "base")
    assert set(first.results) == {"lora", "merged", "heft"}


def test_rerun_is_fully_cached_with_same_results(runs):
    first, second, _ = runs
    assert all(s.state == "Cached" and s.cache == "reused" for s in second.stages)
    assert second.results == first.results


def test_reft_layer_change_reruns_only_reft_and_its_evaluation(runs):
    _, _, moved = runs
    by_stage = [(s.stage, s.state) for s in moved.stages]
    assert by_stage == [("data", "Cached"), ("base", "Cached"), ("lora", "Cached"), ("merge", "Cached"),
                        ("evaluate", "Cached"), ("evaluate", "Cached"), ("reft", "Completed"),
                        ("evaluate", "Completed")]


def test_mlflow_parent_with_nested_stage_runs(runs, cfg):
    from mlflow import MlflowClient
    first, second, _ = runs
    client = MlflowClient(cfg.tracking_uri)
    parent = client.get_run(first.mlflow_run_id)
    assert parent.data.params["lora.rank"] == "8" and parent.data.params["reft.layer"] == "3"
    assert parent.info.run_name == "HEFT 2+2 · stories260K · seed=0"  # what it trains, on which model
    assert (parent.data.metrics["lora_epochs"], parent.data.metrics["reft_epochs"]) == (2, 2)
    assert parent.data.metrics["heldout_accuracy"] == first.results["heft"]["accuracy"]
    assert parent.data.metrics["heldout_accuracy_merged"] == first.results["merged"]["accuracy"]
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'")
    assert sorted(label(r) for r in children) == sorted(
        ["data", "base", "lora", "merge", "evaluate:lora", "evaluate:merged", "reft", "evaluate:heft"])
    names = {r.info.run_name for r in children}  # each says what it is among the experiment's runs
    assert {"lora · rank=8 · epochs=2 · seed=0", "reft · layer=3 · rank=4 · epochs=2 · seed=0",
            "evaluate:heft · layer=3 · rank=4 · epochs=2 · seed=0", "base · stories260K"} <= names, names
    lora = next(r for r in children if label(r) == "lora")
    assert lora.data.tags["heft.key"] == first.stages[2].key and lora.data.params["lora.alpha"] == "32"
    # per-epoch validation on the optimizer-step axis (120 rows / 16 = 8 steps an epoch), and
    # the step-level loss with more points than epochs
    valid = client.get_metric_history(lora.info.run_id, "valid_accuracy")
    assert [m.step for m in valid] == [8, 16]
    steps = client.get_metric_history(lora.info.run_id, "train_loss")
    assert len(steps) > len(valid) and all(1 <= m.step <= 16 for m in steps)
    # the fully cached rerun adds one run and no stage runs: it links to the runs that built them
    cached = client.search_runs([exp], f"tags.mlflow.parentRunId = '{second.mlflow_run_id}'")
    assert cached == []
    rerun = client.get_run(second.mlflow_run_id).data.tags
    built_by = {label(r): r.info.run_id for r in children}
    assert rerun["heft.built_by.lora"] == built_by["lora"]
    assert rerun["heft.built_by.evaluate.heft"] == built_by["evaluate:heft"]
    assert parent.info.artifact_uri.startswith("file://") and "mlartifacts" in parent.info.artifact_uri


def test_bad_layer_fails_before_any_work(harness, cfg, tmp_path):
    bad = dataclasses.replace(cfg, reft=dataclasses.replace(cfg.reft, layer=9),
                              artifact_root=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"reft.layer=9: the model has 5 blocks"):
        heft(bad)
    assert not (tmp_path / "a" / "data").exists()


def test_cli_rejects_unknown_override(capsys):
    assert cli(["config", "--preset", "deployments/stories-boolq.yaml", "reft.layr=3"]) == 2
    assert "unknown option 'reft.layr'" in capsys.readouterr().err


def test_prefect_yaml_declares_boolq_deployment_of_flow_heft():
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from heft.presets import load_run_config
    spec = yaml.safe_load(open("prefect.yaml"))
    boolq = next(d for d in spec["deployments"] if d["name"] == "boolq")
    assert load_flow_from_entrypoint(boolq["entrypoint"]).name == "heft"
    cfg = load_run_config(boolq["parameters"]["preset"])
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2" and cfg.mode == "heft"


def test_every_logged_metric_is_one_vocabulary_name_of_its_level(runs, cfg):
    """What MLflow actually holds after the runs, level by level: each metric a name of
    heft/tracking/vocabulary.py for that level; no name at two levels except valid_accuracy,
    which means the same number at both (the final training stage's last epoch)."""
    from mlflow import MlflowClient
    from heft.tracking.vocabulary import all_names
    first, _, _ = runs
    levels = all_names()

    def heft_names(metrics):  # MLflow's own system metrics live under system/
        return {k for k in metrics if not k.startswith("system/")}
    shared = [n for a in levels for b in levels if a < b for n in set(levels[a]) & set(levels[b])]
    assert shared == ["valid_accuracy"], shared  # pipeline and training only
    level_of = {"lora": "training", "reft": "training", "data": "other stages", "merge": "other stages",
                "base": "other stages"}
    client = MlflowClient(cfg.tracking_uri)
    parent = client.get_run(first.mlflow_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'")
    seen = set()
    for run in [parent, *children]:
        name = label(run)
        level = ("pipeline" if run is parent else "evaluation" if name.startswith("evaluate:")
                 else level_of[name])
        extra = heft_names(run.data.metrics) - set(levels[level])
        assert not extra, (name, extra)
        seen |= heft_names(run.data.metrics)
    assert {"heldout_accuracy", "eval_accuracy", "train_loss", "valid_accuracy"} <= seen
    reft = next(c for c in children if label(c) == "reft")
    last_epoch = client.get_metric_history(reft.info.run_id, "valid_accuracy")[-1].value
    assert parent.data.metrics["valid_accuracy"] == last_epoch
    heft_eval = next(c for c in children if label(c) == "evaluate:heft")
    assert parent.data.metrics["heldout_accuracy"] == heft_eval.data.metrics["eval_accuracy"]
    # system metrics are sampled where the work runs, on the runs of the stages that load a
    # model; the pipeline run has none, so heldout_accuracy is the first metric a cell shares
    # (the one MLflow's compare view plots by default)
    assert heft_names(parent.data.metrics) == set(parent.data.metrics)
    lora = next(c for c in children if label(c) == "lora")
    assert "system/cpu_utilization_percentage" in lora.data.metrics, sorted(lora.data.metrics)
