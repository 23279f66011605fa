"""The Prefect step runners (heft/run/execute.py: ``execute`` walks steps with a runner).

* ``tasks_in_order``: the ``heft`` flow's steps one after the other, each a stage task with its
  MLflow stage run.
* ``on_task_runner``: a grid's unique steps on a Prefect task runner, each submitted once its
  parent is done, so independent branches run at the same time.

Where a grid's steps run: threads of the flow process, a Dask cluster, or a work pool.

* threads (default, ``workers`` N): Prefect's ThreadPoolTaskRunner with N threads; torch gets
  cores // N threads each, so N stages at once do not oversubscribe the CPU.
* Dask (``dask=local`` or ``dask=tcp://scheduler:8786``): prefect-dask's DaskTaskRunner.  The
  stages that hold a model on a device are submitted under ``dask.annotate(resources={"GPU":
  1})``: a worker started with ``--resources GPU=1`` never runs two of them at once, so with
  one worker per GPU (``CUDA_VISIBLE_DEVICES`` per worker) every GPU runs one stage.
  ``dask=local`` starts a LocalCluster of ``workers`` processes, each with GPU=1.
* work pool (``deployment=heft/boolq-llama2-7b``): flows/grid_fanout.py (cells, not steps).
Every engine gets the same unique steps, each once, its parent's (finished) future as its input.
A step is submitted only when its parent is done: a task given an unfinished future waits for
it inside the task runner, and on the thread pool that wait holds a worker thread (Prefect
resolves a task's inputs on the thread that runs it), so with 2 workers LoRA's children held
both threads until LoRA ended and a ReFT-only branch waited behind them.  On threads at most
``workers`` steps are in flight, ready steps in plan order (of an epoch grid's LoRA stages the
shorter first: the longer continues its checkpoint); on Dask every ready step goes to the
scheduler, whose GPU resources decide.

MLflow stage runs are created and closed here, in the flow process; a worker logs its curves
live only where that is safe (threads, or an MLflow server), else they are replayed afterwards.
A failed step is printed once, with its cells; its descendants never start and are named.  An
interrupt (Ctrl-C, SIGTERM) stops the stages on worker threads at their next step, marks the
Prefect task runs still in flight Crashed and the open stage runs KILLED, then goes on up.
"""
from __future__ import annotations

import os
import queue
import socket
import time
from contextlib import contextmanager, nullcontext
from urllib.parse import urlparse

from prefect import flow

from heft import progress
from heft.config import ConfigError
from heft.plan import Step
from heft.run.execute import Outcome, Runner, StepsFailed
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.damage import DamagedArtifact
from heft.grids.spec import GridSpec
from heft.grids.plan import GPU_STAGES, Eta, GridPlan
from heft.tracking import Tracker, stage_params
from tasks.stages import STAGE_TASKS, run_step_task

STOP_WAIT_S = 60  # how long an interrupted grid waits for its worker threads to stop
SAID_STARTING = ("lora", "reft")  # the stages whose start is worth a line (their epochs follow)


def tasks_in_order(store: ArtifactStore, pipeline: Tracker) -> Runner:
    """Each step as its stage task, one after the other (the ``heft`` flow); one line when a
    step starts and one when it is done or found cached."""
    def run(steps: list[Step], built: set[str]) -> dict[str, Outcome]:
        done: dict[str, Outcome] = {}
        for step in steps:
            parent = done[step.parent_key].artifact if step.parent_key else None
            if step.key not in built and step.stage in SAID_STARTING:
                progress.say(f"{step.title}: started")
            with progress.doing(step.label):
                done[step.key] = outcome = run_step_task(step, parent, store, pipeline, step.key in built)
            progress.say(step_done(step, outcome.artifact, outcome.reused or outcome.state == "Cached"))
        return done
    return run


def build_seconds(art: Artifact) -> float | None:
    """How long building ``art`` took (its meta.json build times), None when unknown."""
    build = art.meta.get("build", {})
    return build["finished"] - build["started"] if "started" in build and "finished" in build else None


def step_done(step: Step, art: Artifact, cached: bool) -> str:
    """'reft · layer=1 · seed=0: done in 18 s, validation 61.75%' or '...: cached (a99b3aab)'."""
    m = art.metrics
    if step.stage == "evaluate":
        what = (f"held-out {m['accuracy']:.2%} (95% CI {m['ci95_low']:.2%}-{m['ci95_high']:.2%}, "
                f"majority {m['majority_rate']:.2%})")
    elif m.get("final_valid_accuracy") is not None:
        what = f"validation {m['final_valid_accuracy']:.2%}"
    else:
        what = ""
    if cached:
        return f"{step.title}: cached ({step.key[:8]})" + (f", {what}" if what else "")
    seconds = build_seconds(art)
    took = f"done in {progress.duration(seconds)}" if seconds is not None else "done"
    return f"{step.title}: {took}" + (f", {what}" if what else "")


