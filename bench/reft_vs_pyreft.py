"""Benchmark: heft's ReFT training step vs. pyreft's ReftModel (pyvene) on the same batches.

    .venv/bin/python bench/reft_vs_pyreft.py                      # stories260K, ~2 min
    .venv/bin/python bench/reft_vs_pyreft.py --rows 960 --reps 5

pyreft 0.1.0's ``ReftTrainer`` does not run on transformers 5 (it passes ``tokenizer=`` and
rejects ``num_items_in_batch``; ../shared/KNOWN-TRAPS.md), so the reference is pyreft's
model object driven by a plain loop: ``pyreft.get_reft_model`` with one
``LoreftIntervention`` on the block output of the same layer, the same positions (first
and last prompt token, ``unit_locations``), the answer token's LM loss at the last prompt
token, AdamW (weight_decay 0), the same batches, and the same initial intervention (heft's
LoReFT init loaded into pyreft's ``LoreftIntervention``), so both epochs' mean losses are
printed side by side as a check that the two loops do the same work.  heft runs its real ``training.train``
(forward hook LoReFT, LM head only at the last prompt token, per-epoch checkpoint and
MLflow logging).  Runs alternate ``--reps`` times; medians and paired ratios are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import objective, prepare, ratios  # noqa: E402

from heft.modeling import models  # noqa: E402
from heft.data.batching import collate, train_batches  # noqa: E402
from heft.store.checkpoints import EpochCheckpoints  # noqa: E402
from heft.modeling.loreft import Intervention, LoReFT  # noqa: E402
from heft.tracking import Tracker  # noqa: E402
from heft.modeling.training import train  # noqa: E402


def pyreft_epoch(inputs, tok, enc, cfg) -> tuple[float, float]:
    """(seconds, mean training loss) of one epoch through pyreft's ReftModel."""
    import pyreft
    model = inputs.load_weights(cfg.seed)
    model.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the same initial intervention as heft's, in pyreft's layout
    state = LoReFT(inputs.hidden_size, cfg.rank).pyreft_state()
    theirs = pyreft.LoreftIntervention(embed_dim=inputs.hidden_size, low_rank_dimension=cfg.rank,
                                       dtype=torch.float32)
    theirs.load_state_dict(state)
    with torch.no_grad():  # and the same raw coordinates of the orthogonal map, so Adam sees the same problem
        param = theirs.rotate_layer.parametrizations.weight
        param.original.copy_(state["parametrization.original"])
        param[0].base.copy_(state["parametrization.base"])
    reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations={
        "layer": cfg.layer, "component": "block_output", "low_rank_dimension": cfg.rank,
        "intervention": theirs}))
    params = [p for p in reft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    answer_ids = inputs.answer_ids(tok)
    where = Intervention(LoReFT(inputs.hidden_size, cfg.rank), cfg.layer, cfg.positions)  # positions only
    start, total = time.perf_counter(), 0.0
    for idx in train_batches(enc, cfg.batch_size, cfg.seed, 1):
        batch = collate(enc, idx, tok.pad_token_id)
        mask = batch["attention_mask"]
        positions = where.token_index(torch.zeros(len(idx), dtype=torch.long), mask.sum(1))[0].tolist()
        _, out = reft({"input_ids": batch["input_ids"], "attention_mask": mask},
                      unit_locations={"sources->base": (None, [positions])})
        last = mask.sum(1) - 1
        logits = out.logits[torch.arange(len(idx)), last]
        loss = models.loss_fn(logits[:, list(answer_ids)], logits, batch["labels"], answer_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        total += loss.item() * len(idx)
    return time.perf_counter() - start, total / len(enc)


def heft_epoch(inputs, tok, enc, empty, cfg, store, parent, tracker) -> tuple[float, float]:
    model = inputs.load_weights(cfg.seed)
    model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    loreft = LoReFT(inputs.hidden_size, cfg.rank)
    iv = Intervention(loreft, cfg.layer, cfg.positions)
    state = {f"loreft.{n}": t for n, t in loreft.state_dict(keep_vars=True).items()}
    start = time.perf_counter()
    history, _ = train(model, [{"params": list(loreft.parameters())}], objective(inputs, tok, enc), cfg,
          desc="reft", intervention=iv, progress=tracker.progress(),
          checkpoints=EpochCheckpoints(store, "reft", cfg, parent.key), state=state)
    return time.perf_counter() - start, history[0]["train_loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    env = prepare("deployments/stories-boolq.yaml", [f"data.max_train={args.rows}", "data.valid_size=16"])
    cfg, store, base, inputs = env.cfg, env.store, env.base, env.inputs
    tok, enc, empty = env.tok, env.enc, env.empty
    reft = dataclasses.replace(cfg.reft, epochs=1, warmup_ratio=0.0, schedule="constant")
    tracker = Tracker.start(f"sqlite:///{env.work}/mlflow.db", "bench", "reft-vs-pyreft", {})
    tokens = sum(map(len, enc.input_ids))
    print(f"stories260K: {len(enc)} rows, batch {reft.batch_size}, layer {reft.layer}, rank {reft.rank}, "
          f"positions {reft.positions}, {tokens} tokens/epoch")
    ref, ours = [], []
    for rep in range(args.reps):
        # a fresh checkpoint trajectory for heft
        rep_cfg = dataclasses.replace(reft, seed=reft.seed + rep + 1)
        (t_ref, loss_ref), (t_ours, loss_ours) = (
            pyreft_epoch(inputs, tok, enc, rep_cfg),
            heft_epoch(inputs, tok, enc, empty, rep_cfg, store, base, tracker))
        ref.append(t_ref)
        ours.append(t_ours)
        print(f"rep {rep + 1}: pyreft {t_ref:.2f} s (mean loss {loss_ref:.5f}), "
              f"heft {t_ours:.2f} s (mean loss {loss_ours:.5f})")
    r, h = statistics.median(ref), statistics.median(ours)
    paired, minima = ratios(ref, ours)  # time ratio pyreft/heft = throughput ratio heft/pyreft
    print(f"\ntokens/s (median): pyreft {tokens / r:.0f}, heft {tokens / h:.0f}")
    print(f"heft throughput / pyreft: {paired:.2f}x (median of paired ratios), {minima:.2f}x (minima)")


if __name__ == "__main__":
    main()
