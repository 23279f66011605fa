"""What the ``heft`` command prints: one line per event that matters, then a summary table.

The events are heft's own (``heft.events``, heft/progress.py: a stage started, an epoch with its
loss and validation accuracy, a stage done with its seconds, a step found cached, a grid's
steps done and its ETA, step lines off a terminal), printed with the time, above tqdm's bars on
a terminal.  Kept out by default, back with ``--verbose``: Prefect's INFO lines (every task run
begins and finishes; the run log in the UI keeps them), MLflow's INFO lines (system metrics
started and stopped, database set-up), the libraries' progress bars (loading weights, writing
shards, downloading artifacts) and the warnings seen on every run that say nothing about it
(``HARMLESS``).  Warnings and errors that matter still print.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from heft.grids.verdict import constant_answer
from heft.progress import EVENTS, duration

# warnings every run prints that say nothing about the run (category, start of the message)
HARMLESS = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),      # transformers 5, inside peft
    (UserWarning, r"Add type hints to the `predict` method"),          # MLflow, our pyfunc model
    (UserWarning, r'Field name "register" in "Heft_GridModel" shadows'),  # pydantic, flow parameter
]
HARMLESS_LOGS = [r"Passing a Python object as `python_model` causes it to be serialized using CloudPickle"]
QUIET_ENV = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",  # Prefect's console: warnings and errors only
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",                  # transformers' loading/writing bars
    "TRANSFORMERS_VERBOSITY": "error",                    # its load reports
}


class Lines(logging.Handler):
    """Event lines on stderr, written above any progress bar tqdm draws there."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - a closed stream must not fail the run
            self.handleError(record)


class DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(re.search(p, record.getMessage()) for p in HARMLESS_LOGS)


@contextmanager
def terminal(verbose: bool = False) -> Iterator[None]:
    """The command's output for the block: event lines, and (unless ``verbose``) the chatter
    kept out.  Everything set here is undone at the end (tests run the command in-process)."""
    lines = Lines()
    lines.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    level, propagate = EVENTS.level, EVENTS.propagate
    EVENTS.setLevel(logging.INFO)
    if verbose:  # Prefect's console prints the events with everything else
        try:
            yield
        finally:
            EVENTS.setLevel(level)
        return
    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    EVENTS.addHandler(lines)
    EVENTS.propagate = False  # not printed twice by Prefect's console
    mlflow_logger, pyfunc = logging.getLogger("mlflow"), logging.getLogger("mlflow.pyfunc")
    mlflow_level, harmless = mlflow_logger.level, DropHarmless()
    mlflow_logger.setLevel(logging.WARNING)  # MLflow imported already: its level is set
    pyfunc.addFilter(harmless)  # where the CloudPickle warning is logged (imported later or not)
    consoles = prefect_consoles()
    for handler in consoles:  # Prefect's logging configured already (in-process callers)
        handler.setLevel(logging.WARNING)
    bars = library_bars(False)
    # a harmless warning is dropped where it is shown, not by a filter: MLflow swaps the filters
    # for its own around the call that warns (simplefilter("once") in filter_user_warnings_once)
    show = warnings.showwarning

    def shown(message, category, filename, lineno, file=None, line=None):
        if not any(issubclass(category, c) and re.search(p, str(message)) for c, p in HARMLESS):
            show(message, category, filename, lineno, file, line)
    warnings.showwarning = shown
    try:
        yield
    finally:
        warnings.showwarning = show
        EVENTS.removeHandler(lines)
        EVENTS.setLevel(level)
        EVENTS.propagate = propagate
        mlflow_logger.setLevel(mlflow_level)
        pyfunc.removeFilter(harmless)
        for handler in set(consoles) | set(prefect_consoles()):
            handler.setLevel(logging.NOTSET)
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        if bars:
            library_bars(True)


def library_bars(on: bool) -> bool:
    """Turn the Hugging Face libraries' progress bars on or off where they are imported already
    (their environment variables are read at import); whether any was."""
    changed = False
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
        (enable_progress_bars if on else disable_progress_bars)()
        changed = True
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
        changed = True
    return changed


def prefect_consoles() -> list[logging.Handler]:
    """Prefect's console handlers on the root logger, if Prefect has set up logging."""
    if "prefect.logging.handlers" not in sys.modules:
        return []
    from prefect.logging.handlers import PrefectConsoleHandler
    return [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def answers(rate: float | None) -> str:
    answer = constant_answer(rate)
    return f"always {answer} (constant)" if answer else "varied"


def run_summary(result, seconds: float, links: dict[str, str]) -> list[str]:
    """The end of ``heft run``: each evaluation's held-out accuracy, the run's model marked ★."""
    rows = []
    for name, m in result.results.items():
        star = " ★" if name == result.final else ""
        rows.append([name + star, f"{m['accuracy']:.2%}", f"{m['ci95_low']:.2%}-{m['ci95_high']:.2%}",
                     str(m["n"]), f"{m['majority_rate']:.2%}", answers(m.get("predicted_true_rate"))])
    lines = table(["evaluation", "held-out", "95% CI", "n", "majority", "answers"], rows)
    built = sum(s.ran for s in result.stages)
    valid = (f"validation {result.validation_accuracy:.2%} of {result.validation_rows} rows; "
             if result.validation_accuracy is not None else "")
    lines.append(f"★ the run's model: {valid}{len(result.stages)} steps, {built} built, "
                 f"{len(result.stages) - built} cached, {duration(seconds)}")
    key = result.model.get("key", "")
    lines.append(f"model {key} ({result.model.get('uri', '')}): heft predict --model {key} --question ...")
    lines += [f"{text}: {url}" for text, url in links.items()]
    return lines


def grid_summary(out: dict) -> list[str]:
    """The end of ``heft grid``: a row per cell, best validation marked, the verdict, the links."""
    best = out["best"]
    rows = []
    for r in out["rows"]:
        valid = "-" if r["valid_mean"] is None else f"{r['valid_mean']:.2%}"
        valid += " ★" if r["label"] == best["label"] else ""
        spread = f" ± {r['std']:.2%}" if len(r["accuracies"]) > 1 else ""
        interval = f"{r['ci95_low']:.2%}-{r['ci95_high']:.2%}"
        rows.append([r["title"], valid, f"{r['mean']:.2%}{spread}", interval,
                     f"always {r['constant']} (constant)" if r["constant"] else "varied",
                     f"{r['ran']}/{r['cached']}"])
    lines = table(["cell", "validation", "held-out", "95% CI", "answers", "built/cached"], rows)
    majority = out["rows"][0]["majority_rate"]
    lines.append(f"★ best by validation: {best['pick']}")
    lines.append(f"held-out majority rate {majority:.2%}")
    if best["constant"]:
        lines.append(f"constant predictors (one answer on every held-out row): {', '.join(best['constant'])}")
    if out.get("registered"):
        reg = out["registered"]
        lines.append(f"registered version {reg['version']} as {reg['alias']}: {reg['why']}")
    lines.append(f"report: {out['report_dir']}/report.md ({duration(out['seconds'])})")
    lines += [f"{text}: {url}" for text, url in out.get("links", {}).items()]
    return lines
