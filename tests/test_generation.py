"""Generation, choice scoring and the continuation loss on a tiny random Llama (no ../shared):
batched = row by row, the intervention on the prompt in the prefill only, choice scores and the
training loss equal to what a hand-written forward pass gives."""
from __future__ import annotations

import pytest
import torch

from heft.data.batching import collate, encode_prompts, encode_sequences
from heft.data.task import Task
from heft.modeling import models
from heft.modeling.generation import generate_tokens
from heft.modeling.loreft import Intervention, LoReFT

PROMPTS = ["is the cat happy today Answer:",
           "Question: is the king sad Answer:",
           "Question: A short story is my friend a bird below the river today Answer:"]
CHOICE = Task("t", "choice", "{question}", "label", choices="choices")
GEN = Task("t", "generate", "{question}", "answer", answer="text", max_new_tokens=6)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    model = models.load_model(str(tiny_llama), "causal-lm").eval()
    return model, models.load_tokenizer(str(tiny_llama), "causal-lm")


def strong_intervention(layer=1, positions="f1+l1", seed=0) -> Intervention:
    """A LoReFT that moves the hidden states a lot (the random init alone barely does)."""
    torch.manual_seed(seed)
    loreft = LoReFT(32, 4)
    with torch.no_grad():
        loreft.learned_source.weight.normal_(0, 2.0)
        loreft.learned_source.bias.normal_(0, 4.0)
    return Intervention(loreft.eval(), layer, positions)


def rows(prompts=PROMPTS):
    return [{"prompt": p} for p in prompts]


def recompute(model, prompt_ids, n, iv, moving=False) -> list[int]:
    """Greedy tokens without a cache: every step runs the whole sequence, the intervention at
    the prompt's positions (``moving``: counted on the growing sequence instead, the bug)."""
    seq = list(prompt_ids)
    layers = models.transformer_layers(model)
    with torch.no_grad(), iv.attached(layers):
        for _ in range(n):
            length = len(seq) if moving else len(prompt_ids)
            iv.set_batch({"prompt_start": torch.tensor([0]), "prompt_len": torch.tensor([length])})
            logits = model(input_ids=torch.tensor([seq])).logits
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt_ids):]


def test_batched_greedy_generation_equals_row_by_row_with_left_padding(llama):
    model, tok = llama
    enc = encode_prompts(rows(), tok, 64)
    assert len({len(ids) for ids in enc.input_ids}) == 3  # prompts of different lengths: real padding
    iv = strong_intervention()
    batched = generate_tokens(model, tok, enc, max_new_tokens=6, batch_size=3, intervention=iv)
    alone = [generate_tokens(model, tok, encode_prompts(rows([p]), tok, 64), max_new_tokens=6, batch_size=1,
                             intervention=iv)[0] for p in PROMPTS]
    assert batched == alone and all(len(t) > 0 for t in batched)
    batch = collate(enc, [0, 1, 2], tok.pad_token_id, left=True)
    assert batch["attention_mask"][:, -1].tolist() == [1, 1, 1]  # every prompt ends in the last column


def test_prefill_only_intervention_with_the_cache_equals_a_recompute_at_the_prompt_positions(llama):
    model, tok = llama
    enc = encode_prompts(rows(), tok, 64)
    iv = strong_intervention()
    got = generate_tokens(model, tok, enc, max_new_tokens=6, batch_size=3, intervention=iv)
    want = [recompute(model, ids, len(g), iv) for ids, g in zip(enc.input_ids, got)]
    assert got == want
    # the test tells the right placement from the wrong ones: positions counted on the growing
    # sequence, or no intervention at all, give other tokens for some prompt
    moving = [recompute(model, ids, len(g), iv, moving=True) for ids, g in zip(enc.input_ids, got)]
    plain = generate_tokens(model, tok, enc, max_new_tokens=6, batch_size=3)
    assert moving != got and plain != got


