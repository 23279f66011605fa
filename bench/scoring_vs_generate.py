"""Benchmark: heft's batched answer-token scoring vs. generate()-based evaluation.

    .venv/bin/python bench/scoring_vs_generate.py                   # stories260K on BoolQ, ~5 min
    .venv/bin/python bench/scoring_vs_generate.py --rows 1000 --new-tokens 8

Two models, trained here on the shared BoolQ file (stories260K; the LM loss of the answer
token teaches them to answer " true"/" false"):

A. The HEFT model (LoRA -> merge -> LoReFT), evaluated the way pyreft's LoReFT examples
   evaluate BoolQ (examples/loreft/compute_metrics.py with --greedy_decoding): pyreft's
   ReftModel (pyvene) ``generate(intervene_on_prompt=True, max_new_tokens=32,
   do_sample=False)`` on left-padded batches of 4 (its default eval batch), the intervention
   positions shifted by each row's left padding; the answer parsed from the generation.
   The same is also timed at heft's batch size, to separate batching from generation.
B. A merged LoRA model (no intervention), plain Hugging Face ``generate`` at heft's own
   batch size: the cost of generating N tokens alone.

heft's side is always ``heft.evaluate.predict``: one forward per length-grouped,
right-padded batch, the LM head only at each prompt's last token, prediction = the larger
of the " true" / " false" logits.  Prints wall times, ratios, accuracies and agreement.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from heft.store.artifacts import ArtifactStore  # noqa: E402
from heft.modeling.scoring import predict  # noqa: E402
from heft.stages.evaluate import load_for_eval  # noqa: E402
from heft.stages.inputs import StageInputs  # noqa: E402
from heft.run.execute import run_pipeline  # noqa: E402
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
        gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        first = gen[:, width]
        out.append(torch.where(first == answer_ids[1], 1, torch.where(first == answer_ids[0], 0, -1)))
    tok.padding_side = "right"
    return torch.cat(out)


def pyreft_generate(inputs, tok, enc, answer_ids, batch_size: int, new_tokens: int) -> torch.Tensor:
    """pyreft's evaluation path: ReftModel.generate with the intervention on the prompt."""
    import pyreft
    model = inputs.load_weights(0)
    iv = inputs.intervention()
    theirs = pyreft.LoreftIntervention(embed_dim=inputs.hidden_size, low_rank_dimension=iv.loreft.rank,
                                       dtype=torch.float32)
    state = iv.loreft.pyreft_state()
    theirs.load_state_dict(state, strict=False)
    with torch.no_grad():  # the trained orthogonal map, bit for bit (see LoReFT.pyreft_state)
        param = theirs.rotate_layer.parametrizations.weight
        param.original.copy_(state["parametrization.original"])
        param[0].base.copy_(state["parametrization.base"])
    reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations={
        "layer": iv.layer, "component": "block_output", "low_rank_dimension": iv.loreft.rank,
        "intervention": theirs}))
    reft.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(enc), batch_size):
            ids = enc.input_ids[start:start + batch_size]
            width = max(map(len, ids))
            pads = torch.tensor([width - len(x) for x in ids])
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
            mask = (torch.arange(width).expand(len(ids), -1) >= pads[:, None]).long()
            right = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            positions = iv.token_index(pads, right.sum(1))[0].tolist()  # prompts start after the padding
            _, gen = reft.generate({"input_ids": input_ids, "attention_mask": mask},
                                   unit_locations={"sources->base": (None, [positions])},
                                   intervene_on_prompt=True, max_new_tokens=new_tokens, do_sample=False,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            first = gen[:, width]
            out.append(torch.where(first == answer_ids[1], 1, torch.where(first == answer_ids[0], 0, -1)))
    return torch.cat(out)


def report(name: str, seconds: float, base_s: float, preds: torch.Tensor, scored: torch.Tensor,
           labels) -> None:
    parsed = preds >= 0
    print(f"{name:<44} {seconds:7.2f} s  {seconds / base_s:5.1f}x  "
          f"accuracy {(preds == labels).float().mean():.2%}  "
          f"identical to scoring {int((preds == scored).sum())}/{len(preds)}  "
          f"unparsed {int((~parsed).sum())}")


def scored_model(args, work: str, mode: str, stage: str):
    """Train ``mode`` on stories260K; time heft's scoring of the held-out prompts (after a
    warm-up pass).  Returns (inputs, tokenizer, encoded prompts, labels, scored, seconds, model)."""
    cfg = load_run_config("deployments/stories-boolq.yaml", [
        f"artifact_root={work}/{mode}", f"mode={mode}", f"data.max_eval={args.rows}", "data.max_train=800"])
    inputs = StageInputs.of(run_pipeline(cfg)[stage], ArtifactStore(cfg.artifact_root))
    tok = inputs.tokenizer()
    enc = inputs.sequences("eval", tok)
    model, iv = load_for_eval(inputs)
    kw = dict(family=inputs.family, pooling=inputs.model_cfg.pooling, answer_ids=inputs.answer_ids(tok),
              pad_id=tok.pad_token_id, intervention=iv)
    predict(model, enc, args.batch_size, **kw)  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    scored = predict(model, enc, args.batch_size, **kw)
    seconds = time.perf_counter() - t0
    return inputs, tok, enc, torch.tensor(enc.labels), scored, seconds, model


def heft_model(args, work: str) -> None:
    """Part A: the HEFT model, heft scoring vs. pyreft's generate() evaluation."""
    inputs, tok, enc, labels, scored, t_score, _ = scored_model(args, work, "heft", "reft")
    iv = inputs.intervention()
    print(f"A. HEFT model (merged LoRA + LoReFT layer {iv.layer}, {iv.positions}), "
          f"{len(enc)} held-out prompts")
    report(f"heft scoring, batch {args.batch_size}", t_score, t_score, scored, scored, labels)
    for bs in (args.pyreft_batch, args.batch_size):
        t0 = time.perf_counter()
        gen = pyreft_generate(inputs, tok, enc, inputs.answer_ids(tok), bs, args.pyreft_tokens)
        report(f"pyreft generate(max_new_tokens={args.pyreft_tokens}), batch {bs}", time.perf_counter() - t0,
               t_score, gen, scored, labels)


def lora_model(args, work: str) -> None:
    """Part B: a merged LoRA model, heft scoring vs. plain HF generate at the same batch."""
    inputs, tok, enc, labels, scored, t_score, model = scored_model(args, work, "lora-only", "merge")
    t0 = time.perf_counter()
    generated = generate_predictions(model, tok, enc, inputs.answer_ids(tok), args.batch_size,
                                     args.new_tokens)
    t_gen = time.perf_counter() - t0
    print(f"B. merged LoRA model, {len(enc)} held-out prompts")
    report(f"heft scoring, batch {args.batch_size}", t_score, t_score, scored, scored, labels)
    report(f"HF generate(max_new_tokens={args.new_tokens}), batch {args.batch_size}", t_gen, t_score,
           generated, scored, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500, help="held-out prompts to evaluate")
    ap.add_argument("--batch-size", type=int, default=64, help="heft's eval batch (eval.batch_size default)")
    ap.add_argument("--pyreft-batch", type=int, default=4, help="pyreft's examples' eval batch size")
    ap.add_argument("--pyreft-tokens", type=int, default=32, help="pyreft's max_new_tokens for BoolQ")
    ap.add_argument("--new-tokens", type=int, default=32, help="part B's generate() length")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="heft-bench-")
    heft_model(args, work)
    lora_model(args, work)


if __name__ == "__main__":
    main()
