"""The MLflow and Prefect pages a researcher opens, checked in a real browser (Debian's
Chromium, driven by Playwright; loopback only, servers stopped afterwards).  A finished ReFT
layer grid on the tiny Llama; the grid's MLflow page names the best cell and its accuracy, the
compare page of the cells lists reft.layer as the param that differs and the held-out accuracy,
and the Prefect UI shows readable flow-run and task-run names and the link to MLflow.
Screenshots are kept in the test's temporary folder."""
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
pytestmark = pytest.mark.skipif(not CHROMIUM,
                                reason="Debian's chromium is not installed (apt-get install chromium)")
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
                "axes={reft.layer: [0, 1, 2]}", f"artifact_root={tmp}/art", f"tracking_uri={db}"]
        run = subprocess.run(grid, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # the links heft prints at the end of a grid (through Prefect's log_prints: stderr)
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
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
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


def test_mlflow_compare_page_shows_the_differing_param_and_the_heldout_metric(servers, browser):
    exp, grid, cells = mlflow_runs(servers)
    url = servers["links"]["MLflow compare view of the cells"]
    assert all(c.info.run_id in url for c in cells)
    plot: list[str] = []
    text = page_text(browser, url, "reft.layer", servers["tmp"] / "mlflow-compare.png", plot)
    assert "reft.layer" in text and "heldout_accuracy" in text
    # the parallel-coordinates plot's axes: the differing param against the held-out accuracy
    # (MLflow plots the first metric the runs share; a system metric there draws a flat line)
    assert "reft.layer" in plot and "heldout_accuracy" in plot, plot
    assert {c.data.params["reft.layer"] for c in cells} == {"0", "1", "2"}


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
