"""LoReFT as a forward hook: h <- h + R^T (W h + b - R h) at chosen positions of one block.

Why our own ~100 lines instead of pyreft's ReftModel (measured: docs/design.md, "Decisions"):
  * pyreft 0.1.0 pins transformers==4.45.1; on transformers 5.x its trainer breaks
    (tokenizer=/num_items_in_batch), ``load_intervention`` hard-codes cuda:0, and
    ``ReftModel.load`` rebuilds ``learned_source`` in bfloat16 whatever it was saved in.
  * pyvene's component paths cover decoder LMs, not every encoder; a hook on
    ``transformer_layers(model)[layer]`` works for any architecture with a block list.
The math and the parametrisation are pyreft's: R is an (embed_dim x r) matrix with
orthonormal columns kept by torch's orthogonal parametrisation, and the saved tensors
use ``LoreftIntervention.state_dict()``'s names ("weight", "bias", "rotate_layer"), so
``pyreft.LoreftIntervention.load_state_dict`` reads our files (tests check outputs match).

Numerics: R is orthonormal only as long as its *parametrisation* is left alone by the
optimizer's decay.  AdamW's decoupled weight decay shrinks the unconstrained tensor
behind the householder map; with torch 2.13 one step at weight_decay=0.01 turns R into
zeros and every gradient into exactly 0, silently.  So R is trained with weight_decay=0.

Precision: the intervention is float32 whatever the model's dtype (as pyreft keeps its
rotation in float32).  Measured on a bf16 model: torch has no bf16 ``orgqr`` (the
householder product behind the orthogonal parametrisation), so a bf16 LoReFT cannot even
be built; and AdamW steps of lr 2e-4 on weights of ~1/sqrt(d) are 1-2 bf16 ulps, rounded
away or doubled.  At rank 4 the float32 copy is 2 x 4 x d numbers; the block output is cast
up for the intervention and the result cast back to the model's dtype.
"""
from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from heft.config import parse_positions
from heft.data.batching import host_to_device


class LowRankRotate(nn.Module):
    """x @ R with R (n x r), orthonormal columns (pyreft's LowRankRotateLayer)."""

    def __init__(self, n: int, r: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, r))
        nn.init.orthogonal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.dtype) @ self.weight


class LoReFT(nn.Module):
    def __init__(self, embed_dim: int, rank: int, dropout: float = 0.0):
        super().__init__()
        if not 1 <= rank <= embed_dim:
            raise ValueError(f"reft.rank={rank}: must be in [1, hidden size {embed_dim}]")
        self.embed_dim, self.rank = embed_dim, rank
        self.rotate_layer = nn.utils.parametrizations.orthogonal(LowRankRotate(embed_dim, rank))
        self.learned_source = nn.Linear(embed_dim, rank)
        self.dropout = nn.Dropout(dropout)

    @property
    def R(self) -> torch.Tensor:
        return self.rotate_layer.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        R = self.R
        delta = (self.learned_source(h.to(R.dtype)) - h.to(R.dtype) @ R) @ R.T
        return self.dropout((h + delta).to(h.dtype))

    def orthonormality_error(self) -> float:
        R = self.R.detach().float().cpu()
        return (R.T @ R - torch.eye(self.rank)).abs().max().item()

    # -- persistence: pyreft's tensor names, safetensors, plus a small JSON config ------------
    def pyreft_state(self) -> dict[str, torch.Tensor]:
        """pyreft's three tensors, plus the raw parametrisation (pyreft ignores extra keys).

        R is *computed* from the parametrisation (base @ householder(original)); rebuilding it
        from R alone via right_inverse differs in the last bits, so we also keep the raw
        tensors and reload them as they were: bit-identical outputs after a reload."""
        param = self.rotate_layer.parametrizations.weight
        return {"weight": self.learned_source.weight.detach().contiguous(),
                "bias": self.learned_source.bias.detach().contiguous(),
                "rotate_layer": self.R.detach().contiguous(),
                "parametrization.original": param.original.detach().contiguous(),
                "parametrization.base": param[0].base.detach().contiguous()}

    def load_pyreft_state(self, state: dict[str, torch.Tensor]) -> None:
        param = self.rotate_layer.parametrizations.weight
        with torch.no_grad():
            self.learned_source.weight.copy_(state["weight"])
            self.learned_source.bias.copy_(state["bias"])
            if "parametrization.original" in state:
                param.original.copy_(state["parametrization.original"])
                param[0].base.copy_(state["parametrization.base"])
            else:  # a pyreft file: R only; right_inverse makes weight == R up to rounding
                self.rotate_layer.weight = state["rotate_layer"].to(self.R.dtype)