def on_task_runner(grid: GridPlan, store: ArtifactStore, cell_runs: list[Tracker], spec: GridSpec) -> Runner:
    """Every unique step of a grid once, on the spec's task runner (threads or Dask); a step to
    build gets its MLflow stage run under the first cell that uses it (``cell_runs[i]``)."""
    live = not spec.dask or grid.plans[0].config.tracking_uri.startswith(("http://", "https://"))
    threads = None if spec.dask else threads_per_worker(spec.workers)
    cells = {key: cells_of(grid, key) for key in grid.steps}

    def run(steps: list[Step], built: set[str]) -> dict[str, Outcome]:
        runs = {s.key: cell_runs[grid.users[s.key][0]].child(s.title, stage_params(s.stage, s.config))
                for s in steps if s.key not in built}  # only what will be built gets a run
        flow = grid_steps.with_options(task_runner=task_runner(spec), flow_run_name=f"{spec.name}: steps")
        try:
            done = flow(steps, store.root, sorted(built), runs, live, bool(spec.dask), threads, cells,
                        None if spec.dask else spec.workers, spec.name)
        except BaseException as e:  # the stage runs a failure or an interrupt left open
            close_open(runs.values(), "FAILED" if isinstance(e, Exception) else "KILLED")
            raise
        finally:
            progress.clear_stop()  # the task runner has joined its threads: none is left to stop
        return {s.key: Outcome(s, done[s.key][0], done[s.key][1], s.key in built) for s in steps}
    return run


def close_open(runs, status: str) -> None:
    """Close the runs still open; a tracking fault here is said, never raised over the error
    that got us here."""
    for r in runs:
        try:
            r.close_if_open(status)
        except Exception as e:  # noqa: BLE001
            print(f"could not close MLflow run {r.run_id} as {status}: {type(e).__name__}: {e}")


def cells_of(grid: GridPlan, key: str) -> str:
    """'cell HEFT 3+3 seed=0' or 'cells A seed=0, B seed=0 and 7 more': who needs a step."""
    names = [grid.cells[i].run_name for i in grid.users[key]]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"cell{'s' * (len(names) > 1)} {shown}"


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
               on_dask: bool, torch_threads: int | None = None, cells: dict[str, str] | None = None,
               workers: int | None = None, grid_name: str = "grid") -> dict:
    """Submit every unique step once, when its parent is done (at most ``workers`` in flight, in
    plan order); close each stage's MLflow run as its step finishes, with the step's own build
    time as its duration.  Says each step started and done (or cached), then the grid's steps
    done of all and its ETA (heft/grids/plan.py ``Eta``).  Returns {key: (artifact, state
    name)}; a failed step is said once, with its ``cells``, and its descendants are not
    started; then raises ``StepsFailed``."""
    if torch_threads and len(built) < len(steps):
        import torch  # thread workers share this process: split the cores between them
        torch.set_num_threads(torch_threads)
    cells = cells or {}
    store, done, failed, damaged = ArtifactStore(root), {}, [], []
    futures, in_flight, doing = {}, {}, {}  # key -> future; future -> step; key -> progress token
    finished: queue.Queue = queue.Queue()
    ready = [s for s in steps if s.parent_key is None]
    waiting = [s for s in steps if s.parent_key is not None]
    order = {s.key: i for i, s in enumerate(steps)}  # ready steps start in the plan's order
    eta, started = Eta(steps, set(built), workers or len(steps)), time.monotonic()

    def where(step: Step) -> str:
        return f"{step.label} ({cells[step.key]})" if step.key in cells else step.label
    try:
        while ready or in_flight:
            ready.sort(key=lambda s: order[s.key])
            while ready and (workers is None or len(in_flight) < workers):
                step = ready.pop(0)
                task = STAGE_TASKS[step.stage].with_options(refresh_cache=step.key not in built)
                with gpu_slot(step.stage, on_dask):  # the parent's future is finished: nothing waits
                    future = task.submit(step, futures.get(step.parent_key), root, runs.get(step.key), live)
                futures[step.key], in_flight[future] = future, step
                doing[step.key] = progress.started(where(step))
                if step.key not in built and step.stage in SAID_STARTING:
                    progress.say(f"{step.title}: started")
                future.add_done_callback(finished.put)
            future = next_finished(finished)
            step = in_flight.pop(future)
            progress.ended(doing.pop(step.key))
            run = runs.get(step.key)
            try:
                art: Artifact = future.result()
            except Exception as e:  # noqa: BLE001 - said once here, with the step and its cells
                damaged.append(e) if isinstance(e, DamagedArtifact) else None
                failed.append(step)
                progress.say(f"FAILED {where(step)} {step.key}: {type(e).__name__}: {first_line(e)}")
                if run:
                    run.finish("FAILED")
                continue
            seconds = None if step.key in built else build_seconds(art)
            if run:
                run.record_artifact(art, local_dir=store.local_path(art), replay=not live)
                run.finish(seconds=seconds)
            done[step.key] = (art, future.state.name)
            eta.done(step, seconds, art.metrics)
            elapsed = time.monotonic() - started
            progress.say(step_done(step, art, step.key in built or future.state.name == "Cached")
                         + "  " + grid_line(grid_name, done, built, len(steps), elapsed, eta.left()))
            ready += [s for s in waiting if s.parent_key == step.key]
            waiting = [s for s in waiting if s.parent_key != step.key]
    except BaseException as e:  # an interrupt, or an error of the flow's own (not of a step)
        if not isinstance(e, Exception):
            progress.interrupted(list(doing.values()))
        stop_in_flight(in_flight)  # else the task runner's exit waits for every running stage to end
        raise
    finally:
        for token in doing.values():
            progress.ended(token)
    if failed and len(damaged) == len(failed):
        raise damaged[0]  # set aside already: the caller plans the grid again and rebuilds them
    if failed:
        for step in waiting:  # never started: a parent (or its parent) failed
            if run := runs.get(step.key):
                run.finish("FAILED")
        if waiting:
            progress.say(f"not run, a step they need failed: {', '.join(where(s) for s in waiting)}")
        raise StepsFailed(f"{len(failed)} grid step(s) failed ({', '.join(s.label for s in failed)}) and "
                          f"{len(waiting)} did not run because of them; each is named above with its cells")
    return done


