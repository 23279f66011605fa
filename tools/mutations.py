"""Mutation check: break the code on purpose, one change at a time, and see which test fails.

    .venv/bin/python tools/mutations.py                 # all 23 mutations: 7 min on 2 busy cores
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
             "return peft_model.float().merge_and_unload(safe_merge=safe_merge)",
             "return peft_model.float().unload()",
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
    Mutation("left padding accepted", "heft/data/batching.py",
             "    if attention_mask.shape[1] > 1 and", "    if False and",
             ("tests/test_loreft.py::test_left_padded_batches_are_refused_by_scoring_and_located_by_the_"
              "intervention",)),
    Mutation("generation intervenes on every decode step too", "heft/modeling/generation.py",
             "        intervention.clear()                         # decoding steps: the cache "
             "carries the edit",
             "        intervention.set_batch({'prompt_start': torch.zeros(len(idx), dtype=torch.long),"
             " 'prompt_len': torch.ones(len(idx), dtype=torch.long)})",
             ("tests/test_generation.py",)),
    Mutation("prompt positions not shifted by left padding", "heft/modeling/loreft.py",
             "        return relative + starts.reshape(-1, 1), valid", "        return relative, valid",
             ("tests/test_generation.py",)),
    Mutation("the loss covers the prompt's tokens", "heft/data/batching.py",
             "            plens.append(len(head))", "            plens.append(1)",
             ("tests/test_generation.py::test_training_loss_is_the_cross_entropy_of_the_target_tokens_and_"
              "positions_are_on_the_prompt",)),
    Mutation("GSM8K answers read from the first number", "heft/data/answers.py",
             "    return found[-1] if found else None", "    return found[0] if found else None",
             ("tests/test_answers.py",)),
    Mutation("corrupt artifact served", "heft/store/artifacts.py",
             "        if (problem := self.content_problem(art, folder)) is not None:",
             "        if False and (problem := self.content_problem(art, folder)) is not None:",
             ("tests/test_damage.py",)),
    # issue 40: the numbers users read (intervals, paired tests, the champion, the answer's
    # direction) and the checks that only ../shared tests caught before
    Mutation("Wilson interval with z=1.0", "heft/stats.py",
             "def wilson_interval(correct: int, n: int, z: float = 1.96)",
             "def wilson_interval(correct: int, n: int, z: float = 1.0)",
             ("tests/test_stats.py",)),
    Mutation("McNemar counting concordant pairs", "heft/stats.py",
             "    return (sum(x and not y for x, y in zip(right_a, right_b)),\n"
             "            sum(y and not x for x, y in zip(right_a, right_b)))",
             "    return (sum(x and y for x, y in zip(right_a, right_b)),\n"
             "            sum(not x and not y for x, y in zip(right_a, right_b)))",
             ("tests/test_stats.py",)),
    Mutation("seeds compared unpaired", "heft/stats.py",
             "stats.ttest_rel(a, b)", "stats.ttest_ind(a, b)",
             ("tests/test_stats.py",)),
    Mutation("champion by held-out accuracy in the grid report", "heft/grids/verdict.py",
             'best_i = champion([r["valid_mean"] for r in rows])',
             'best_i = champion([r["mean"] for r in rows])',
             ("tests/test_champion.py",)),
    Mutation("champion by held-out accuracy at registration", "flows/grid_flow.py",
             "champion([r.valid_accuracy for r in results])", "champion([r.accuracy for r in results])",
             ("tests/test_champion.py",)),
    Mutation("' true' and ' false' answer tokens swapped", "heft/modeling/models.py",
             "for label in (False, True):", "for label in (True, False):",
             ("tests/test_answer_direction.py::test_zero_shot_evaluation_follows_the_models_own_preference",
              "tests/test_answer_direction.py::test_word_level_tokenizer_of_the_tiny_llama")),
    Mutation("intervention one block too deep at evaluation", "heft/modeling/scoring.py",
             "layers = models.transformer_layers(model) if intervention else None",
             "layers = models.transformer_layers(model)[1:] if intervention else None",
             ("tests/test_reft_tiny.py::test_evaluation_scores_equal_a_forward_with_the_edit_at_the_configured_block",)),
    Mutation("intervention hooked one block too deep", "heft/modeling/loreft.py",
             "self._handle = layers[self.layer].register_forward_hook(self._hook)",
             "self._handle = layers[self.layer + 1].register_forward_hook(self._hook)",
             ("tests/test_reft_tiny.py",)),
    Mutation("AdamW weight decay 0.01 on the rotation", "heft/modeling/training.py",
             "lr=cfg.lr, weight_decay=0.0)", "lr=cfg.lr, weight_decay=0.01)",
             ("tests/test_reft_tiny.py::test_training_keeps_the_rotation_orthonormal_and_the_intervention_alive",)),
    Mutation("merge scaled by alpha instead of alpha/r", "heft/stages/merge.py",
             "    peft_model, _ = load_for_eval(inputs)\n    return",
             "    peft_model, _ = load_for_eval(inputs)\n"
             "    for m in peft_model.modules():\n"
             "        if hasattr(m, 'lora_alpha'):\n"
             "            m.scaling = {k: m.lora_alpha[k] for k in m.scaling}\n"
             "    return",
             ("tests/test_merge_check.py::test_a_correct_merge_passes_its_check",)),
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