def test_an_intervention_left_on_during_decoding_changes_the_tokens(llama, monkeypatch):
    """The variant that also intervenes on every decode step (on its one new token, instead of
    clearing after the prefill) gives other tokens: the placement matters and is tested."""
    model, tok = llama
    enc = encode_prompts(rows(), tok, 64)
    iv = strong_intervention(positions="l1")
    right = generate_tokens(model, tok, enc, max_new_tokens=6, batch_size=3, intervention=iv)

    def keep_intervening(self):
        self._index, self._valid = torch.zeros_like(self._index), torch.ones_like(self._valid)
    monkeypatch.setattr(Intervention, "clear", keep_intervening)
    wrong = generate_tokens(model, tok, enc, max_new_tokens=6, batch_size=3, intervention=iv)
    assert wrong != right


@pytest.mark.parametrize("with_iv", [False, True])
def test_choice_scores_equal_per_choice_forward_passes_and_acc_norm_by_hand(llama, with_iv):
    from heft.modeling.answering import Answerer
    model, tok = llama
    data = [{"prompt": "is the cat happy today Answer:", "choices": ["true", "false today", "sad"],
             "label": 0},
            {"prompt": "Question: is my friend a bird Answer:", "choices": ["a bird", "the river"],
             "label": 1}]
    iv = strong_intervention() if with_iv else None
    out = Answerer(model, tok, CHOICE, "causal-lm", intervention=iv).answer(data, batch_size=2)
    layers = models.transformer_layers(model)
    for row, got in zip(data, out):
        want = []
        for choice in row["choices"]:
            head = tok(row["prompt"]).input_ids
            tail = tok(f"{row['prompt']} {choice}").input_ids[len(head):]
            ids = torch.tensor([head + tail])
            with torch.no_grad():
                if iv:
                    with iv.attached(layers):
                        iv.set_batch({"prompt_start": torch.tensor([0]),
                                      "prompt_len": torch.tensor([len(head)])})
                        logits = model(input_ids=ids).logits
                else:
                    logits = model(input_ids=ids).logits
            logp = torch.log_softmax(logits[0].float(), -1)
            want.append(sum(float(logp[len(head) - 1 + j, t]) for j, t in enumerate(tail)))
        assert got["scores"] == pytest.approx(want, abs=1e-5)
        assert got["pred"] == max(range(len(want)), key=want.__getitem__)
        norm = [w / len(" " + c) for w, c in zip(want, row["choices"])]
        assert got["pred_norm"] == max(range(len(norm)), key=norm.__getitem__)


def test_training_loss_is_the_cross_entropy_of_the_target_tokens_and_positions_are_on_the_prompt(llama):
    from heft.modeling.sequences import lm_loss
    model, tok = llama
    data = [{"prompt": "is the cat happy today Answer:", "target": "true today"},
            {"prompt": "Question: is the king a bird Answer:", "target": "false"}]
    enc = encode_sequences(data, tok, GEN, 64, all_choices=False)
    batch = collate(enc, [0, 1], tok.pad_token_id)
    got = lm_loss(model, batch)
    losses = []  # by hand: full logits, cross-entropy at each target token, prompt tokens left out
    for row, ids, plen in zip(data, enc.input_ids, enc.prompt_lengths):
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        for pos in range(plen, len(ids)):
            losses.append(torch.nn.functional.cross_entropy(logits[pos - 1][None], torch.tensor([ids[pos]])))
        assert ids[-1] == tok.eos_token_id and len(ids) - plen == len(tok(f"{row['prompt']} {row['target']}")
                                                                      .input_ids) - plen + 1
    torch.testing.assert_close(got, torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)
    iv = Intervention(LoReFT(32, 4), 1, "f1+l1")
    iv.set_batch(batch)
    assert iv._index.tolist() == [[0, p - 1] for p in enc.prompt_lengths]  # first and last prompt token
    assert all(p < n for p, n in zip(enc.prompt_lengths, map(len, enc.input_ids)))  # not the target's


def test_a_left_padded_prompt_is_intervened_at_its_own_positions(llama):
    model, tok = llama
    enc = encode_prompts(rows(PROMPTS[:2]), tok, 64)
    batch = collate(enc, [0, 1], tok.pad_token_id, left=True)
    iv = Intervention(LoReFT(32, 4), 1, "f1+l1")
    iv.set_batch(batch)
    width = batch["input_ids"].shape[1]
    want = [[width - n, width - 1] for n in map(len, enc.input_ids)]
    assert iv._index.tolist() == want
