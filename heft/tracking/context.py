"""What the MLflow runs record about where they came from: the code version and the dataset
(pipeline and grid runs), and the machine's load while a stage that loads a model ran (MLflow
system metrics, on that stage's run)."""
from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """The git commit and dirty flag of the code that runs (MLflow's source tags)."""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "heft"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    try:
        tags["mlflow.source.git.commit"] = git("rev-parse", "HEAD")
        tags["mlflow.source.git.branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        tags["mlflow.source.git.dirty"] = str(dirty).lower()
    except (OSError, subprocess.SubprocessError):
        pass  # an installed package, not a checkout
    return tags


def dataset_input(data_key: str, source: str, eval_source: str, rows: dict[str, int]):
    """The data artifact as an MLflow dataset input: its digest is the data key."""
    import json
    from mlflow.entities import Dataset, DatasetInput, InputTag
    name = Path(source.rstrip("/")).name or source
    ds = Dataset(name=name[:500], digest=data_key[:32], source_type="heft",
                 source=json.dumps({"source": source, "eval_source": eval_source}),
                 profile=json.dumps({f"rows_{k}": v for k, v in rows.items()}))
    return DatasetInput(ds, [InputTag("mlflow.data.context", "train+eval")])


def system_monitor(run_id: str, uri: str):
    """MLflow's system-metrics sampler (CPU, memory, disk, network; GPU with pynvml) for a run
    created through the client; None where it cannot start.  One sample every
    HEFT_SYSTEM_METRICS_SECONDS (10): MLflow publishes a sample only once its interval has
    passed, so a stage shorter than that records none."""
    import os
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        seconds = float(os.environ.get("HEFT_SYSTEM_METRICS_SECONDS", "10"))
        monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, samples_before_logging=1,
                                       tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # noqa: BLE001 - psutil missing, unsupported platform
        return None
