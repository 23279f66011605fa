"""The HEFT chain as plain Python: which stages run in which mode, and their keys.

``run_pipeline`` takes a ``call(stage, config, parent)`` function so that one
definition of the chain serves both the plain runner (tests, notebooks) and the
Prefect flow, whose ``call`` submits each stage as a cached task.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable

import fsspec

from heft import models
from heft.artifacts import Artifact, ArtifactStore, stage_key
from heft.config import ConfigError, RunConfig
from heft.data import data_key, run_data
from heft.evaluate import run_evaluate
from heft.lineage import base_artifact
from heft.lora import run_lora
from heft.merge import run_merge
from heft.reft import check_reft_config, run_reft

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


def validate(cfg: RunConfig) -> dict:
    """Check everything that can be checked cheaply before any training starts."""
    hf_config = models.auto_config(cfg.model.name)  # unknown model id/folder fails here
    depth, hidden = models.depth_of(hf_config), int(hf_config.hidden_size)
    if "reft" in TRAINS[cfg.mode]:
        check_reft_config(cfg.reft, depth, hidden)
    data_key(cfg.data)  # data source exists and is readable
    fs, base = fsspec.core.url_to_fs(cfg.artifact_root)
    probe = f"{base.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs.makedirs(base, exist_ok=True)
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - any failure means the root is unusable
        raise ConfigError(f"artifact_root={cfg.artifact_root!r}: not writable ({type(e).__name__}: {e})") from None
    return {"family": models.family_of(cfg.model, hf_config), "depth": depth, "hidden_size": hidden}


def direct_call(store: ArtifactStore) -> Call:
    return lambda stage, cfg, parent: STAGES[stage](cfg, parent, store)


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
