"""A grid as one DAG: every unique step of every cell, once, with what depends on it.

Cells that agree on data, model and LoRA config share those steps by key, so a 9-cell ReFT
layer x dim ablation is 1 data + 1 base + 1 LoRA + 1 merge + 2 evaluations + 9 ReFT + 9
evaluations = 24 steps, not 72.  ``GridPlan`` is computed once from the cells' plans before
anything runs; the grid flow submits each step once, when its parent is done, so independent
branches run at the same time on whatever workers the task runner has.

``estimate`` gives each step a cost in seconds from per-row constants measured on this
project's machine (docs/benchmarks.md: MiniLM, 2 cores), so ``critical_path`` and
``simulate`` (greedy list scheduling on W workers) predict the wall time of a grid before it
runs: the plan's lower bound, against which a measured parallel run is compared.
"""
from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass, field

from heft.config import ConfigError
from heft.fingerprints import Fingerprints
from heft.grids.spec import Cell
from heft.plan import Plan, Step, plan, titled
from heft.run.validate import validate
from heft.store.artifacts import ArtifactStore

# seconds per row, MiniLM-L6 at max_length 256 on 2 cores (bench/stage_profile.py): one LoRA
# epoch, one ReFT epoch, one scoring pass; a merge and the data/base stages are nearly free
SECONDS_PER_ROW = {"lora": 0.076, "reft": 0.045, "evaluate": 0.018}
FIXED_SECONDS = {"data": 1.0, "base": 1.0, "merge": 4.0, "lora": 5.0, "reft": 5.0, "evaluate": 3.0}
GPU_STAGES = ("lora", "merge", "reft", "evaluate")  # the stages that hold a model on a device


def plan_cells(cells: list[Cell], fingerprints: Fingerprints | None = None) -> list[Plan]:
    """Plan every cell (each source read once) and validate each distinct plan once, before
    any cell trains; one MLflow store and one artifact root for the grid."""
    if not cells:
        raise ConfigError("the grid has no cells")
    stores = {(c.config.tracking_uri, c.config.experiment) for c in cells}
    if len(stores) > 1:
        raise ConfigError(f"a grid logs to one MLflow experiment, the cells name {sorted(stores)}")
    roots = {ArtifactStore(c.config.artifact_root).root for c in cells}
    if len(roots) > 1:
        raise ConfigError(f"a grid keeps its artifacts under one root, the cells name {sorted(roots)}")
    fingerprints = fingerprints or Fingerprints()
    plans, checked = [], set()
    for cell in cells:
        try:
            plans.append(plan(cell.config, fingerprints))
            if (identity := tuple(s.key for s in plans[-1].steps)) not in checked:
                validate(plans[-1])
                checked.add(identity)
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell.label!r}: {e}") from None
    return plans


