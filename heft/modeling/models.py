"""The two model families behind one interface.

* causal-lm (Llama & co.): the prompt ends where the answer starts; an example's two
  class scores are the next-token logits of ' false' and ' true' at its last prompt
  token.  Training minimises the LM loss of the answer token at that same position.
* seq-cls (BERT & co.): a 2-label classification head; scores are its logits.

Either way a batch gives a (B, 2) score matrix, column 1 = "true", so training,
evaluation and both stages share one code path.
"""
from __future__ import annotations

import os
import threading

import torch
from torch import nn

from heft.config import ConfigError, ModelConfig
from heft.data.prompts import ANSWER_CUE, ANSWERS
from heft.modeling.names import resolve_name

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt2", "falcon")
HEAD_MODULES = ("classifier", "score")  # the seq-cls heads of HF models (trained, never LoRA-adapted)

# One model is built at a time in this process.  transformers' from_pretrained swaps
# process-wide state while it builds a model: PreTrainedModel.tie_weights (replaced by a no-op),
# torch's default dtype, torch.nn.init's functions.  Two loads on two threads (the threads
# engine of a grid) interleave those swaps, one thread restores the other's no-op, and from
# then on every load in the process leaves a tied lm_head on the meta device ("Cannot copy out
# of meta tensor", measured on stories260K).  The lock also makes "seed, then build" atomic:
# a fresh head or adapter draws its initial weights from torch's process-wide generator.
# Re-entrant: a stage holds it across load, head and adapter.
LOADING = threading.RLock()


def device() -> torch.device:
    """CUDA when there is one (bf16 presets are meant for it), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_config(name: str, gguf_file: str = ""):
    from transformers import AutoConfig
    path = resolve_name(name)
    try:
        with LOADING:
            return AutoConfig.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as e:
        if os.path.exists(path):
            raise ConfigError(f"model.name={name!r}: this folder holds no loadable model config: {e}") \
                from None
        if path.startswith((".", "/", "~")) or path.count("/") > 1:  # hub ids are 'name' or 'org/name'
            raise ConfigError(f"model.name={name!r}: no such folder") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise ConfigError(f"model.name={name!r}: not a local folder, and the hub has no such model or "
                          f"cannot be reached (HF_HUB_OFFLINE={offline}): {e}") from None


def family_of(cfg: ModelConfig, hf_config=None) -> str:
    if cfg.family != "auto":
        return cfg.family
    hf_config = hf_config or auto_config(cfg.name, cfg.gguf_file)
    archs = hf_config.architectures or []
    if archs:
        return "causal-lm" if any(a.endswith("ForCausalLM") for a in archs) else "seq-cls"
    # no architectures recorded (a config read from a GGUF file): decoder-only model types
    return "causal-lm" if hf_config.model_type in DECODERS else "seq-cls"


def depth_of(hf_config) -> int:
    return int(hf_config.num_hidden_layers)


def load_tokenizer(path: str, family: str, gguf_file: str = ""):
    from transformers import AutoTokenizer
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    with LOADING:
        tok = AutoTokenizer.from_pretrained(resolve_name(path), **kwargs)
    if tok.pad_token is None:  # Llama tokenizers ship without one; padding is masked anyway
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = "right"
    if family == "causal-lm":
        tok.truncation_side = "left"  # keep the question and "Answer:" at the end of long prompts
    return tok


def answer_token_ids(tok) -> tuple[int, int]:
    """Ids of the first token of ' false' and ' true' as they follow 'Answer:' in a prompt.

    Encoding the words alone is wrong for sentencepiece tokenizers (leading '▁' tokens),
    so encode prompt and prompt+answer and take the first new token.
    """
    prefix = tok(ANSWER_CUE, add_special_tokens=False).input_ids
    ids = []
    for label in (False, True):  # column int(label), as the data's labels: 0 = ' false', 1 = ' true'
        full = tok(f"{ANSWER_CUE} {ANSWERS[label]}", add_special_tokens=False).input_ids
        ids.append(full[len(prefix)])
    if ids[0] == ids[1]:
        raise ConfigError(f"tokenizer maps ' false' and ' true' to the same first token {ids[0]}")
    return ids[0], ids[1]


class MeanPoolHead(nn.Module):
    """Replaces BERT's CLS pooler: mean of the last hidden states over real tokens."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def load_model(path: str, family: str, dtype: str = "float32", gguf_file: str = "", seed: int | None = None):
    """Model from a hub id or folder (or a GGUF file in it, de-quantized); seq-cls gets a
    fresh 2-label head if it has none, drawn after ``torch.manual_seed(seed)`` when a seed is
    given.  One load at a time in the process (``LOADING``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    kwargs = {"dtype": TORCH_DTYPES[dtype], **({"gguf_file": gguf_file} if gguf_file else {})}
    with LOADING:
        if seed is not None:
            torch.manual_seed(seed)
        if family == "causal-lm":
            return AutoModelForCausalLM.from_pretrained(resolve_name(path), **kwargs)
        return AutoModelForSequenceClassification.from_pretrained(resolve_name(path), num_labels=2, **kwargs)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The list of blocks (first ModuleList as long as config.num_hidden_layers)."""
    depth = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"no ModuleList of {depth} blocks in {type(model).__name__}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_mask(model: nn.Module, batch: dict) -> torch.Tensor | None:
    """The attention mask to hand the model: None when no row of the batch is padded (read off the
    CPU lengths), else a 4D boolean mask built on the device, as transformers builds it for SDPA.

    Given the 2D mask, transformers reads it on the host (``padding_mask.all()``) to decide whether
    it may drop it and let SDPA run its causal flash kernel: a host sync per forward pass on a GPU.
    heft knows the answer from the CPU batch, so nothing is read back.  Other attention
    implementations get the 2D mask."""
    mask, lengths = batch["attention_mask"], batch.get("length")
    base = unwrap(model)
    if lengths is None or getattr(base.config, "_attn_implementation", None) != "sdpa":
        return mask
    width = mask.shape[1]
    if int(lengths.min()) == width:   # CPU tensor: no padding anywhere
        return None
    keys = mask.bool()[:, None, None, :]
    if base.config.model_type in DECODERS or getattr(base.config, "is_decoder", False):
        return keys & torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
    return keys.expand(-1, 1, width, width).contiguous()


