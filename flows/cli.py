"""``heft`` command line: run the flow from a preset with dotted overrides, or a grid.

    heft run --preset deployments/minilm-boolq.yaml reft.layer=4 lora.epochs=2
    heft config --preset deployments/stories-boolq.yaml      # print the resolved config
    heft grid --grid deployments/grids/reft-layers.yaml      # a grid (flow heft-grid)
    heft grid --grid deployments/grids/paper.yaml preset=deployments/stories-boolq.yaml \
        epoch_scale=0.1 seeds=[0,1,2] data.max_train=200     # grid fields, then run overrides
    heft grid --grid deployments/grids/ablation.yaml --list  # print the cells, run nothing
    heft grid --grid deployments/grids/reft-layers.yaml --register heft-boolq   # + Model Registry
    heft study --study deployments/study/minilm.yaml         # grids + docs/results.md (flow heft-study)
    heft predict --model <key|folder|run id|models:/name@champion> --question ... --passage ...
    heft export --model <ref> --to exported/                 # a folder that loads anywhere
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from contextlib import contextmanager

import yaml

from flows import model_cli
from flows.console import grid_summary, run_summary, terminal
from flows.prefect_server import prefect_api
from heft.config import ConfigError
from heft.presets import DEFAULT_PRESET, load_run_config, to_dict
from heft.tracking import open_existing_store


@contextmanager
def services_starting(tracking_uri: str | None = None):
    """Boot Prefect's temporary API server (flows/prefect_server.py) while this process
    imports MLflow and opens an existing store (about 3 s); the caller imports the flow
    module inside the block too, then runs the flow inside the yielded ``serve()``."""
    with prefect_api() as serve:
        try:
            import mlflow  # noqa: F401 - imported now, used by heft.tracking in the flow
            if tracking_uri:
                open_existing_store(tracking_uri)
        except Exception:  # noqa: BLE001 - the flow's own first call reports it, in context
            pass
        yield serve


STOPPED_BY: dict[str, str] = {}  # the signal that stopped the command (for the message at exit)


def stop_on_signals() -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) ends the CLI as Ctrl-C does: the training
    stops between steps (on worker threads too), the MLflow runs are closed KILLED, the Prefect
    runs end Crashed, and the temporary server is stopped at exit after the last states reached
    it.  Either signal is remembered for the message.  A SIGINT the shell set to be ignored (a
    background job) stays ignored."""
    def interrupt(signum, frame):
        STOPPED_BY.setdefault("signal", signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)


def stopped_message() -> str:
    """'heft: stopped by SIGINT during lora (cell HEFT 3+3 seed=0); ...'."""
    from heft.progress import interrupted_during
    how = f" by {STOPPED_BY['signal']}" if "signal" in STOPPED_BY else ""
    during = interrupted_during()
    return (f"heft: stopped{how}{' during ' + ', '.join(during) if during else ''}; "
            "finished stages are kept, a rerun resumes from them")


def main(argv: list[str] | None = None) -> int:
    STOPPED_BY.clear()
    try:
        return command(argv)
    except KeyboardInterrupt:
        print(stopped_message(), file=sys.stderr)
        return 130