def grid_line(name: str, done: dict, built: list[str], total: int, elapsed: float, left: float | None) -> str:
    """'[grid reft-layers 7/12 steps, 3 min 20 s, ETA 2 min 10 s]': the grid's progress, after
    each step's line."""
    eta = "" if left is None else (", all done" if len(done) == total else f", ETA {progress.duration(left)}")
    return f"[grid {name} {len(done)}/{total} steps, {progress.duration(elapsed)}{eta}]"


def next_finished(finished: queue.Queue):
    """The next future to finish, waited for in short slices: Python runs a signal's handler in
    the main thread, and a main thread blocked in one long lock wait is not woken when the
    kernel hands the signal to another thread (a worker, torch's), so Ctrl-C would wait for a
    stage to end."""
    while True:
        try:
            return finished.get(timeout=0.5)
        except queue.Empty:
            continue


def first_line(e: BaseException, limit: int = 300) -> str:
    """An error's first line, cut: a step's failure is one line of the grid's report (Prefect
    has logged the task's whole traceback already)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if len(text) <= limit else text[:limit] + " ..."


def stop_in_flight(in_flight: dict) -> None:
    """Stop the stages running on worker threads at their next step, wait for them (they end
    their task runs Crashed), and mark Crashed any task run still not finished (one on a Dask
    worker that died with the interrupt).  The stop stays requested until every thread ended:
    cleared as soon as the first stage stopped, a second stage busy between two steps (saving
    its checkpoint) missed it and trained to its end (measured: 86 s, two LoRAs of
    stories260K; 5 s with the stop kept)."""
    progress.request_stop()  # until the task runner has joined its threads (on_task_runner clears it)
    deadline = time.monotonic() + STOP_WAIT_S
    for future in in_flight:
        try:
            future.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (progress.Stopped, Exception):  # noqa: BLE001 - how the stage ended; a 2nd Ctrl-C goes on up
            pass
    crash_unfinished([f.task_run_id for f in in_flight])


def crash_unfinished(task_run_ids: list) -> None:
    from prefect import get_client
    from prefect.states import Crashed
    with get_client(sync_client=True) as client:
        for run_id in task_run_ids:
            try:
                state = client.read_task_run(run_id).state
                if state is not None and not state.is_final():
                    client.set_task_run_state(run_id, Crashed(message="the grid was interrupted"), force=True)
            except Exception as e:  # noqa: BLE001 - never created (ObjectNotFound), no API: go on up
                print(f"task run {run_id}: could not check it ended ({type(e).__name__}: {e})")
