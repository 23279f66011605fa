"""Names that tell runs apart, and params that do not claim training that never happened: the
step titles of a run and of a grid, run titles, Prefect artifact keys, and the MLflow params of
a mode's unused stage sections.  Plans only (no training, no Prefect server)."""
from __future__ import annotations

import dataclasses

from heft.config import RunConfig, flat_params
from heft.grids.plan import GridPlan, plan_cells
from heft.grids.spec import expand, load_grid
from heft.plan import plan, run_title
from heft.store.keys import stage_key
from tasks.pipeline_run import UNUSED, run_params
from tasks.stages import slug

STORIES = "preset=deployments/stories-boolq.yaml"


def test_a_runs_steps_and_the_run_say_what_they_are(stories):
    from heft.presets import load_run_config
    cfg = load_run_config("deployments/stories-boolq.yaml", [])
    planned = plan(cfg)
    assert run_title(cfg) == "HEFT 1+1 · stories260K · seed=0"
    assert [s.title for s in planned.steps] == [
        "data · boolq/validation.jsonl", "base · stories260K", "lora · rank=8 · epochs=1 · seed=0",
        "merge · rank=8 · epochs=1 · seed=0", "evaluate:lora · rank=8 · epochs=1 · seed=0",
        "evaluate:merged · rank=8 · epochs=1 · seed=0", "reft · layer=3 · rank=4 · epochs=1 · seed=0",
        "evaluate:heft · layer=3 · rank=4 · epochs=1 · seed=0"]
    # a title is a name, not part of what a step computes: the keys are the plan's own
    assert all(s.key == stage_key(s.stage, s.config, s.parent_key, s.inputs or None) for s in planned.steps)


def test_a_grids_steps_are_named_by_what_varies_and_their_cell(stories):
    cells = expand(load_grid("deployments/grids/reft-layers.yaml", [STORIES]))
    grid = GridPlan.of(cells, plan_cells(cells))
    titles = [s.title for s in grid.steps.values()]
    assert [t for t in titles if t.startswith("reft")] == [f"reft · layer={n} · seed=0" for n in (1, 2, 3)]
    assert "evaluate:heft · reft.layer=2 seed=0" in titles and "lora · seed=0" in titles
    assert grid.plans[1].steps[-1].title == "evaluate:heft · reft.layer=2 seed=0"  # the plans too
    # the same settings on another model are told apart by what they train on
    paper = expand(load_grid("deployments/grids/paper.yaml", [STORIES, "epoch_scale=0.1"]))
    titles = [s.title for s in GridPlan.of(paper, plan_cells(paper)).steps.values()]
    assert {"reft · epochs=2 · seed=0 · on merge", "reft · epochs=2 · seed=0 · on base"} <= set(titles)
    assert "evaluate:heft · HEFT 20+20 (x0.1 = 2+2) seed=0" in titles
    assert len(set(titles)) == len(titles)


def test_unused_stage_sections_are_logged_as_a_dash_and_used_ones_unchanged():
    heft = RunConfig()
    assert run_params(heft, "/root") == flat_params(heft) | {"artifact_root": "/root"}  # nothing changes
    reft_only = dataclasses.replace(heft, mode="reft-only")
    params = run_params(reft_only, "/root")
    assert params["lora.epochs"] == params["lora.rank"] == params["merge.safe_merge"] == UNUSED
    assert params["reft.epochs"] == heft.reft.epochs and params["reft.layer"] == heft.reft.layer
    assert params["model.name"] == heft.model.name and params["mode"] == "reft-only"
    lora_only = run_params(dataclasses.replace(heft, mode="lora-only"), "/root")
    assert lora_only["reft.layer"] == UNUSED and lora_only["lora.rank"] == heft.lora.rank
    assert run_params(dataclasses.replace(heft, mode="reft-lora"), "/root")["merge.safe_merge"] == UNUSED
    assert set(params) == set(flat_params(heft)) | {"artifact_root"}  # the same names


def test_prefect_artifact_keys_are_slugs_of_grid_and_cell():
    assert slug("reft-layers-HEFT 20+20 (x0.1 = 2+2) seed=0") == "reft-layers-heft-20-20-x0-1-2-2-seed-0"
    assert slug("HEFT 1+1 · stories260K · seed=0-cb319091") == "heft-1-1-stories260k-seed-0-cb319091"
