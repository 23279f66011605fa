"""``heft`` command line: run the flow from a preset with dotted overrides.

    heft run --preset deployments/minilm-boolq.yaml reft.layer=4 lora.epochs=2
    heft config --preset deployments/stories-boolq.yaml      # print the resolved config
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from heft.config import ConfigError
from heft.presets import DEFAULT_PRESET, load_run_config, to_dict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the heft flow"), ("config", "print the resolved config")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", default=DEFAULT_PRESET, help=f"YAML preset (default {DEFAULT_PRESET})")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. reft.layer=4")
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.preset, args.overrides)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from flows.heft_flow import heft  # Prefect import only when running
    try:
        result = heft(cfg)
    except ConfigError as e:
        print(f"heft: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["results"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
