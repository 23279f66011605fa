"""Mutation check: break the code on purpose, one change at a time, and see which test fails.

    .venv/bin/python tools/mutations.py                 # every mutation, ~15 min on 2 cores
    .venv/bin/python tools/mutations.py --only "skipped cache lookup"

Each mutation is a textual edit of one file, applied in a scratch copy of the checkout (the
working tree is never touched); the tests named for it then run there (``python -m pytest -x``,
with the copy first on PYTHONPATH so it shadows the editable install).  A mutation is *caught*
when those tests fail.  First the same tests run on the unmutated copy and must pass, so a
"caught" is never a broken test.  The tests named are default-tier tests: the default suite
catches every mutation listed here.  Prints a table: mutation, caught or not, the failing test,
seconds.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("skipped cache lookup", "heft/store/artifacts.py",
             "if (found := self.find(step.stage, step.key)) is not None:", "if False:",
             ("tests/test_behaviour.py::test_a_rerun_calls_no_stage_function",)),
    Mutation("wrong layer at train time", "heft/stages/reft.py",
             "Intervention(loreft, cfg.layer, cfg.positions)", "Intervention(loreft, 0, cfg.positions)",
             ("tests/test_behaviour.py::test_the_trained_intervention_sits_and_acts_at_its_configured_layer",)),
    Mutation("wrong layer at reload", "heft/modeling/loreft.py",
             'return cls(loreft.eval(), spec["layer"], spec["positions"])',
             'return cls(loreft.eval(), max(0, spec["layer"] - 1), spec["positions"])',
             ("tests/test_tiny.py::test_reloaded_intervention_keeps_layer_positions_and_outputs",)),
    Mutation("wrong positions at reload", "heft/modeling/loreft.py",
             'return cls(loreft.eval(), spec["layer"], spec["positions"])',
             'return cls(loreft.eval(), spec["layer"], "l1")',
             ("tests/test_tiny.py::test_reloaded_intervention_keeps_layer_positions_and_outputs",)),
    Mutation("merge without the update", "heft/stages/merge.py",
             "merged = peft_model.merge_and_unload(safe_merge=cfg.safe_merge)",
             "merged = peft_model.unload()",
             ("tests/test_behaviour.py::test_heft_passes_the_threshold_only_through_the_merged_lora",)),
    Mutation("merge that skips its own check", "heft/stages/merge.py",
             "        if relative > TOLERANCE:", "        if False:",
             ("tests/test_merge_check.py",)),
    Mutation("intervention dropped at evaluation", "heft/stages/evaluate.py",
             "return model.eval(), inputs.intervention()", "return model.eval(), None",
             ("tests/test_behaviour.py::test_the_trained_intervention_sits_and_acts_at_its_configured_layer",)),
    Mutation("key ignoring a config field", "heft/store/keys.py",
             'if not f.metadata.get("key", True):',
             'if not f.metadata.get("key", True) or f.name == "layer":',
             ("tests/test_keys.py",)),
    Mutation("validation skipped", "heft/run/validate.py",
             "    store = check_artifact_root(cfg.artifact_root)\n",
             "    return Checked({}, len(the_plan.steps), {'family': '?', 'depth': 0, 'hidden_size': 0})\n",
             ("tests/test_validation.py::test_bad_input_is_refused_before_work",)),
    Mutation("a partial artifact published", "heft/store/artifacts.py",
             "                built = build(tmp)\n",
             "                try:\n                    built = build(tmp)\n"
             "                except Exception:\n                    built = Built()\n",
             ("tests/test_faults.py::test_nan_loss_stops_the_stage_naming_the_step_and_caches_nothing",)),
    Mutation("duplicate positions edited twice", "heft/modeling/loreft.py",
             "valid = torch.cat([first < lengths, (last >= self.first_n) & (last >= 0)], dim=1)",
             "valid = torch.ones(len(lengths), self.first_n + self.last_n, dtype=torch.bool)",
             ("tests/test_loreft.py",)),
    Mutation("left padding accepted", "heft/modeling/loreft.py",
             "    if attention_mask.shape[1] > 1 and", "    if False and",
             ("tests/test_loreft.py::test_left_padded_batches_are_refused_not_mis_scored",)),
    Mutation("corrupt artifact served", "heft/store/artifacts.py",
             "        if (problem := self.content_problem(art, folder)) is not None:",
             "        if False and (problem := self.content_problem(art, folder)) is not None:",
             ("tests/test_damage.py",)),
]


def scratch_copy() -> Path:
    """The checkout's tracked and untracked-not-ignored files, copied to a temporary folder."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    # beside the checkout: the presets name ../shared relative to the project folder
    dest = Path(tempfile.mkdtemp(prefix=".heft-mutant-", dir=ROOT.parent))
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(copy), "HEFT_SHARED": str(ROOT.parent / "shared"),
           "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         cwd=copy, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, flags=re.M)
    detail = failed[0] if failed else out.stdout.strip().splitlines()[-1]
    return out.returncode, detail, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="run only these mutations (by name)")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    copy = scratch_copy()
    try:
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, detail, seconds = run_tests(copy, tests)
        if rc != 0:
            print(f"the unmutated copy fails its tests ({detail}): fix that first")
            return 2
        print(f"unmutated: {len(tests)} test selections pass ({seconds:.0f} s)\n")
        print("| mutation | caught | by | s |\n|---|---|---|---|")
        missed = 0
        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            if m.old not in original:
                print(f"| {m.name} | ? | the code to mutate was not found in {m.path} | |")
                missed += 1
                continue
            target.write_text(original.replace(m.old, m.new))
            try:
                rc, detail, seconds = run_tests(copy, m.tests)
            finally:
                target.write_text(original)
            caught = rc != 0
            missed += not caught
            print(f"| {m.name} | {'yes' if caught else 'NO'} | {detail if caught else '-'} | {seconds:.0f} |",
                  flush=True)
        return 1 if missed else 0
    finally:
        shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
