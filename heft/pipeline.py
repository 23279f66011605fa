"""The HEFT chain as plain Python: which stages run in which mode, and their keys.

``run_pipeline`` takes a ``call(stage, config, parent)`` function so that one
definition of the chain serves both the plain runner (tests, notebooks) and the
Prefect flow, whose ``call`` submits each stage as a cached task.
"""
from __future__ import annotations

from typing import Any, Callable

from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.config import RunConfig
from heft.data import data_key, run_data
from heft.evaluate import run_evaluate
from heft.lineage import base_artifact
from heft.lora import run_lora
from heft.merge import run_merge
from heft.reft import run_reft

STAGES: dict[str, Callable[..., Artifact]] = {
    "data": lambda cfg, parent, store, **kw: run_data(cfg, store),
    "base": lambda cfg, parent, store, **kw: base_artifact(cfg, parent),
    "lora": run_lora,
    "merge": lambda cfg, parent, store, **kw: run_merge(cfg, parent, store),
    "reft": run_reft,
    "evaluate": lambda cfg, parent, store, **kw: run_evaluate(cfg, parent, store),
}
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