def command(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the heft flow"), ("config", "print the resolved config")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", default=DEFAULT_PRESET, help=f"YAML preset (default {DEFAULT_PRESET})")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. reft.layer=4")
        if name == "run":
            output_options(p)
    g = sub.add_parser("grid", help="run a grid of pipelines (flow heft-grid)")
    output_options(g)
    g.add_argument("--grid", default="deployments/grids/reft-layers.yaml", help="grid YAML")
    g.add_argument("--list", action="store_true", help="print the resolved cells and exit")
    g.add_argument("--register", metavar="NAME", help="register the cell with the best validation accuracy "
                                                      "as a new version of NAME (alias champion)")
    g.add_argument("overrides", nargs="*", help="grid fields (seeds=[0,1], epoch_scale=0.1, preset=...) "
                                               "or run-config overrides (reft.rank=8)")
    st = sub.add_parser("study", help="run a study's grids and write its results document (flow heft-study)")
    st.add_argument("--study", default="deployments/study/minilm.yaml", help="study YAML")
    st.add_argument("--results", default=None, help="results file (default: the study's `results:`)")
    st.add_argument("--list", action="store_true", help="print every grid's cells and exit")
    st.add_argument("overrides", nargs="*", help="grid fields or run overrides added to every grid")
    st.add_argument("--verbose", action="store_true",
                    help="also print Prefect's, MLflow's and the libraries' log lines and warnings")
    model_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    stop_on_signals()
    if args.command in ("predict", "export"):  # the answers on stdout, no library chatter on stderr
        with terminal(args.verbose):
            command = model_cli.predict_command if args.command == "predict" else model_cli.export_command
            return command(args)
    if args.command == "grid":
        return grid_command(args)
    if args.command == "study":
        return study_command(args)
    try:
        cfg = load_run_config(args.preset, args.overrides)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    started = time.perf_counter()
    with terminal(args.verbose), services_starting(cfg.tracking_uri) as serve:
        from prefect import tags

        from flows.heft_flow import heft  # Prefect import only when running
        try:
            model = cfg.model.name.rstrip("/").rsplit("/", 1)[-1]
            with serve(), tags("heft", f"mode:{cfg.mode}", f"model:{model}"):
                result = heft(cfg)
        except ConfigError as e:
            print(f"heft: error: {e}", file=sys.stderr)
            return 2
    if args.json:  # for scripts: the held-out results per evaluation, the model
        print(json.dumps({**result.results, "model": result.model}, indent=2))
        return 0
    from heft.tracking.client import experiment_id, ui_url
    exp = experiment_id(cfg.tracking_uri, cfg.experiment)
    links = {"MLflow run": ui_url(cfg.tracking_uri, exp, result.mlflow_run_id),
             "MLflow runs by validation accuracy": ui_url(cfg.tracking_uri, exp)}
    print("\n".join(run_summary(result, time.perf_counter() - started, links)))
    return 0


def output_options(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also print Prefect's, MLflow's and the libraries' log lines and warnings")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for scripts) "
                                                           "instead of the summary table")


def grid_command(args) -> int:
    from heft.grids.spec import expand, load_grid
    from heft.run.execute import StepsFailed
    try:
        spec = load_grid(args.grid, args.overrides)
        cells = expand(spec)
        if args.list:
            print("\n".join(describe_grid(cells)))
            return 0
        with terminal(args.verbose), services_starting(cells[0].config.tracking_uri) as serve:
            from prefect import tags

            from flows.grid_flow import heft_grid
            with serve(), tags("heft", "grid", f"grid:{spec.name}"):
                out = heft_grid(spec=spec, register=args.register)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    except StepsFailed as e:  # each failed step was printed once, with its cells, as it failed
        print(f"heft: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: out[k] for k in ("rows", "best", "report_dir", "mlflow_run_id", "registered")},
                         indent=2, default=str))
    else:
        print("\n".join(grid_summary(out)))
    return 0


def describe_grid(cells) -> list[str]:
    """``heft grid --list``: the cells, the unique steps (built or not), the critical path and
    the predicted wall time on 1-8 workers (no Prefect, nothing run)."""
    from heft.grids.plan import plan_cells
    from heft.data.sources import split_rows
    from heft.run.execute import built
    from heft.store.artifacts import ArtifactStore
    from heft.grids.plan import GridPlan
    grid = GridPlan.of(cells, plan_cells(cells))
    store = ArtifactStore(cells[0].config.artifact_root)
    done = {art.key for p in grid.plans for art in built(p, store).values()}
    data = store.find("data", grid.plans[0]["data"].key)
    if data is not None:
        rows = {s: int(data.metrics[f"n_{s}"]) for s in ("train", "valid", "eval")}
    else:
        dataset = grid.plans[0]["data"].config
        rows = {s: len(r) for s, r in split_rows(dataset.data, dataset.task)[0].items()}
    return grid.describe(grid.costs(rows, done), done)


def study_command(args) -> int:
    from heft.grids.spec import expand
    from heft.run.execute import StepsFailed
    from study.spec import load_study
    try:
        spec = load_study(args.study)
        if args.list:
            for g in spec.grid_specs(args.overrides):
                print(f"# grid {g.name}")
                for c in expand(g):
                    print(f"{c.run_name:<48} {c.method:<10} epochs={c.epochs}")
            return 0
        with terminal(args.verbose), services_starting() as serve:
            from flows.study_flow import heft_study
            with serve():
                out = heft_study(study=args.study, overrides=args.overrides, results=args.results)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    except StepsFailed as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 1
    print(f"results: {out['results']} (MLflow run {out['mlflow_run_id']}, {out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
