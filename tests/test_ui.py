"""The MLflow and Prefect pages a researcher opens, checked in a real browser (Debian's
Chromium, driven by Playwright; loopback only, servers stopped afterwards).  A finished grid on
the tiny Llama (HEFT and ReFT-only at three ReFT layers), registered; the grid's MLflow page
names the best cell and its accuracy; the experiment page opened from the link heft prints
shows the cells' held-out accuracy sorted by validation accuracy without a click; the compare
page of the cells lists reft.layer as the param that differs and the held-out accuracy, and
shows no LoRA epochs for a ReFT-only cell; the registered version's description names the model
and its held-out accuracy; the Prefect UI shows readable flow-run and task-run names and the
link to MLflow.  Screenshots are kept in the test's temporary folder (HEFT_UI_SHOTS: a folder
to copy them to)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the long tier (make test-long, CI): the servers and the grids behind the pages take about 2 minutes
pytestmark = [pytest.mark.long,
              pytest.mark.skipif(not CHROMIUM,
                                 reason="Debian's chromium is not installed (apt-get install chromium)")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=3).read()
            return
        except OSError:
            assert proc.poll() is None, f"server for {url} exited"
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s")


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_llama, keyword_data):
    tmp = tmp_path_factory.mktemp("ui")
    pp, mp = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{pp}/api", "PREFECT_UI_URL": f"http://127.0.0.1:{pp}",
           "HEFT_MLFLOW_UI_URL": f"http://127.0.0.1:{mp}", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    db = f"sqlite:///{tmp}/mlflow.db"
    server_env = {**{k: v for k, v in env.items() if k != "PREFECT_API_URL"},  # the UI asks this API:
                  "PREFECT_UI_API_URL": f"http://127.0.0.1:{pp}/api",
                  "PREFECT_SERVER_UI_API_URL": f"http://127.0.0.1:{pp}/api"}
    prefect = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pp)]
    procs = [subprocess.Popen(prefect, env=server_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        wait_http(f"http://127.0.0.1:{pp}/api/health", procs[0])
        grid = [sys.executable, "-m", "flows.cli", "grid", "--grid", "deployments/grids/reft-layers.yaml",
                "preset=deployments/stories-boolq.yaml", f"model.name={tiny_llama}", "model.max_length=32",
                f"data.source={keyword_data}", "data.holdout_size=60", "data.valid_size=40",
                "data.max_train=240", "lora.lr=1e-2", "reft.lr=1e-2", "lora.epochs=1", "reft.epochs=1",
                "cells=[{label: HEFT}, {label: ReFT-only, mode: reft-only}]", "axes={reft.layer: [0, 1, 2]}",
                f"artifact_root={tmp}/art", f"tracking_uri={db}", "--register", "heft-ui"]
        run = subprocess.run(grid, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # the links heft prints at the end of a grid
        links = dict(re.findall(r"(MLflow [a-z ]+): (http\S+)", run.stdout + run.stderr))
        # the MLflow store is created by the grid; the server reads it afterwards
        mlflow = [str(BIN / "mlflow"), "server", "--backend-store-uri", db, "--host", "127.0.0.1",
                  "--port", str(mp), "--workers", "1"]
        procs.append(subprocess.Popen(mlflow, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        wait_http(f"http://127.0.0.1:{mp}/health", procs[1])
        yield {"tmp": tmp, "prefect": f"http://127.0.0.1:{pp}", "mlflow": f"http://127.0.0.1:{mp}", "db": db,
               "links": links}
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
        if os.environ.get("HEFT_UI_SHOTS"):
            for shot in tmp.glob("*.png"):
                shutil.copy(shot, os.environ["HEFT_UI_SHOTS"])


@pytest.fixture(scope="module")
def browser(servers):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def mlflow_runs(servers) -> tuple[str, dict, list]:
    from mlflow import MlflowClient
    client = MlflowClient(servers["db"])
    exp = client.get_experiment_by_name("heft")
    grid = client.search_runs([exp.experiment_id], "tags.`heft.kind` = 'grid'")[0]
    cells = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{grid.info.run_id}'")
    return exp.experiment_id, grid, cells


def page_text(browser, url: str, expect: str, shot: Path, plot: list | None = None) -> str:
    """The page's text once ``expect`` shows; ``plot`` receives the texts of its SVG charts
    (axis titles), which inner_text does not return."""
    page = browser.new_page(viewport={"width": 1900, "height": 1000})
    page.goto(url)
    try:
        page.get_by_text(expect, exact=False).first.wait_for(timeout=90_000)
    except Exception:
        page.screenshot(path=str(shot), full_page=True)
        body = page.inner_text("body")[:2000]
        raise AssertionError(f"{expect!r} not on {url} (screenshot {shot}):\n{body}")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(shot), full_page=True)
    text = page.inner_text("body")
    if plot is not None:
        plot += page.eval_on_selector_all("svg text", "els => els.map(e => e.textContent)")
    page.close()
    return text


def test_mlflow_grid_page_names_the_best_cell_and_its_accuracy(servers, browser):
    exp, grid, cells = mlflow_runs(servers)
    best = grid.data.tags["heft.best_cell"]
    cell = next(c for c in cells if c.data.tags["heft.cell"] == best)
    accuracy = f"{cell.data.metrics['heldout_accuracy']:.2%}"
    url = servers["links"]["MLflow grid run"]  # the link heft prints and gives Prefect
    assert url.startswith(f"{servers['mlflow']}/#/experiments/{exp}/runs/{grid.info.run_id}")
    text = page_text(browser, url, "Best cell by validation accuracy", servers["tmp"] / "mlflow-grid.png")
    assert f"Best cell by validation accuracy: {best}" in text and accuracy in text
    # MLflow's model-training view (runs, models), not its GenAI one (traces, judges, prompts)
    assert "Judges" not in text and "Prompts" not in text, text[:600]


def test_the_printed_link_opens_the_cells_sorted_by_validation_with_their_heldout_accuracy(servers, browser):
    """No click: the saved view (heft/tracking/views.py) is applied by the link heft prints."""
    exp, grid, cells = mlflow_runs(servers)
    url = servers["links"]["MLflow cells by validation accuracy"]
    assert url.startswith(f"{servers['mlflow']}/#/experiments/{exp}/runs?") and "viewStateShareKey=" in url
    page = browser.new_page(viewport={"width": 1900, "height": 1000})
    page.goto(url)
    shot = servers["tmp"] / "mlflow-cells.png"
    try:
        page.get_by_text("Sort: valid_accuracy").first.wait_for(timeout=90_000)
        page.get_by_role("columnheader", name="heldout_accuracy").first.wait_for(timeout=30_000)
        page.get_by_text(cells[0].info.run_name).first.wait_for(timeout=30_000)
    finally:
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shot), full_page=True)
    # the rows in the page's order: the cells, best validation accuracy first
    shown = [n for n in page.locator("a").all_inner_texts() if n in {c.info.run_name for c in cells}]
    page.close()
    ranked = sorted(cells, key=lambda c: -c.data.metrics["valid_accuracy"])
    assert len(shown) == len(cells), shown
    assert [next(c for c in cells if c.info.run_name == n).data.metrics["valid_accuracy"] for n in shown] == \
        [c.data.metrics["valid_accuracy"] for c in ranked], shown


def test_mlflow_compare_page_shows_the_differing_param_and_the_heldout_metric(servers, browser):
    exp, grid, cells = mlflow_runs(servers)
    url = servers["links"]["MLflow compare view of the cells"]
    assert all(c.info.run_id in url for c in cells)
    plot: list[str] = []
    text = page_text(browser, url, "reft.layer", servers["tmp"] / "mlflow-compare.png", plot)
    assert "reft.layer" in text and "heldout_accuracy" in text
    # the parallel-coordinates plot's metric: the held-out accuracy (MLflow plots the first metric
    # the runs share; a system metric there draws a flat line).  Its params are the first three
    # that differ, by name: here lora.*, '-' on the ReFT-only cells; the grid's own chart view
    # (next test) plots what the grid varies.
    assert "heldout_accuracy" in plot, plot
    assert {c.data.params["reft.layer"] for c in cells} == {"0", "1", "2"}


def test_the_chart_view_plots_what_the_grid_varies_against_the_accuracies(servers, browser):
    url = servers["links"]["MLflow charts of the cells"]
    assert "compareRunsMode=CHART" in url and "viewStateShareKey=" in url
    plot: list[str] = []
    text = page_text(browser, url, "heft: the grid's cells", servers["tmp"] / "mlflow-charts.png", plot)
    # one parallel-coordinates chart: the ReFT layer and the LoRA epochs trained (0 for ReFT-only),
    # then validation and held-out accuracy; dot plots of the held-out accuracy against each
    assert {"reft.layer", "lora_epochs", "valid_accuracy", "heldout_accuracy"} <= set(plot), plot
    assert "reft.layer vs. heldout_accuracy" in text and "valid_accuracy vs. heldout_accuracy" in text
    assert "Model metrics" not in text  # no generated bar chart per metric


def test_the_compare_page_shows_no_lora_epochs_on_a_reft_only_cell(servers, browser):
    exp, grid, cells = mlflow_runs(servers)
    reft_only = [c for c in cells if c.data.tags["heft.method"] == "reft-only"]
    assert len(reft_only) == 3 and all(c.data.params["lora.epochs"] == "-" for c in reft_only)
    page = browser.new_page(viewport={"width": 1900, "height": 1200})
    page.goto(servers["links"]["MLflow compare view of the cells"])
    row = page.locator("tr", has_text="lora.epochs").first
    row.wait_for(timeout=90_000)
    row.scroll_into_view_if_needed()
    heads = page.locator("thead tr").first.inner_text()
    values = row.inner_text().split("\t")
    page.screenshot(path=str(servers["tmp"] / "mlflow-compare-lora-epochs.png"))
    page.close()
    # one value per cell, in the page's column order: '-' under every ReFT-only cell, 1 under HEFT
    assert values[0].strip() == "lora.epochs" and len(values) == 1 + len(cells), (heads, values)
    assert sorted(v.strip() for v in values[1:]) == ["-", "-", "-", "1", "1", "1"], values


def test_the_registered_version_says_which_model_and_its_heldout_accuracy(servers, browser):
    from mlflow import MlflowClient
    exp, grid, cells = mlflow_runs(servers)
    client = MlflowClient(servers["db"], registry_uri=servers["db"])
    version = client.get_model_version_by_alias("heft-ui", "champion")
    cell = next(c for c in cells if c.info.run_id == version.run_id)  # the version points at the cell
    accuracy = f"held-out {cell.data.metrics['heldout_accuracy']:.2%}"
    text = page_text(browser, f"{servers['mlflow']}/#/models/heft-ui/versions/{version.version}", accuracy,
                     servers["tmp"] / "mlflow-registry.png")
    line = next(ln for ln in text.splitlines() if accuracy in ln)
    assert line.startswith("tiny-llama") and " · task boolq · " in line, line  # model and task
    assert cell.data.tags["heft.cell"] in line and "majority rate" in line


def test_prefect_ui_shows_readable_names_and_the_mlflow_link(servers, browser):
    shots = servers["tmp"]
    text = page_text(browser, f"{servers['prefect']}/runs", "grid reft-layers", shots / "prefect-runs.png")
    assert "grid reft-layers" in text and "reft-layers: steps" in text
    body = json.dumps({"flow_runs": {"name": {"any_": ["reft-layers: steps"]}}}).encode()
    req = urllib.request.Request(f"{servers['prefect']}/api/flow_runs/filter", body,
                                 {"Content-Type": "application/json"})
    steps = json.loads(urllib.request.urlopen(req, timeout=30).read())[0]
    text = page_text(browser, f"{servers['prefect']}/runs/flow-run/{steps['id']}", "evaluate:heft",
                     shots / "prefect-steps.png")
    assert "evaluate:heft" in text and "evaluate:merged" in text
    text = page_text(browser, f"{servers['prefect']}/artifacts", "mlflow-run-",
                     shots / "prefect-artifacts.png")
    assert "mlflow-run-" in text and "heft-summary-" in text
