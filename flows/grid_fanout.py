"""A grid fanned out to a work pool: each cell a ``run_deployment`` of a GPU deployment.

The steps several cells share (one LoRA and merge for a ReFT-layer sweep) are built once: the
first wave is the fewest cells that together need every shared step (greedy cover), and only
when it has finished do the other cells start, so they find the shared artifacts in the
store instead of racing to train them.  Each child gets an idempotency key (grid run + cell),
so a retried grid does not launch a cell twice; the grid waits for all children, fails naming
every child that did not complete (Prefect does not fail a parent for a failed child:
PrefectHQ/prefect#11435), and cancels them when it is cancelled (#12713).  The cells' results
are read back from the artifact store by their planned keys.  Concurrency is the work pool's:
``prefect work-pool set-concurrency-limit heft-gpu 8`` runs at most 8 cells at once.
"""
from __future__ import annotations

import dataclasses

from heft.grids.plan import GridPlan
from heft.grids.spec import GridSpec
from heft.progress import say
from heft.run.result import RunResult, StageRow, run_result
from heft.store.artifacts import ArtifactStore
from heft.tracking import Tracker


def waves(grid: GridPlan) -> list[list[int]]:
    """[first wave, the rest]: a greedy cover of the shared steps not yet built, then the others."""
    shared = {s.key for s in grid.shared()}
    first: list[int] = []
    while shared:
        best = max(range(len(grid.plans)), key=lambda i: len(shared & {s.key for s in grid.plans[i].steps}))
        first.append(best)
        shared -= {s.key for s in grid.plans[best].steps}
    rest = [i for i in range(len(grid.plans)) if i not in first]
    return [w for w in (sorted(first), rest) if w]


def fan_out(grid: GridPlan, store: ArtifactStore, grid_run: Tracker, spec: GridSpec) -> list[RunResult]:
    from prefect.deployments import run_deployment
    from prefect.futures import PrefectFlowRunFuture, wait
    from prefect.runtime import flow_run
    runs: dict[int, object] = {}
    for wave in waves(grid):
        launched = {}
        for i in wave:
            cell = grid.cells[i]
            params = {"config": dataclasses.asdict(cell.config), "mlflow_parent_run_id": grid_run.run_id,
                      "run_name": cell.run_name, "mlflow_tags": cell.mlflow_tags(spec.name, grid_run.run_id)}
            child = run_deployment(spec.deployment, parameters=params, timeout=0, as_subflow=True,
                                   idempotency_key=f"{flow_run.id}-{grid.plans[i].final.key}",
                                   flow_run_name=f"{spec.name}: {cell.run_name}", tags=[f"grid:{spec.name}"])
            launched[i] = child
            say(f"launched {cell.run_name} as flow run {child.name} ({child.id})")
        wait([PrefectFlowRunFuture(child.id) for child in launched.values()])
        failed = []
        for i, child in launched.items():
            state = read_state(child.id)
            if not state.is_completed():
                failed.append(f"{grid.cells[i].run_name} (flow run {child.name}, {child.id}): {state.name}")
            runs[i] = child
        if failed:
            raise RuntimeError(f"{len(failed)} cell run(s) of grid {spec.name} did not complete:\n  "
                               + "\n  ".join(failed))
    return [read_back(grid, i, store, runs[i], grid_run) for i in range(len(grid.cells))]


def read_state(flow_run_id):
    from prefect import get_client
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def read_back(grid: GridPlan, i: int, store: ArtifactStore, child, grid_run: Tracker) -> RunResult:
    """A finished cell's results from the store by its planned keys (the child ran elsewhere),
    and its MLflow run by the Prefect flow run it recorded."""
    from heft.tracking.client import client
    planned = grid.plans[i]
    out = {s.name: store.find(s.stage, s.key) for s in planned.steps}
    missing = [s.label for s in planned.steps if out[s.name] is None]
    if missing:
        raise RuntimeError(f"cell {grid.cells[i].run_name}: {', '.join(missing)} not in {store.root} "
                           "after its run")
    found = client(grid_run.uri).search_runs([grid_run.experiment_id],
                                             f"tags.`heft.prefect.flow_run_id` = '{child.id}'", max_results=1)
    tags = found[0].data.tags if found else {}
    rows = [StageRow(s.stage, s.key, "Completed", "remote", s.label) for s in planned.steps]
    return run_result(planned, out, rows, mlflow_run_id=found[0].info.run_id if found else "",
                      model={"uri": tags.get("heft.model.uri", ""), "key": planned.final.key},
                      flow_run_id=str(child.id))


def cancel_child_runs(parent_flow_run_id) -> int:
    """Set every unfinished child flow run of ``parent_flow_run_id`` to Cancelling."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Cancelling
    cancelled = 0
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])))
        for child in children:
            if not child.state.is_final():
                client.set_flow_run_state(child.id, Cancelling(message="the grid was cancelled"), force=True)
                cancelled += 1
    return cancelled
