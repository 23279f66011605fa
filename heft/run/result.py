"""What one pipeline run gives: the ``RunResult`` that the ``heft`` flow returns, that each cell
of a grid (on threads, Dask or fanned out to a work pool) gives, and that the grid report reads.

Everything in it is derived from the plan and the artifacts the run found or built: the
evaluations by the names the mode gives them (heft/modes.py), the validation accuracy of the
last training stage, and which steps this run built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from heft.plan import Plan
from heft.store.artifacts import Artifact


@dataclass(frozen=True)
class StageRow:
    """One step of a run: its stage, key, Prefect state and whether this run built it."""
    stage: str
    key: str
    state: str      # Completed | Cached
    cache: str      # ran | reused | remote (built by a run elsewhere, read back from the store)
    label: str = ""  # 'lora', 'evaluate:merged'

    @property
    def ran(self) -> bool:
        return self.cache == "ran"


@dataclass(frozen=True)
class RunResult:
    results: dict[str, dict]             # evaluation -> held-out metrics ('heft': {...})
    final: str                           # which evaluation is the run's result
    stages: tuple[StageRow, ...]
    validation_accuracy: float | None    # the last training stage's, after its last epoch
    mlflow_run_id: str = ""
    model: dict = field(default_factory=dict)  # {'uri': 'runs:/...', 'key': <evaluation key>, 'logged'}
    seconds: float = 0.0                 # wall seconds of the steps this run built
    flow_run_id: str = ""
    validation_rows: int = 0             # the rows validation_accuracy is measured on
    data_key: str = ""                   # the data artifact: what the validation rows are

    @property
    def accuracy(self) -> float:
        return self.results[self.final]["accuracy"]

    @property
    def metrics(self) -> dict:
        """The final evaluation's metrics."""
        return self.results[self.final]


def evaluation_results(the_plan: Plan, artifacts: dict[str, Artifact]) -> dict[str, dict]:
    """{evaluation: metrics} of every evaluation of the plan, in plan order."""
    return {name: artifacts[step.name].metrics for name, step in the_plan.evaluations.items()}


def validation_accuracy(the_plan: Plan, artifacts: dict[str, Artifact]) -> float | None:
    """The validation accuracy of the model the run produced: its last training stage's after
    the last epoch (the rows carved out for model selection, never the held-out ones)."""
    step = the_plan.last_trained
    return artifacts[step.name].metrics.get("final_valid_accuracy") if step else None


def built_seconds(artifacts: dict[str, Artifact], rows: list[StageRow]) -> float:
    """Wall seconds of the steps this run built (from their meta.json build times)."""
    total = 0.0
    for art, row in zip(artifacts.values(), rows):
        build = art.meta.get("build", {})
        if row.ran and "started" in build:
            total += build["finished"] - build["started"]
    return total


def run_result(the_plan: Plan, artifacts: dict[str, Artifact], rows: list[StageRow], **extra) -> RunResult:
    """The result of a run of ``the_plan`` whose steps gave ``artifacts`` ({step name: artifact},
    in plan order) as ``rows`` say; ``extra``: mlflow_run_id, model, flow_run_id."""
    data = artifacts.get("data")
    return RunResult(results=evaluation_results(the_plan, artifacts), final=the_plan.mode.final,
                     stages=tuple(rows), validation_accuracy=validation_accuracy(the_plan, artifacts),
                     seconds=built_seconds(artifacts, rows),
                     validation_rows=int(data.metrics.get("n_valid", 0)) if data else 0,
                     data_key=data.key if data else "", **extra)


def summary(the_plan: Plan, artifacts: dict[str, Artifact]) -> str:
    """Accuracy lines with 95% intervals and the held-out majority rate."""
    lines = []
    for name, m in evaluation_results(the_plan, artifacts).items():
        lines.append(f"{name:>9}: accuracy {m['accuracy']:.2%} "
                     f"(95% CI {m['ci95_low']:.2%}-{m['ci95_high']:.2%}, n={m['n']}), "
                     f"held-out majority rate {m['majority_rate']:.2%}")
    return "\n".join(lines)


def row(outcome) -> StageRow:
    """The row of a step that this run found (reused) or built (ran)."""
    step = outcome.step
    return StageRow(step.stage, step.key, outcome.state, "reused" if outcome.reused else "ran", step.label)
