"""Saved views of MLflow's experiment page, so the links heft prints open on the accuracies.

MLflow 3.17's UI reads a view from the experiment tag ``mlflow.sharedViewState.<key>`` when the
runs page is opened with ``viewStateShareKey=<key>`` (and only on ``#/experiments/<id>/runs``:
the bare ``#/experiments/<id>`` redirects and drops the query).  The tag holds an envelope
``{"name", "createdAt", "updatedAt", "state": "<JSON>"}``; the state's keys are the page's own:
``searchFilter``, ``orderByKey``, ``orderByAsc`` (the search facets) and ``selectedColumns``,
``runsExpanded``, ``compareRunCharts``, ``compareRunSections``, ... (the UI state); columns are
named ``metrics.`name```, ``params.`name``` (read from the UI bundle,
mlflow/server/js/build/static/js: ``viewStateShareKey``, ``mlflow.sharedViewState.``).

Two views: ``heft``, every pipeline run and grid cell (the runs with a held-out accuracy) with
its accuracies, sorted by validation accuracy; and one per grid, its cells only, with the
parameters the grid varies and a chart view: one parallel-coordinates chart (the varied
parameters, validation and held-out accuracy) and dot plots (held-out accuracy against each
varied parameter, and against validation accuracy), never bar charts from 0.  A chart the page
would generate for any other metric is listed as deleted, so it is not drawn.
"""
from __future__ import annotations

import json
import time

PREFIX = "mlflow.sharedViewState."
EXPERIMENT_VIEW = "heft"
ACCURACY = ["heldout_accuracy", "valid_accuracy", "heldout_ci95_low", "heldout_ci95_high",
            "heldout_majority_rate", "heldout_predicted_true_rate"]
RUN_PARAMS = ["mode", "reft.layer", "reft.rank", "lora.rank", "lora.epochs", "reft.epochs", "seed"]
TRAINING_VIEW = "workflowType=machine_learning"


def metric(name: str) -> str:
    return f"metrics.`{name}`"


def param(name: str) -> str:
    return f"params.`{name}`"


def envelope(name: str, state: dict) -> str:
    """The tag value MLflow's UI parses: name, times and the state as a JSON string."""
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def same_view(stored: str | None, state: dict) -> bool:
    """Whether a stored envelope already holds ``state`` (its times aside)."""
    try:
        return json.loads(json.loads(stored)["state"]) == state
    except (TypeError, ValueError, KeyError):
        return False


def accuracies_view() -> dict:
    """The experiment's runs with a held-out accuracy (pipeline runs and grid cells, not stage
    or grid runs), their accuracies and the params that tell them apart, best validation first."""
    return {"searchFilter": f"{metric('heldout_accuracy')} >= 0", "orderByKey": metric("valid_accuracy"),
            "orderByAsc": False, "runsHiddenMode": "SHOW_ALL",
            "selectedColumns": [metric(m) for m in ACCURACY] + [param(p) for p in RUN_PARAMS]}


def _chart(kind: str, uuid: str, section: str, **fields) -> dict:
    return {"uuid": uuid, "type": kind, "metricSectionId": section, "deleted": False, "isGenerated": False,
            "runsCountToCompare": 100, **fields}


def grid_view(grid_run_id: str, axes: list[str], epoch_metrics: list[str], other_metrics: list[str],
              images: list[str] = ()) -> dict:
    """A grid's run and cells (the runs tagged ``heft.grid_run`` with its id): ``axes``, the
    params the grid varies (in the columns and charts); ``epoch_metrics``, trained epochs the
    cells differ in (lora_epochs, ...); ``other_metrics``, every other metric the cells carry
    (their generated charts are listed deleted: no bar charts); ``images``, the report's plots
    logged as images of the grid run (dots with 95% whiskers: MLflow's own scatter has none)."""
    section = f"heft-{grid_run_id[:8]}"
    varied = [("PARAM", a) for a in axes] + [("METRIC", m) for m in epoch_metrics]
    accuracies = [*epoch_metrics, "valid_accuracy", "heldout_accuracy"]
    charts = [_chart("PARALLEL", f"{section}-parallel", section, selectedParams=list(axes),
                     selectedMetrics=accuracies, showAllRuns=True)]
    charts += [_chart("IMAGE", f"{section}-image-{i}", section, imageKeys=[key], step=0, showRunParams=False)
               for i, key in enumerate(images)]
    for i, (kind, key) in enumerate(varied + [("METRIC", "valid_accuracy")]):
        charts.append(_chart("SCATTER", f"{section}-dots-{i}", section, xaxis={"key": key, "type": kind},
                             yaxis={"key": "heldout_accuracy", "type": "METRIC"}))
    charts += [dict(_chart("BAR", f"{section}-off-{m}", section, metricKey=m), deleted=True)
               for m in sorted({*other_metrics, *epoch_metrics, "heldout_accuracy", "valid_accuracy"})]
    return {"searchFilter": f"tags.`heft.grid_run` = '{grid_run_id}'",
            "orderByKey": metric("valid_accuracy"), "orderByAsc": False, "runsHiddenMode": "SHOW_ALL",
            "runsExpanded": {grid_run_id: True},
            "selectedColumns": [metric(m) for m in ACCURACY] + [param(a) for a in axes]
            + [metric(m) for m in epoch_metrics],
            "compareRunCharts": charts,
            "compareRunSections": [{"uuid": section, "name": "heft: the grid's cells", "display": True,
                                    "isReordered": False, "deleted": False, "isGenerated": False}],
            "isAccordionReordered": True}


def view_url(base: str, experiment: str, key: str, charts: bool = False) -> str:
    """The runs page of ``experiment`` opened on saved view ``key`` (its chart view with
    ``charts``); ``base`` is the UI's address."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{base}/#/experiments/{experiment}/runs?{TRAINING_VIEW}&viewStateShareKey={key}{mode}"
