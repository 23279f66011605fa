"""Tiny random models saved as Hugging Face folders, built offline in a second: a 3-block
Llama (causal LM) and a 2-block BERT (encoder), each with a word-level tokenizer over the
keyword task's words.  They need nothing from ../shared, so the exact tests (keys, merge
equivalence, intervention placement and reload) run on any machine."""
from __future__ import annotations

from pathlib import Path

WORDS = ("is the cat a dog king my friend river bird sun her mom happy sad today short story "
         "question answer true false below an instruction that describes task write response").split()
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>"]
PUNCT = [":", "?", ".", "Answer", "Question", "A"]


def word_tokenizer(folder: Path):
    """A fast word-level tokenizer: ' true' after 'Answer:' is one token, as answer scoring needs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(WORDS + PUNCT)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(str(folder))
    return tok


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    folder.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A BertModel (no task head): heft adds a fresh 2-label head, as for MiniLM."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w.lower() for w in WORDS + PUNCT})
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # the vocabulary as a dict: transformers 5 ignores ``vocab_file`` here and maps every word to [UNK]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(str(folder))
    return folder


def prompts_of(mask):
    """What ``Intervention.set_batch`` reads of a right-padded batch whose rows are all prompt."""
    import torch
    return {"prompt_start": torch.zeros(len(mask), dtype=torch.long), "prompt_len": mask.sum(1)}