def answer_index(answer_ids, device: torch.device) -> torch.Tensor:
    """The answer token ids as a device tensor (build it once per stage and pass it in: a tuple is
    copied to the device at every call)."""
    if isinstance(answer_ids, torch.Tensor):
        return answer_ids.to(device)
    return torch.tensor(list(answer_ids), device=device)


def class_scores(model: nn.Module, batch: dict, family: str, pooling: str, answer_ids=None) -> tuple:
    """(scores (B, 2), answer logits over the vocabulary (B, V) or None).  ``batch`` comes from
    ``to_device`` (right-padded, checked on the CPU); ``answer_ids`` a tuple or a device tensor."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    base = unwrap(model)
    attention = model_mask(model, batch)
    if family == "causal-lm":
        # Run the decoder and apply the LM head only at each example's last prompt token:
        # right padding puts it at length-1, and computing (B, T, V) logits is wasteful.  The
        # position is computed on the device (indexing with it reads nothing back).
        decoder = getattr(base, base.base_model_prefix)
        hidden = decoder(input_ids=ids, attention_mask=attention).last_hidden_state
        last = mask.sum(1) - 1
        rows = torch.arange(ids.shape[0], device=ids.device)
        vocab_logits = base.get_output_embeddings()(hidden[rows, last])
        return vocab_logits.index_select(1, answer_index(answer_ids, ids.device)), vocab_logits
    if pooling == "mean":
        encoder = getattr(base, base.base_model_prefix)
        hidden = encoder(input_ids=ids, attention_mask=attention,
                         token_type_ids=batch.get("token_type_ids")).last_hidden_state
        pooled = MeanPoolHead()(hidden, mask)
        return base.classifier(base.dropout(pooled) if hasattr(base, "dropout") else pooled), None
    out = model(input_ids=ids, attention_mask=attention, token_type_ids=batch.get("token_type_ids"))
    return out.logits, None


def label_loss(family: str, pooling: str, answer_ids=None):
    """A label task's loss of a (device) batch: the answer token's or the head's cross-entropy.
    The answer ids go to the device once, at the first batch."""
    on_device: dict[torch.device, torch.Tensor] = {}

    def loss(model, batch: dict) -> torch.Tensor:
        ids, dev = answer_ids, batch["input_ids"].device
        if answer_ids is not None:
            if dev not in on_device:
                on_device[dev] = answer_index(answer_ids, dev)
            ids = on_device[dev]
        scores, vocab_logits = class_scores(model, batch, family, pooling, ids)
        return loss_fn(scores, vocab_logits, batch["labels"], ids)
    return loss


def loss_fn(scores: torch.Tensor, vocab_logits, labels: torch.Tensor, answer_ids=None) -> torch.Tensor:
    """Cross-entropy of the gold answer: over the vocabulary for causal LMs (the LM loss of the
    answer token), over the two labels for a classification head."""
    if vocab_logits is not None:
        targets = answer_index(answer_ids, labels.device)[labels.long()]
        return nn.functional.cross_entropy(vocab_logits.float(), targets)
    return nn.functional.cross_entropy(scores.float(), labels.long())
