"""The Prefect step runners (heft/run/execute.py: ``execute`` walks steps with a runner).

* ``tasks_in_order``: the ``heft`` flow's steps one after the other, each a stage task with its
  MLflow stage run.
* ``on_task_runner``: a grid's unique steps all submitted at once to a Prefect task runner,
  each with its parent's future, so independent branches run at the same time.

Where a grid's steps run: threads of the flow process, a Dask cluster, or a work pool.

* threads (default, ``workers`` N): Prefect's ThreadPoolTaskRunner with N threads; torch gets
  cores // N threads each, so N stages at once do not oversubscribe the CPU.
* Dask (``dask=local`` or ``dask=tcp://scheduler:8786``): prefect-dask's DaskTaskRunner.  The
  stages that hold a model on a device are submitted under ``dask.annotate(resources={"GPU":
  1})``: a worker started with ``--resources GPU=1`` never runs two of them at once, so with
  one worker per GPU (``CUDA_VISIBLE_DEVICES`` per worker) every GPU runs one stage.
  ``dask=local`` starts a LocalCluster of ``workers`` processes, each with GPU=1.
* work pool (``deployment=heft/boolq-llama2-7b``): flows/grid_fanout.py (cells, not steps).
Every engine gets the same unique steps, each once, its parent's future as its input.  MLflow
stage runs are created and closed here, in the flow process; a worker logs its curves live
only where that is safe (threads, or an MLflow server), else they are replayed afterwards.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager, nullcontext
from urllib.parse import urlparse

from prefect import flow
from prefect.futures import as_completed

from heft.config import ConfigError
from heft.plan import Step
from heft.run.execute import Outcome, Runner
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.damage import DamagedArtifact
from heft.grids.spec import GridSpec
from heft.grids.plan import GPU_STAGES, GridPlan
from heft.tracking import Tracker, stage_params
from tasks.stages import STAGE_TASKS, run_step_task


def tasks_in_order(store: ArtifactStore, pipeline: Tracker) -> Runner:
    """Each step as its stage task, one after the other (the ``heft`` flow)."""
    def run(steps: list[Step], built: set[str]) -> dict[str, Outcome]:
        done: dict[str, Outcome] = {}
        for step in steps:
            parent = done[step.parent_key].artifact if step.parent_key else None
            done[step.key] = outcome = run_step_task(step, parent, store, pipeline, step.key in built)
            print(f"{step.stage:>8} {step.key} {outcome.state} ({'reused' if outcome.reused else 'ran'})")
        return done
    return run


def on_task_runner(grid: GridPlan, store: ArtifactStore, cell_runs: list[Tracker], spec: GridSpec) -> Runner:
    """Every unique step of a grid once, on the spec's task runner (threads or Dask); a step to
    build gets its MLflow stage run under the first cell that uses it (``cell_runs[i]``)."""
    live = not spec.dask or grid.plans[0].config.tracking_uri.startswith(("http://", "https://"))
    threads = None if spec.dask else threads_per_worker(spec.workers)

    def run(steps: list[Step], built: set[str]) -> dict[str, Outcome]:
        runs = {s.key: cell_runs[grid.users[s.key][0]].child(s.label, stage_params(s.stage, s.config))
                for s in steps if s.key not in built}  # only what will be built gets a run
        flow = grid_steps.with_options(task_runner=task_runner(spec), flow_run_name=f"{spec.name}: steps")
        try:
            done = flow(steps, store.root, sorted(built), runs, live, bool(spec.dask), threads)
        except DamagedArtifact:
            for r in runs.values():
                r.finish("FAILED")
            raise
        return {s.key: Outcome(s, done[s.key][0], done[s.key][1], s.key in built) for s in steps}
    return run


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def task_runner(spec: GridSpec):
    if spec.dask:
        from prefect_dask import DaskTaskRunner
        if spec.dask == "local":
            env = {"OMP_NUM_THREADS": str(threads_per_worker(spec.workers))}
            # two task threads per worker: the data and base stages can run beside a GPU stage,
            # and the GPU resource (not the thread count) keeps GPU stages one per worker
            return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                                  cluster_kwargs={"n_workers": spec.workers, "threads_per_worker": 2,
                                                  "processes": True, "resources": {"GPU": 1}, "env": env,
                                                  "dashboard_address": None})
        return DaskTaskRunner(address=spec.dask)
    from prefect.task_runners import ThreadPoolTaskRunner
    return ThreadPoolTaskRunner(max_workers=spec.workers)


def check_engine(spec: GridSpec) -> None:
    """Refuse an engine that cannot run, before any training: a missing extra, a Dask scheduler
    or a deployment that does not answer."""
    if spec.dask:
        try:
            import prefect_dask  # noqa: F401
        except ImportError:
            raise ConfigError(f"grid.dask={spec.dask!r}: needs prefect-dask "
                              "(pip install 'heft[dask]')") from None
    if spec.dask and spec.dask != "local":
        url = urlparse(spec.dask)
        try:
            socket.create_connection((url.hostname, url.port or 8786), timeout=5).close()
        except OSError as e:
            raise ConfigError(f"grid.dask={spec.dask!r}: no Dask scheduler answers there ({e})") from None
    if spec.deployment:
        from prefect import get_client
        try:
            with get_client(sync_client=True) as client:
                client.read_deployment_by_name(spec.deployment)
        except Exception as e:  # noqa: BLE001 - ObjectNotFound, no API
            raise ConfigError(f"grid.deployment={spec.deployment!r}: no such deployment on the Prefect API "
                              f"({type(e).__name__}: {e})") from None


@contextmanager
def gpu_slot(stage: str, on_dask: bool):
    """One GPU resource for the stages that hold a model on a device (Dask only)."""
    if on_dask and stage in GPU_STAGES:
        import dask
        with dask.annotate(resources={"GPU": 1}):
            yield
    else:
        with nullcontext():
            yield


@flow(name="heft-grid-steps", log_prints=True)
def grid_steps(steps: list[Step], root: str, built: list[str], runs: dict[str, Tracker], live: bool,
               on_dask: bool, torch_threads: int | None = None) -> dict:
    """Submit every unique step once, its parent's future as its input; close each stage's
    MLflow run as its step finishes.  Returns {key: (artifact, state name)}; raises naming
    every step that failed (their children never start)."""
    if torch_threads and len(built) < len(steps):
        import torch  # thread workers share this process: split the cores between them
        torch.set_num_threads(torch_threads)
    futures, keys = {}, {}
    for step in steps:
        parent = futures.get(step.parent_key)
        task = STAGE_TASKS[step.stage].with_options(refresh_cache=step.key not in built)
        with gpu_slot(step.stage, on_dask):
            future = task.submit(step, parent, root, runs.get(step.key), live)
        futures[step.key], keys[future.task_run_id] = future, step.key
    store, done, failed, damaged = ArtifactStore(root), {}, [], []
    for future in as_completed(list(futures.values())):
        key = keys[future.task_run_id]
        run = runs.get(key)
        try:
            art: Artifact = future.result()
        except Exception as e:  # noqa: BLE001 - reported below, with the step named
            damaged.append(e) if isinstance(e, DamagedArtifact) else None
            failed.append(f"{next(s.label for s in steps if s.key == key)} {key}: {type(e).__name__}: {e}")
            if run:
                run.finish("FAILED")
            continue
        if run:
            run.record_artifact(art, local_dir=store.local_path(art), replay=not live)
            run.finish()
        done[key] = (art, future.state.name)
    if failed and len(damaged) == len(failed):
        raise damaged[0]  # set aside already: the caller plans the grid again and rebuilds them
    if failed:
        raise RuntimeError(f"{len(failed)} grid step(s) failed:\n  " + "\n  ".join(failed))
    return done
