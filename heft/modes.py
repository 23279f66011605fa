"""The modes of a run: one table, from which every other view of a mode is derived.

    mode        chain after data -> base        evaluates (evaluation: the stage it scores)
    heft        lora -> merge -> reft           lora: lora, merged: merge, heft: reft
    lora-only   lora -> merge                   lora: lora, merged: merge
    reft-only   reft                            reft: reft
    reft-lora   reft -> lora                    reft: reft, reft-lora: lora
    base        (nothing)                       base: base

Each stage of the chain takes the previous one's artifact as its parent (the first takes the
base model).  In reft-lora the LoRA stage trains with the ReFT stage's intervention attached
and frozen; the merge is not run (the intervention would have to be re-trained on merged
weights).  The last evaluation is the mode's result: the model a run hands out, the accuracy
a grid reports.  The plan (heft/plan.py), the grid's cell identity and labels, the
validation accuracy of a run and the study all read this table; nothing else spells out a
mode's stages.
"""
from __future__ import annotations

from dataclasses import dataclass

TRAINING_STAGES = ("lora", "reft")


@dataclass(frozen=True)
class Mode:
    name: str
    title: str                                   # how reports name the method
    chain: tuple[str, ...]                       # stages after data -> base, each on the one before
    evaluations: tuple[tuple[str, str], ...]     # (evaluation name, stage of the chain it scores)
    short: str = ""                              # how run names say it: 'HEFT 3+1 · stories260K'

    @property
    def trains(self) -> tuple[str, ...]:
        """The training stages of the chain, in order: ('lora', 'reft') for heft."""
        return tuple(s for s in self.chain if s in TRAINING_STAGES)

    @property
    def final(self) -> str:
        """The evaluation whose model and accuracy are the run's result."""
        return self.evaluations[-1][0]

    @property
    def sections(self) -> tuple[str, ...]:
        """The run-config sections whose fields change what this mode computes."""
        return ("model", "task", "data", "eval") + self.chain


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("heft", "HEFT (LoRA->ReFT)", ("lora", "merge", "reft"),
         (("lora", "lora"), ("merged", "merge"), ("heft", "reft")), "HEFT"),
    Mode("lora-only", "LoRA only", ("lora", "merge"), (("lora", "lora"), ("merged", "merge")), "LoRA-only"),
    Mode("reft-only", "ReFT only", ("reft",), (("reft", "reft"),), "ReFT-only"),
    Mode("reft-lora", "ReFT->LoRA", ("reft", "lora"), (("reft", "reft"), ("reft-lora", "lora")),
         "ReFT->LoRA"),
    Mode("base", "untrained base", (), (("base", "base"),), "base"),
)}