@dataclass
class GridPlan:
    cells: list[Cell]
    plans: list[Plan]
    steps: dict[str, Step] = field(default_factory=dict)     # key -> step, parents first
    users: dict[str, list[int]] = field(default_factory=dict)  # key -> indices of the cells using it

    @classmethod
    def of(cls, cells: list[Cell], plans: list[Plan]) -> "GridPlan":
        """The unique steps of the cells' plans, each named by what tells it apart in this grid
        (``named``); the plans are given those same steps."""
        grid = cls(cells, plans)
        for i, planned in enumerate(plans):
            for step in planned.steps:
                grid.steps.setdefault(step.key, step)
                grid.users.setdefault(step.key, []).append(i)
        grid.steps = grid.named()
        grid.plans = [Plan(p.config, tuple(grid.steps[s.key] for s in p.steps)) for p in plans]
        return grid

    def named(self) -> dict[str, Step]:
        """The steps with the details that tell them apart here: a training step by the fields
        its stage's steps differ in (and its seed: 'reft · layer=1 · seed=0'), an evaluation by
        its cell ('evaluate:heft · HEFT layer=1 seed=0'), or by what it scores when cells share it."""
        varied = {}
        for stage in ("lora", "reft"):
            configs = [s.config for s in self.steps.values() if s.stage == stage]
            varied[stage] = tuple(f.name for f in dataclasses.fields(configs[0]) if f.name != "seed"
                                  and len({repr(getattr(c, f.name)) for c in configs}) > 1) if configs else ()
        cells = {k: self.cells[users[0]].run_name for k, users in self.users.items()
                 if len(users) == 1 and self.steps[k].stage == "evaluate"}
        return titled(list(self.steps.values()), varied, cells)

    def children(self, key: str) -> list[Step]:
        return [s for s in self.steps.values() if s.parent_key == key]

    def shared(self) -> list[Step]:
        """Steps more than one cell needs (built once, before the cells fan out)."""
        return [s for s in self.steps.values() if len(self.users[s.key]) > 1]

    def estimate(self, step: Step, rows: dict[str, int]) -> float:
        """Predicted seconds of ``step`` from its stage, epochs and the data's row counts."""
        per_row = SECONDS_PER_ROW.get(step.stage, 0.0)
        if step.stage in ("lora", "reft"):
            work = step.config.epochs * (rows["train"] * per_row
                                         + rows["valid"] * SECONDS_PER_ROW["evaluate"])
        elif step.stage == "evaluate":
            work = rows["eval"] * per_row
        else:
            work = 0.0
        return FIXED_SECONDS.get(step.stage, 0.0) + work

    def costs(self, rows: dict[str, int], built: set[str] = frozenset()) -> dict[str, float]:
        return {k: 0.0 if k in built else self.estimate(s, rows) for k, s in self.steps.items()}

    def critical_path(self, costs: dict[str, float]) -> tuple[float, list[Step]]:
        """The longest chain of dependent steps: no number of workers runs the grid faster."""
        best: dict[str, tuple[float, list[str]]] = {}
        for key, step in self.steps.items():  # parents come first
            before = best.get(step.parent_key, (0.0, []))
            best[key] = (before[0] + costs[key], before[1] + [key])
        seconds, keys = max(best.values(), key=lambda v: v[0]) if best else (0.0, [])
        return seconds, [self.steps[k] for k in keys]

    def simulate(self, costs: dict[str, float], workers: int) -> float:
        """Wall seconds of greedy list scheduling on ``workers`` identical workers, each step
        started as soon as its parent is done and a worker is free, longest remaining chain
        first (the order a task runner sees ready tasks is close to this)."""
        remaining: dict[str, float] = {}
        for key in reversed(list(self.steps)):  # children before parents
            tail = max((remaining[c.key] for c in self.children(key)), default=0.0)
            remaining[key] = costs[key] + tail
        ready = [(-remaining[k], k) for k, s in self.steps.items() if s.parent_key is None]
        heapq.heapify(ready)
        running: list[tuple[float, str]] = []
        now, free = 0.0, workers
        while ready or running:
            while ready and free:
                _, key = heapq.heappop(ready)
                heapq.heappush(running, (now + costs[key], key))
                free -= 1
            now, key = heapq.heappop(running)
            free += 1
            for child in self.children(key):
                heapq.heappush(ready, (-remaining[child.key], child.key))
        return now

    def describe(self, costs: dict[str, float], built: set[str]) -> list[str]:
        """The lines of ``heft grid --list``: cells, unique steps, built or not, critical path."""
        lines = [f"{len(self.cells)} cells, {sum(len(p.steps) for p in self.plans)} steps in all, "
                 f"{len(self.steps)} unique, {len(built & set(self.steps))} already built", ""]
        for cell, planned in zip(self.cells, self.plans):
            lines.append(f"cell {cell.run_name:<44} {cell.method:<10} epochs={cell.epochs}")
        lines += ["", f"{'step':<18} {'key':<20} {'state':<7} {'cells':>5} {'est. s':>8}"]
        for key, step in self.steps.items():
            state = "built" if key in built else "to run"
            lines.append(f"{step.label:<18} {key:<20} {state:<7} {len(self.users[key]):>5} "
                         f"{costs[key]:>8.0f}")
        seconds, path = self.critical_path(costs)
        lines += ["", f"critical path ({seconds:.0f} s): "
                  + " -> ".join(f"{s.label} {s.key[:8]}" for s in path)]
        lines.append("predicted wall time: " + ", ".join(f"{w} worker{'s' * (w > 1)} "
                                                        f"{self.simulate(costs, w):.0f} s"
                                                        for w in (1, 2, 4, 8)))
        return lines


class Eta:
    """A running grid's time left: the plan's prediction for the steps not done yet (``simulate``
    on the grid's workers), scaled by how long the steps built so far took against their
    prediction (the per-row costs are MiniLM's on 2 cores; another model or machine differs by
    a factor, which the first built steps measure).  None until the data step has given the
    row counts."""

    def __init__(self, steps: list[Step], built: set[str], workers: int) -> None:
        self.grid = GridPlan([], [], {s.key: s for s in steps})
        self.built, self.workers = set(built), max(1, workers)
        self.costs: dict[str, float] | None = None
        self.finished: set[str] = set()
        self.predicted = self.measured = 0.0

    def done(self, step: Step, seconds: float | None, metrics: dict) -> None:
        """``step`` finished; ``seconds`` it took when it was built here (None: found built)."""
        if step.stage == "data" and self.costs is None:
            rows = {s: int(metrics.get(f"n_{s}", 0)) for s in ("train", "valid", "eval")}
            self.costs = self.grid.costs(rows, self.built)
        self.finished.add(step.key)
        if self.costs is not None and seconds is not None and step.key not in self.built:
            self.predicted += self.costs[step.key]
            self.measured += seconds

    def left(self) -> float | None:
        if self.costs is None:
            return None
        remaining = {k: 0.0 if k in self.finished else c for k, c in self.costs.items()}
        speed = self.measured / self.predicted if self.predicted > 5.0 else 1.0
        return self.grid.simulate(remaining, self.workers) * speed
