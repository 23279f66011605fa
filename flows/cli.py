"""``heft`` command line: run the flow from a preset with dotted overrides, or a grid.

    heft run --preset deployments/minilm-boolq.yaml reft.layer=4 lora.epochs=2
    heft config --preset deployments/stories-boolq.yaml      # print the resolved config
    heft grid --grid deployments/grids/reft-layers.yaml      # a grid (flow heft-grid)
    heft grid --grid deployments/grids/paper.yaml preset=deployments/stories-boolq.yaml \
        epoch_scale=0.1 seeds=[0,1,2] data.max_train=200     # grid fields, then run overrides
    heft grid --grid deployments/grids/ablation.yaml --list  # print the cells, run nothing
    heft study --study deployments/study/minilm.yaml         # grids + docs/results.md (flow heft-study)
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from contextlib import contextmanager

import yaml

from heft.config import ConfigError
from heft.presets import DEFAULT_PRESET, load_run_config, to_dict
from heft.tracking import open_existing_store


@contextmanager
def services_starting(tracking_uri: str | None = None):
    """Start Prefect's temporary server and import MLflow at the same time.

    Without PREFECT_API_URL, a flow's first API call starts Prefect's temporary server and
    waits for it: about 3 s importing the server's modules, then about 4 s idle while the
    server process boots.  Started here from a thread, that idle time takes MLflow's import
    (about 2 s), the opening of an existing sqlite store (about 1 s) and the flow module's
    import (run by the caller inside the block);
    the thread is joined before the block ends, so the flow finds the server answering.
    Prefect keeps one temporary server per process (``SubprocessASGIServer`` is a singleton,
    the one its ``get_client`` uses); should this start fail, the flow's own start retries
    it and reports the error."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    def start_server():
        try:
            from prefect.server.api.server import SubprocessASGIServer
            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001 - the flow's own start reports it
            pass

    thread = None
    if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        thread = threading.Thread(target=start_server, name="heft-prefect-server", daemon=True)
        thread.start()
    try:
        import mlflow  # noqa: F401 - imported now, used by heft.tracking in the flow
        try:
            if tracking_uri:
                open_existing_store(tracking_uri)
        except Exception:  # noqa: BLE001 - the flow's own first call reports it, in context
            pass
        yield
    finally:
        if thread is not None:
            thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the heft flow"), ("config", "print the resolved config")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", default=DEFAULT_PRESET, help=f"YAML preset (default {DEFAULT_PRESET})")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. reft.layer=4")
    g = sub.add_parser("grid", help="run a grid of pipelines (flow heft-grid)")
    g.add_argument("--grid", default="deployments/grids/reft-layers.yaml", help="grid YAML")
    g.add_argument("--list", action="store_true", help="print the resolved cells and exit")
    g.add_argument("overrides", nargs="*", help="grid fields (seeds=[0,1], epoch_scale=0.1, preset=...) "
                                               "or run-config overrides (reft.rank=8)")
    st = sub.add_parser("study", help="run a study's grids and write its results document (flow heft-study)")
    st.add_argument("--study", default="deployments/study/minilm.yaml", help="study YAML")
    st.add_argument("--results", default=None, help="results file (default: the study's `results:`)")
    st.add_argument("--list", action="store_true", help="print every grid's cells and exit")
    st.add_argument("overrides", nargs="*", help="grid fields or run overrides added to every grid")
    args = parser.parse_args(argv)
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
    with services_starting(cfg.tracking_uri):
        from flows.heft_flow import heft  # Prefect import only when running
    try:
        result = heft(cfg)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["results"], indent=2))
    return 0


def grid_command(args) -> int:
    from heft.grid import expand, load_grid
    try:
        spec = load_grid(args.grid, args.overrides)
        cells = expand(spec)
        if args.list:
            for c in cells:
                print(f"{c.run_name:<40} {c.method:<10} epochs={c.epochs} {c.settings}")
            return 0
        with services_starting(cells[0].config.tracking_uri):
            from flows.grid_flow import heft_grid
        heft_grid(spec=spec)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    return 0


def study_command(args) -> int:
    from heft.grid import expand
    from heft.study import load_study
    try:
        spec = load_study(args.study)
        if args.list:
            for g in spec.grid_specs(args.overrides):
                print(f"# grid {g.name}")
                for c in expand(g):
                    print(f"{c.run_name:<48} {c.method:<10} epochs={c.epochs}")
            return 0
        with services_starting():
            from flows.study_flow import heft_study
        out = heft_study(study=args.study, overrides=args.overrides, results=args.results)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    print(f"results: {out['results']} (MLflow run {out['mlflow_run_id']}, {out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
