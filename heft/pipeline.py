"""The HEFT chain as plain Python: which stages run in which mode, and their keys.

``run_pipeline`` takes a ``call(stage, config, parent)`` function so that one
definition of the chain serves both the plain runner (tests, notebooks) and the
Prefect flow, whose ``call`` submits each stage as a cached task.
"""
from __future__ import annotations

from typing import Any, Callable

from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.config import RunConfig
from heft.data import data_key


# The stage modules import torch, transformers and peft (seconds of start-up); a fully
# cached rerun needs none of them, so each is imported when its stage first runs.
def _data(cfg, parent, store, **kw):
    from heft.data import run_data
    return run_data(cfg, store)


def _base(cfg, parent, store, **kw):
    from heft.lineage import base_artifact
    return base_artifact(cfg, parent)


def _lora(cfg, parent, store, **kw):
    from heft.lora import run_lora
    return run_lora(cfg, parent, store, **kw)


def _merge(cfg, parent, store, **kw):
    from heft.merge import run_merge
    return run_merge(cfg, parent, store)


def _reft(cfg, parent, store, **kw):
    from heft.reft import run_reft
    return run_reft(cfg, parent, store, **kw)


def _evaluate(cfg, parent, store, **kw):
    from heft.evaluate import run_evaluate
    return run_evaluate(cfg, parent, store)


STAGES: dict[str, Callable[..., Artifact]] = {"data": _data, "base": _base, "lora": _lora,
                                              "merge": _merge, "reft": _reft, "evaluate": _evaluate}
Call = Callable[[str, Any, "Artifact | None"], Artifact]
# The evaluation that scores what each mode produces (the others are intermediate steps).
FINAL_EVAL = {"heft": "heft", "lora-only": "merged", "reft-only": "reft", "reft-lora": "reft-lora",
              "base": "base"}
TRAINS = {"heft": ("lora", "reft"), "lora-only": ("lora",), "reft-only": ("reft",),
          "reft-lora": ("reft", "lora"), "base": ()}


def trained_epochs(cfg: RunConfig) -> dict[str, int]:
    """{training stage: epochs} for the stages cfg.mode trains, e.g. {'lora': 3, 'reft': 1}."""
    return {stage: getattr(cfg, stage).epochs for stage in TRAINS[cfg.mode]}


def key_of(stage: str, cfg: Any, parent: Artifact | None) -> str:
    """The cache key a stage will have, computable before it runs."""
    return data_key(cfg) if stage == "data" else stage_key(stage, cfg, parent.key)


def planned_keys(cfg: RunConfig) -> dict[str, tuple[str, str]]:
    """{output name: (stage, key)} of everything cfg.mode produces, computed ahead by
    walking the chain with a call that derives each key from its parent's and builds nothing."""
    return {name: (art.stage, art.key) for name, art in run_pipeline(
        cfg, lambda stage, c, parent: Artifact(stage, key_of(stage, c, parent), "", {})).items()}


def run_stage(stage: str, cfg: Any, parent: Artifact | None, store: ArtifactStore, **kw) -> Artifact:
    """Run one stage (or return its finished artifact) under the key's build lock, so two
    runs that need the same artifact at the same time build it once."""
    if stage == "base":  # virtual: nothing is built
        return STAGES[stage](cfg, parent, store, **kw)
    with store.lock(stage, key_of(stage, cfg, parent)):
        return STAGES[stage](cfg, parent, store, **kw)


def direct_call(store: ArtifactStore) -> Call:
    return lambda stage, cfg, parent: run_stage(stage, cfg, parent, store)


def run_pipeline(cfg: RunConfig, call: Call | None = None) -> dict[str, Artifact]:
    """Run the stages of cfg.mode; returns artifacts, the evaluations under 'eval:<what>'.

    heft:      base -> lora -> merge -> reft     (evaluates lora, merged, heft)
    lora-only: base -> lora -> merge             (evaluates lora, merged)
    reft-only: base -> reft                      (evaluates reft)
    reft-lora: base -> reft -> lora, the intervention frozen while LoRA trains
               (evaluates reft, reft-lora; its reft artifact is reft-only's)
    base:      the untrained model               (evaluates base)"""
    call = call or direct_call(ArtifactStore(cfg.artifact_root))
    data = call("data", cfg.data, None)
    base = call("base", cfg.model, data)
    out = {"data": data, "base": base}
    if cfg.mode == "base":
        out["eval:base"] = call("evaluate", cfg.eval, base)
    if cfg.mode in ("heft", "lora-only"):
        out["lora"] = call("lora", cfg.lora, base)
        out["merge"] = call("merge", cfg.merge, out["lora"])
        out["eval:lora"] = call("evaluate", cfg.eval, out["lora"])
        out["eval:merged"] = call("evaluate", cfg.eval, out["merge"])
    if cfg.mode in ("heft", "reft-only", "reft-lora"):
        out["reft"] = call("reft", cfg.reft, out["merge"] if cfg.mode == "heft" else base)
        out["eval:" + ("heft" if cfg.mode == "heft" else "reft")] = call("evaluate", cfg.eval, out["reft"])
    if cfg.mode == "reft-lora":
        out["lora"] = call("lora", cfg.lora, out["reft"])
        out["eval:reft-lora"] = call("evaluate", cfg.eval, out["lora"])
    return out


def summary(out: dict[str, Artifact]) -> str:
    """Accuracy lines with 95% intervals and the held-out majority rate."""
    lines = []
    for name, art in out.items():
        if name.startswith("eval:"):
            m = art.metrics
            lines.append(f"{name[5:]:>9}: accuracy {m['accuracy']:.2%} "
                         f"(95% CI {m['ci95_low']:.2%}-{m['ci95_high']:.2%}, n={m['n']}), "
                         f"held-out majority rate {m['majority_rate']:.2%}")
    return "\n".join(lines)
