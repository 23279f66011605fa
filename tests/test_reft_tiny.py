"""ReFT through the stages on the tiny Llama (no ../shared): the evaluation applies the trained
intervention at its configured block (its scores equal a forward pass written out here, with
the edit at that block's output), and training leaves the rotation orthonormal (AdamW must
not decay it: KNOWN-TRAPS, one decayed step turns R into zeros)."""
from __future__ import annotations

import json

import pytest
import torch

from heft.config import ReftConfig
from heft.modeling.loreft import Intervention
from heft.modeling.models import load_model, load_tokenizer, transformer_layers
from heft.modeling.scoring import predict
from heft.run.execute import run_pipeline
from heft.stages.inputs import StageInputs
from heft.store.artifacts import ArtifactStore

LAYER = 1  # of 3 blocks: an edit one block too deep or too shallow still lands in the model


@pytest.fixture(scope="module")
def reft_run(tiny_config, tmp_path_factory):
    # float32 matmuls (no bf16 autocast on CPUs that have it): the scores are compared exactly
    cfg = tiny_config(tmp_path_factory.mktemp("reft-tiny"), mode="reft-only", model={"autocast": "off"},
                      reft=ReftConfig(epochs=1, lr=1e-2, layer=LAYER, positions="f1+l1", batch_size=16))
    out = run_pipeline(cfg)
    store = ArtifactStore(cfg.artifact_root)
    tok = load_tokenizer(cfg.model.name, "causal-lm")
    enc = StageInputs.of(out["reft"], store).sequences("eval", tok)
    iv = Intervention.load(store.local_path(out["reft"]))
    return cfg, out, store, tok, enc, iv


def hand_scores(model, ids: list[int], loreft, layer: int | None, answer: list[int]) -> list[float]:
    """(false, true) logits of one unpadded prompt, with LoReFT applied by hand to the first and
    last token of block ``layer``'s output (None: no edit)."""
    def edit(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        for t in sorted({0, hidden.shape[1] - 1}):
            hidden[0, t] = loreft(hidden[0, t])
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    handle = model.model.layers[layer].register_forward_hook(edit) if layer is not None else None
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        if handle:
            handle.remove()
    return logits[answer].tolist()


def test_evaluation_scores_equal_a_forward_with_the_edit_at_the_configured_block(reft_run):
    cfg, out, store, tok, enc, iv = reft_run
    assert (iv.layer, iv.positions) == (LAYER, "f1+l1")
    rows = [json.loads(line) for line in open(store.local_path(out["eval:reft"]) / "predictions.jsonl")]
    model = load_model(cfg.model.name, "causal-lm").eval()
    answer = [tok.convert_tokens_to_ids("false"), tok.convert_tokens_to_ids("true")]  # not via heft
    checked = rows[:12]
    elsewhere = {layer: 0.0 for layer in (None, LAYER - 1, LAYER + 1)}
    for row in checked:
        got = [row["score_false"], row["score_true"]]
        want = hand_scores(model, enc.input_ids[row["index"]], iv.loreft, LAYER, answer)
        assert got == pytest.approx(want, abs=1e-5), row["index"]
        for layer in elsewhere:
            other = hand_scores(model, enc.input_ids[row["index"]], iv.loreft, layer, answer)
            elsewhere[layer] = max(elsewhere[layer], max(abs(a - b) for a, b in zip(got, other)))
    # the comparison can tell the blocks apart: no edit, or the edit one block off, scores otherwise
    assert min(elsewhere.values()) > 1e-3, elsewhere


def test_at_evaluation_the_hook_edits_the_output_of_its_block_and_nothing_before(reft_run):
    """Read off the live model while ``predict`` (evaluation's scorer) runs: the input of block
    LAYER (= block LAYER-1's output) is untouched, the input of block LAYER+1 is edited."""
    cfg, out, store, tok, enc, iv = reft_run
    model = load_model(cfg.model.name, "causal-lm").eval()
    layers = transformer_layers(model)
    seen: dict[int, list[torch.Tensor]] = {}
    handles = [layer.register_forward_pre_hook(
        lambda m, args, kwargs, i=i: seen.setdefault(i, []).append(
            (args[0] if args else kwargs["hidden_states"]).clone()), with_kwargs=True)
        for i, layer in enumerate(layers)]
    first = type(enc)(enc.input_ids[:1], None, enc.labels[:1])  # one row: one forward pass each
    kwargs = dict(family="causal-lm", pooling="cls", answer_ids=(0, 1), pad_id=tok.pad_token_id)
    try:
        predict(model, first, 1, **kwargs)
        predict(model, first, 1, intervention=iv, **kwargs)
    finally:
        for h in handles:
            h.remove()
    for i in range(len(layers)):
        plain, edited = seen[i]
        assert torch.equal(plain, edited) == (i <= LAYER), f"input of block {i}"
    changed = (seen[LAYER + 1][1] - seen[LAYER + 1][0]).abs().amax(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [0, len(enc.input_ids[0]) - 1]  # f1+l1 only


def test_training_keeps_the_rotation_orthonormal_and_the_intervention_alive(reft_run):
    cfg, out, store, tok, enc, iv = reft_run
    metrics = out["reft"].metrics
    assert metrics["rotation_orthonormality_error"] < 1e-4  # a decayed R is all zeros: error 1
    assert iv.loreft.R.abs().max() > 0.1
    assert metrics["intervention_mean_abs_score_change"] > 1e-3  # a dead intervention moves nothing
