"""Benchmark: heft's batched answer-token scoring vs. greedy generate() + parsing.

    .venv/bin/python bench/scoring_vs_generate.py                   # stories260K on BoolQ, ~3 min
    .venv/bin/python bench/scoring_vs_generate.py --rows 1000 --new-tokens 8

The model is a LoRA-trained, merged stories260K (lora-only on the shared BoolQ file; the
LM loss of the answer token teaches it to answer " true"/" false").  Both evaluators see
the same held-out prompts:

* scoring (heft.evaluate.predict): one forward per batch of right-padded, length-grouped
  prompts; the LM head only at each prompt's last token; prediction = the larger of the
  logits of " true" and " false";
* generation (as pyreft's examples evaluate): left-padded batches, greedy
  ``generate(max_new_tokens=N)``, the answer parsed from the first generated token
  (anything other than " true"/" false" counts as a third answer, "other").

Prints both wall times, the ratio, both accuracies and the agreement of the predictions.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from heft.artifacts import ArtifactStore  # noqa: E402
from heft.evaluate import load_for_eval, predict  # noqa: E402
from heft.lineage import StageInputs  # noqa: E402
from heft.pipeline import run_pipeline  # noqa: E402
from heft.presets import load_run_config  # noqa: E402


@torch.no_grad()
def generate_predictions(model, tok, enc, answer_ids, batch_size: int, new_tokens: int) -> torch.Tensor:
    """1 = ' true', 0 = ' false', -1 = anything else, from greedy generation."""
    tok.padding_side = "left"
    out = []
    for start in range(0, len(enc), batch_size):
        ids = enc.input_ids[start:start + batch_size]
        width = max(map(len, ids))
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        first = gen[:, width]
        out.append(torch.where(first == answer_ids[1], 1, torch.where(first == answer_ids[0], 0, -1)))
    tok.padding_side = "right"
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500, help="held-out prompts to evaluate")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=1, help="generate() length (pyreft's examples use more)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="heft-bench-")
    cfg = load_run_config("deployments/stories-boolq.yaml", [
        f"artifact_root={work}/art", "mode=lora-only", f"data.max_eval={args.rows}", "data.max_train=800"])
    store = ArtifactStore(cfg.artifact_root)
    merged = run_pipeline(cfg)["merge"]
    inputs = StageInputs.of(merged, store)
    tok = inputs.tokenizer()
    enc = inputs.encoded("eval", tok)
    model, _ = load_for_eval(inputs)
    answer_ids = inputs.answer_ids(tok)
    labels = torch.tensor(enc.labels)
    kw = dict(family=inputs.family, pooling=inputs.model_cfg.pooling, answer_ids=answer_ids, pad_id=tok.pad_token_id)
    predict(model, enc, args.batch_size, **kw)  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    scored = predict(model, enc, args.batch_size, **kw)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    generated = generate_predictions(model, tok, enc, answer_ids, args.batch_size, args.new_tokens)
    t_gen = time.perf_counter() - t0
    parsed = generated >= 0
    print(f"{len(enc)} held-out prompts, batch {args.batch_size}, generate(max_new_tokens={args.new_tokens})")
    print(f"scoring    {t_score:7.2f} s  accuracy {(scored == labels).float().mean():.2%}")
    print(f"generate() {t_gen:7.2f} s  accuracy {(generated == labels).float().mean():.2%} "
          f"({int((~parsed).sum())} answers neither true nor false)")
    print(f"generate / scoring = {t_gen / t_score:.1f}x")
    agree = (scored[parsed] == generated[parsed]).float().mean() if parsed.any() else float("nan")
    print(f"identical predictions: {int((scored == generated).sum())}/{len(enc)} "
          f"(on parsed answers {agree:.2%})")


if __name__ == "__main__":
    main()