class Intervention:
    """A LoReFT module attached by forward hook to one block, at positions set per batch."""

    def __init__(self, loreft: LoReFT, layer: int, positions: str):
        self.loreft, self.layer, self.positions = loreft, layer, positions
        self.first_n, self.last_n = parse_positions(positions)
        self._index: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None
        self._handle = None
        self.prefix = None   # a PrefixCache (heft/modeling/prefix.py) in the ReFT stage, else None

    def token_index(self, starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, valid), both (B, first_n + last_n): the first n and the last n tokens of
        each row's prompt, which starts at ``starts`` and has ``lengths`` tokens (right padding:
        starts 0; left padding for generation: starts = the padding; a prompt followed by its
        continuation in training: lengths = the prompt's, so nothing lands on the answer).

        A prompt shorter than first_n + last_n has fewer distinct positions than slots: its
        first and last ranges overlap (or run off the prompt).  Such a slot is marked invalid
        (its position clamped into the prompt, its edit masked out), so every token is edited
        exactly once.  Writing the same position twice would be right in the forward pass but
        would add that token's gradient once per copy (measured 2.000x by finite differences);
        pyreft avoids it the same way, capping n at half the length and padding the rest."""
        lengths = lengths.reshape(-1, 1)
        first = torch.arange(self.first_n).expand(len(lengths), -1)
        last = lengths - self.last_n + torch.arange(self.last_n)
        valid = torch.cat([first < lengths, (last >= self.first_n) & (last >= 0)], dim=1)
        relative = torch.minimum(torch.cat([first, last], dim=1).clamp(min=0), lengths - 1)
        return relative + starts.reshape(-1, 1), valid

    def _hook(self, module, args, output):
        if self._index is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        idx = self._index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        old = hidden.gather(1, idx)
        with torch.autocast(hidden.device.type, enabled=False):  # the intervention's math in float32
            new = self.loreft(old)
        # h + (LoReFT(h) - h) at each valid slot; out of place, so autograd sees both paths
        edit = (new - old) * self._valid.unsqueeze(-1).to(new.dtype)
        hidden = hidden.scatter_add(1, idx, edit.to(hidden.dtype))
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    @contextmanager
    def attached(self, layers: nn.ModuleList):
        """Hook into layers[self.layer] for the duration; re-entrant (inner use is a no-op)."""
        if self._handle is not None:
            yield self
            return
        self._handle = layers[self.layer].register_forward_hook(self._hook)
        try:
            with self.prefix.skipping() if self.prefix else nullcontext():
                yield self
        finally:
            self._handle.remove()
            self._handle, self._index, self._valid = None, None, None

    def set_batch(self, batch: dict, reuse_prefix: bool = True) -> None:
        """Intervene on this batch's prompts (collate's ``prompt_start`` and ``prompt_len``, CPU
        tensors: the positions are computed on the host, then copied once).  With a prefix cache,
        a right-padded batch whose rows are all cached skips the blocks up to this one;
        generation passes ``reuse_prefix=False`` (its prefill must fill the KV cache of every block)."""
        index, valid = self.token_index(batch["prompt_start"], batch["prompt_len"])
        device = self.loreft.R.device
        self._index, self._valid = host_to_device(index, device), host_to_device(valid, device)
        if self.prefix:
            self.prefix.select(batch if reuse_prefix else None)

    def clear(self) -> None:
        """Stop intervening (decoding steps after the prompt's prefill)."""
        self._index = self._valid = None
        if self.prefix:
            self.prefix.select(None)

    def save(self, folder: Path) -> None:
        save_file(self.loreft.pyreft_state(), str(folder / "intervention.safetensors"))
        (folder / "intervention.json").write_text(json.dumps({
            "type": "LoreftIntervention", "embed_dim": self.loreft.embed_dim,
            "low_rank_dimension": self.loreft.rank, "layer": self.layer,
            "component": "block_output", "positions": self.positions,
            "dtype": str(self.loreft.R.dtype).removeprefix("torch.")}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "Intervention":
        spec = json.loads((folder / "intervention.json").read_text())
        state = load_file(str(folder / "intervention.safetensors"))
        loreft = LoReFT(spec["embed_dim"], spec["low_rank_dimension"])
        loreft.load_pyreft_state({k: v.float() for k, v in state.items()})  # float32: see the module doc
        return cls(loreft.eval(), spec["layer"], spec["positions"])
