"""LoReFT numerics on a tiny in-memory Llama: exact asserts, the AdamW trap, persistence."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from heft.modeling.loreft import Intervention, LoReFT
from heft.modeling.models import transformer_layers
from tiny_models import prompts_of


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_formula_matches_definition():
    torch.manual_seed(0)
    m = LoReFT(16, 4)
    h = torch.randn(5, 16)
    R = m.R.T  # (r, d), orthonormal rows
    W, b = m.learned_source.weight, m.learned_source.bias
    expected = h + (h @ W.T + b - h @ R.T) @ R
    torch.testing.assert_close(m(h), expected)
    assert m.orthonormality_error() < 1e-5


def _train(m, weight_decay, steps=20):
    torch.manual_seed(1)
    h, target = torch.randn(32, 16), torch.randn(32, 16)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        loss = (m(h) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return h


def test_rotation_stays_orthonormal_without_weight_decay():
    m = LoReFT(16, 4)
    h = _train(m, weight_decay=0.0)
    assert m.orthonormality_error() < 1e-4
    assert (m(h) - h).abs().mean() > 1e-3  # the trained intervention still acts


def test_weight_decay_collapses_rotation_trap_is_real():
    """Documents KNOWN-TRAPS: one AdamW step at the default decay zeroes R (householder map),
    which is why heft's trainer uses weight_decay=0.  Fails if torch changes this: revisit then."""
    m = LoReFT(16, 4)
    _train(m, weight_decay=0.01, steps=1)
    assert m.R.abs().max() < 1e-6 and m.orthonormality_error() > 0.99


def test_hook_changes_only_selected_positions(tiny):
    torch.manual_seed(0)
    iv = Intervention(LoReFT(32, 4), layer=1, positions="f1+l1")
    with torch.no_grad():
        iv.loreft.learned_source.bias.fill_(1.0)
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    layers = transformer_layers(tiny)
    seen = []

    def grab(module, args, kwargs):  # the input of block 2 = the (intervened) output of block 1
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = layers[2].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        tiny.model(input_ids=ids, attention_mask=mask)
        with iv.attached(layers):
            iv.set_batch(prompts_of(mask))
            tiny.model(input_ids=ids, attention_mask=mask)
    handle.remove()
    plain, intervened = seen
    changed = (intervened - plain).abs().amax(-1) > 1e-6
    assert changed.tolist() == [[True, False, False, False, False, False, True],
                                [True, False, False, False, True, False, False]]


def test_save_load_bit_identical_and_pyreft_reads_it(tmp_path):
    torch.manual_seed(0)
    m = LoReFT(16, 4)
    h = _train(m, weight_decay=0.0)
    iv = Intervention(m.eval(), layer=2, positions="l1")
    iv.save(tmp_path)
    loaded = Intervention.load(tmp_path)
    assert torch.equal(loaded.loreft.R, m.R) and torch.equal(loaded.loreft(h), m(h))
    assert (loaded.layer, loaded.positions) == (2, "l1")
    pyreft = pytest.importorskip("pyreft")
    from safetensors.torch import load_file
    theirs = pyreft.LoreftIntervention(embed_dim=16, low_rank_dimension=4, dtype=torch.float32)
    theirs.load_state_dict(load_file(str(tmp_path / "intervention.safetensors")))
    torch.testing.assert_close(theirs(h), m(h), rtol=0, atol=1e-6)


def _edited(iv, hidden, mask):
    """The hook's output for one block output ``hidden`` (no model needed)."""
    iv.set_batch(prompts_of(mask))
    return iv._hook(None, (), hidden)


@pytest.mark.parametrize("positions,length", [("f2+l2", 3), ("f3+l3", 2), ("f1+l1", 1), ("l4", 2)])
def test_short_prompts_edit_each_token_once_gradient_by_finite_differences(positions, length):
    """A prompt shorter than first_n + last_n: the overlapping slots are one token.  The
    gradient of a loss through the hook must equal central finite differences (float64);
    writing a token twice would give exactly 2x there."""
    torch.manual_seed(0)
    iv = Intervention(LoReFT(8, 2).double(), layer=0, positions=positions)
    with torch.no_grad():
        iv.loreft.learned_source.bias.normal_()
    width = length + 2  # two padding positions after the row
    hidden = torch.randn(1, width, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1] * length + [0] * 2])
    weights = torch.randn(1, width, 8, dtype=torch.float64)

    def loss(h):
        return (_edited(iv, h, mask) * weights).sum()
    loss(hidden).backward()
    numeric = torch.zeros_like(hidden)
    eps = 1e-6
    for t in range(width):
        for j in range(8):
            plus, minus = hidden.detach().clone(), hidden.detach().clone()
            plus[0, t, j] += eps
            minus[0, t, j] -= eps
            numeric[0, t, j] = (loss(plus) - loss(minus)) / (2 * eps)
    torch.testing.assert_close(hidden.grad, numeric, rtol=1e-6, atol=1e-8)
    # and the forward pass edits exactly the row's selected tokens, padding untouched
    first, last = iv.first_n, iv.last_n
    want = set(range(min(first, length))) | set(range(max(0, length - last), length))
    out = _edited(iv, hidden.detach(), mask)
    changed = (out - hidden.detach()).abs().amax(-1)[0] > 1e-9
    assert set(changed.nonzero().flatten().tolist()) == want
    with torch.no_grad():  # each selected token is LoReFT(h) once, not h + 2 (LoReFT(h) - h)
        torch.testing.assert_close(out[0, sorted(want)], iv.loreft(hidden.detach()[0, sorted(want)]))


def test_left_padded_batches_are_refused_by_scoring_and_located_by_the_intervention():
    """Scoring reads the answer at each row's last position, so a left-padded batch is refused
    there; the intervention takes each prompt's start and length, so left padding (generation)
    puts it on the prompt's own tokens."""
    from heft.data.batching import Encoded, collate, to_device
    enc = Encoded(input_ids=[[5, 6, 7], [5]], token_type_ids=None, labels=[1, 0])
    batch = collate(enc, [0, 1], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]  # heft pads on the right
    left = torch.tensor([[1, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="not right-padded"):  # on its way to the model, read on the CPU
        to_device({"input_ids": batch["input_ids"], "attention_mask": left}, torch.device("cpu"))
    iv = Intervention(LoReFT(8, 2), layer=0, positions="f1+l1")
    iv.set_batch(collate(enc, [0, 1], pad_id=0, left=True))
    assert iv._index.tolist() == [[0, 2], [2, 2]] and iv._valid.tolist() == [[True, True], [True, False]]
