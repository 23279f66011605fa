"""Check a whole run before any work: config, model shape, LoRA targets, data rows, root.

Config values are checked when the dataclasses are built (heft/config.py, presets.py),
and planning (heft/plan.py) has already read the data files and the model folder for
their fingerprints.  What else needs the outside world is checked here, cheaply and
without writing anything:

* the model: its config only (``AutoConfig``), plus an empty skeleton on the *meta*
  device (no weights, no memory) to check ``lora.target_modules`` by module name;
* ReFT layer and low-rank dimension against the model's depth and hidden size;
* the data: every row of every split is read and checked (fields, boolean labels,
  passages in passage format), and the split sizes, unless the data artifact for the
  same content key is already in the store (then it was checked when it was built);
  questions longer than half of model.max_length tokens are counted and reported with the
  rule that will cut them (heft/data/batching.py), by the model's own tokenizer;
* the artifact root: the URL must resolve to a filesystem; a local root's nearest
  existing folder must take a probe file, a remote root a probe object, each deleted at
  once (no folder is created).

When every artifact of the run is already in the store, the run trains nothing and each
artifact was checked when it was built, so only the root is checked: a fully cached rerun
then never imports torch or transformers (seconds of its wall time).

Every error is a ``ConfigError`` whose message starts with the option and its value.
"""
from __future__ import annotations

import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field

from heft.config import ConfigError
from heft.data.sources import split_rows
from heft.run.execute import built
from heft.modes import MODES
from heft.plan import Plan
from heft.store.artifacts import Artifact, ArtifactStore
from heft.store.locks import LeaseLock
from heft.tracking.client import probe

log = logging.getLogger(__name__)


@dataclass
class Checked:
    """What validation found: the steps already built, and the model's shape (None when
    nothing needs building, so the model was not opened)."""
    built: dict[str, Artifact]
    steps: int
    model: dict | None = field(default=None)
    cut_questions: dict[str, int] = field(default_factory=dict)  # split -> questions the rule cuts

    @property
    def all_built(self) -> bool:
        return len(self.built) == self.steps


def model_skeleton(family: str, hf_config):
    """The model's module tree on the meta device: names and shapes, no weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from heft.modeling.models import LOADING
    with LOADING, torch.device("meta"):  # from_config swaps process-wide state as from_pretrained does
        if family == "causal-lm":
            return AutoModelForCausalLM.from_config(hf_config)
        return AutoModelForSequenceClassification.from_config(hf_config)


def check_lora_rank(rank: int, targets: list[str], skeleton) -> None:
    """r <= the smallest dimension of every adapted weight (B A has rank at most that)."""
    dims = [min(m.weight.shape) for n, m in skeleton.named_modules() if n.rsplit(".", 1)[-1] in targets
            and getattr(m, "weight", None) is not None and m.weight.ndim == 2]
    if dims and rank > min(dims):
        raise ConfigError(f"lora.rank={rank}: must be <= {min(dims)}, the smallest dimension of the "
                          f"adapted weights ({', '.join(targets)})")


def check_artifact_root(root: str) -> ArtifactStore:
    """The store for ``root`` once it has taken a probe write; the probe is removed at once."""
    try:
        store = ArtifactStore(root)
    except (ValueError, ImportError, TypeError) as e:  # unknown protocol, malformed URL
        raise ConfigError(f"artifact_root={root!r}: not a usable folder or URL ({e})") from None
    store.clean_scratch()  # scratch of builds killed earlier (the root itself is checked below)
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
    if isinstance(store.locks, LeaseLock):  # several hosts build into this root: the lock server must answer
        try:
            store.locks.ping()
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, auth
            raise ConfigError(f"HEFT_LOCK_URL={store.locks.url!r}: "
                              f"the lock server for artifact_root={root!r} "
                              f"does not answer ({type(e).__name__}: {e})") from None
    probe = f"{store.base.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:  # object stores have no folders: writing and deleting one object leaves nothing
        store.fs.pipe_file(probe, b"ok")
        store.fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - unreachable endpoint, no bucket, no permission
        raise ConfigError(f"artifact_root={root!r}: not reachable or not writable "
                          f"({type(e).__name__}: {e})") from None
    return store


def long_questions(rows: dict[str, list[dict]], tok, max_length: int) -> dict[str, int]:
    """{split: rows whose question the stated rule will cut}, reported before any training:
    before the rule, an encoder failed on such a row mid-stage ("Sequence to truncate too short")."""
    from heft.data.batching import cut_questions, question_cap
    counts = {split: len(cut_questions([r["question"] for r in part], tok, max_length))
              for split, part in rows.items()}
    if any(counts.values()):
        cap = question_cap(max_length)
        log.warning("data: %s row(s) have a question longer than %d tokens (half of model.max_length=%d): "
                    "each is cut to its first %d tokens, then the passage fills the rest "
                    "(heft/data/batching.py)", ", ".join(f"{n} {s}" for s, n in counts.items() if n),
                    cap, max_length, cap)
    return counts


def validate(the_plan: Plan) -> Checked:
    """Check everything that can be checked cheaply before any training starts; write nothing."""
    cfg = the_plan.config
    store = check_artifact_root(cfg.artifact_root)
    probe(cfg.tracking_uri)  # a dead MLflow server fails here, not after the first epoch
    done = built(the_plan, store)
    checked = Checked(done, len(the_plan.steps))
    if checked.all_built:
        return checked
    from heft.modeling import models  # torch and transformers: only when something will be built
    from heft.stages.reft import check_reft_config
    if "base" in done and cfg.model.gguf_file:  # the base stage has de-quantized it: read that copy
        from heft.stages.inputs import StageInputs
        base = done["base"]
        source = (StageInputs.of(base, store).resolve(base.lineage("weights")), "")
    else:
        source = (cfg.model.name, cfg.model.gguf_file)
    hf_config = models.auto_config(*source)  # an unknown model fails here
    family = models.family_of(cfg.model, hf_config)
    depth, hidden = models.depth_of(hf_config), int(hf_config.hidden_size)
    dataset = the_plan["data"].config
    if dataset.task.kind != "label" and family != "causal-lm":
        raise ConfigError(f"task.kind={dataset.task.kind!r}: task {dataset.task.name} scores and trains on "
                          f"answer tokens, and {cfg.model.name} is a {family} model (an encoder with a label "
                          "head, no LM head): use a causal LM, or a label task")
    trains = MODES[cfg.mode].trains
    if "reft" in trains:
        check_reft_config(cfg.reft, depth, hidden)
    # the module-name check builds the model skeleton (about a second on a 6-block model);
    # a finished LoRA artifact for this very config proves the targets matched
    if "lora" in trains and "lora" not in done:
        from heft.stages.lora import target_modules
        skeleton = model_skeleton(family, hf_config)
        check_lora_rank(cfg.lora.rank, target_modules(cfg.lora, skeleton), skeleton)
    if "data" not in done:
        rows, _ = split_rows(dataset.data, dataset.task)
        if dataset.task.kind == "label" and not dataset.task.template and cfg.data.format == "passage" \
                and not source[1]:  # BoolQ's passage prompt; a GGUF tokenizer is counted by the stage
            tok = models.load_tokenizer(source[0], family, source[1])
            checked.cut_questions = long_questions(rows, tok, cfg.model.max_length)
    checked.model = {"family": family, "depth": depth, "hidden_size": hidden}
    return checked
