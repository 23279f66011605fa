"""heft: HEFT fine-tuning (LoRA -> merge -> LoReFT) as a plain library; no Prefect imports.

    heft/config.py      one frozen dataclass per stage: cache keys, MLflow params, CLI options
    heft/modes.py       the table of modes: the stages each chains and evaluates
    heft/plan.py        a run's steps and keys, computed once (Step, Plan, plan)
    heft/run/           validate a plan, run its steps with a runner, the RunResult
    heft/stages/        one stage a file: (config, parent artifact, Context) -> files + Built
    heft/store/         keys, the artifact store, locks, checkpoints
    heft/data/          BoolQ sources and split, prompts, batching
    heft/modeling/      model families, LoReFT, scoring, the training loop
    heft/grids/         grid specs, the grid's DAG of unique steps, its report and diagnostics
    heft/inference/     the trained model out: load, predict, export, MLflow model
tasks/ and flows/ wrap it in Prefect; study/ is an application built on it (docs/results.md).

    import heft
    model = heft.load("<evaluation key, artifact folder, export folder, run id or models:/ URI>")
    model.predict([{"question": "...", "passage": "..."}])
"""


def load(ref: str, root: str | None = None, tracking_uri: str | None = None):
    """The trained model ``ref`` names (heft/inference/load.py), ready for ``predict``."""
    import heft.inference.load  # transformers and torch: only when a model is loaded
    return heft.inference.load.load(ref, root, tracking_uri)
