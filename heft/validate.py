"""Check a whole run before any work: config, model shape, LoRA targets, data rows, root.

Config values are checked when the dataclasses are built (heft/config.py, presets.py);
what needs the outside world is checked here, cheaply and without writing anything:

* the model: its config only (``AutoConfig``), plus an empty skeleton on the *meta*
  device (no weights, no memory) to check ``lora.target_modules`` by module name;
* ReFT layer and low-rank dimension against the model's depth and hidden size;
* the data: every row of every split is read and checked (fields, boolean labels,
  passages in passage format), and the split sizes, unless the data artifact for the
  same content key is already in the store (then it was checked when it was built);
* the artifact root: the URL must resolve to a filesystem; a local root's nearest
  existing folder must take a probe file, a remote root a probe object, each deleted at
  once (no folder is created).

When every artifact of the run is already in the store, the run trains nothing and each
artifact was checked when it was built, so only the root and the data key are checked:
a fully cached rerun then never imports torch or transformers (seconds of its wall time).

Every error is a ``ConfigError`` whose message starts with the option and its value.
"""
from __future__ import annotations

import os
import tempfile
import uuid

from heft.artifacts import ArtifactStore
from heft.config import ConfigError, RunConfig
from heft.data import split_rows
from heft.pipeline import TRAINS, planned_keys


def model_skeleton(family: str, hf_config):
    """The model's module tree on the meta device: names and shapes, no weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    with torch.device("meta"):
        if family == "causal-lm":
            return AutoModelForCausalLM.from_config(hf_config)
        return AutoModelForSequenceClassification.from_config(hf_config)


def check_artifact_root(root: str) -> ArtifactStore:
    """The store for ``root`` once it has taken a probe write; the probe is removed at once."""
    try:
        store = ArtifactStore(root)
    except (ValueError, ImportError, TypeError) as e:  # unknown protocol, malformed URL
        raise ConfigError(f"artifact_root={root!r}: not a usable folder or URL ({e})") from None
    if store.local:
        probe = store.base
        while not os.path.exists(probe):  # the nearest existing folder: nothing is created
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise ConfigError(f"artifact_root={root!r}: {probe} is a file, not a folder")
        try:  # a real probe (os.access says yes to root even on read-only mounts)
            fd, name = tempfile.mkstemp(prefix=".heft-probe-", dir=probe)
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            raise ConfigError(f"artifact_root={root!r}: not writable ({probe}: {e.strerror})") from None
        return store
    probe = f"{store.base.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:  # object stores have no folders: writing and deleting one object leaves nothing
        store.fs.pipe_file(probe, b"ok")
        store.fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - unreachable endpoint, no bucket, no permission
        raise ConfigError(f"artifact_root={root!r}: not reachable or not writable "
                          f"({type(e).__name__}: {e})") from None
    return store


def validate(cfg: RunConfig) -> dict:
    """Check everything that can be checked cheaply before any training starts; write nothing.
    Returns {'family', 'depth', 'hidden_size'}, or {'cached': n} when all n artifacts of the
    run are already built."""
    store = check_artifact_root(cfg.artifact_root)
    # the keys of every stage, data first: its content key also checks the sources exist
    planned = [(stage, key) for stage, key in planned_keys(cfg).values() if stage != "base"]
    missing = {stage for stage, key in planned if store.find(stage, key) is None}
    if not missing:
        return {"cached": len(planned)}
    from heft import models  # torch and transformers: only when something will be built
    from heft.reft import check_reft_config
    hf_config = models.auto_config(cfg.model.name)  # unknown model id/folder fails here
    family = models.family_of(cfg.model, hf_config)
    depth, hidden = models.depth_of(hf_config), int(hf_config.hidden_size)
    if "reft" in TRAINS[cfg.mode]:
        check_reft_config(cfg.reft, depth, hidden)
    # the module-name check builds the model skeleton (about a second on a 6-block model);
    # a finished LoRA artifact for this very config proves the targets matched
    if "lora" in missing:
        from heft.lora import target_modules
        target_modules(cfg.lora, model_skeleton(family, hf_config))
    if "data" in missing:
        split_rows(cfg.data)
    return {"family": family, "depth": depth, "hidden_size": hidden}
