"""A task: what a row asks and how its answer is judged.  ``resolve`` turns the user's
``TaskConfig`` into one ``Task`` with every field filled in, from the built-in task it names or
from the kind's defaults; the data stage's key hashes that resolved ``Task``, so changing a
built-in's template reruns everything from the data down.

Three kinds:
* ``label``: a yes/no answer, scored at the end of the prompt by the answer words' first
  tokens (a causal LM) or by a 2-label head (an encoder).  BoolQ's prompt reads the question
  and passage (heft/data/prompts.py); a template replaces it.
* ``choice``: one of 2 or more choices; a causal LM scores each by the summed log-probability of
  its tokens after the prompt (lm-evaluation-harness's ``acc``; ``acc_norm`` divides by the
  continuation's length in characters) and trains on the gold choice's tokens only.
* ``generate``: free text; training minimises the LM loss of the target tokens only, evaluation
  decodes greedily and compares the answer read from the generation with the one read from the
  target (heft/data/answers.py).
A continuation (a choice, a target) is appended to the prompt after one space, as
lm-evaluation-harness does ("Answer:" + " 18").
"""
from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass

from heft.config import ConfigError, DataConfig, TaskConfig

QA_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Task:
    """A fully resolved task (the data stage's key hashes these fields)."""
    name: str
    kind: str               # label | choice | generate
    template: str           # '' only for BoolQ's built-in label prompt
    target: str             # field: the boolean (label), gold index (choice), target text (generate)
    choices: str = ""       # choice: the field with the list of choices
    answer: str = ""        # generate: number | text | a regex with one group
    tolerance: float = 1e-4
    max_new_tokens: int = 0
    stop: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        """The row fields the task reads (the template's, then the answer's)."""
        used = template_fields(self.template) if self.template else ("question", "passage")
        return tuple(dict.fromkeys(used + tuple(f for f in (self.choices, self.target) if f)))


# A built-in task: the resolved task, plus its hub dataset (id, configuration) for a user's machine.
BUILTIN: dict[str, tuple[Task, str, str]] = {
    "boolq": (Task("boolq", "label", "", "label"), "google/boolq", ""),
    "gsm8k": (Task("gsm8k", "generate", QA_TEMPLATE, "answer", answer="number", max_new_tokens=256,
                   stop="\n\n"), "openai/gsm8k", "main"),
    "arc-easy": (Task("arc-easy", "choice", QA_TEMPLATE, "label", choices="choices"),
                 "allenai/ai2_arc", "ARC-Easy"),
    "mawps": (Task("mawps", "generate", QA_TEMPLATE, "solution", answer="number", max_new_tokens=24,
                   stop="\n"), "", ""),
}


def mawps_solution(row: dict) -> dict:
    """MAWPS rows with a ``solution`` field, the worked answer a small LM can learn to write:
    the equation's expression, then its value ('X=((27.0-6.0)/7.0)', 3 -> '(27 - 6) / 7 = 3').
    Trained on the bare number, SmolLM2-135M stopped writing the arithmetic it otherwise writes
    and guessed numbers (0 of 50 validation rows right after an epoch, 6% untrained)."""
    equation = str((row.get("lEquations") or [""])[0])
    left, sep, right = equation.partition("=")
    expr = right if left.strip().lower() == "x" else left if right.strip().lower() == "x" else \
        (right if sep else equation)
    expr = re.sub(r"(\d+)\.0\b", r"\1", expr)
    expr = re.sub(r"\s*([-+*/])\s*", r" \1 ", expr).strip()
    while expr.startswith("(") and expr.endswith(")") and balanced(expr[1:-1]):
        expr = expr[1:-1].strip()
    return dict(row, solution=f"{expr} = {row.get('answer')}" if expr else str(row.get("answer", "")))


def balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# rows of a built-in task gain the fields its definition reads (applied when its rows load)
ROW_FIELDS = {"mawps": mawps_solution}
KIND_DEFAULTS = {"label": dict(target="label"), "choice": dict(target="label", choices="choices"),
                 "generate": dict(target="answer", answer="number", max_new_tokens=64, stop="\n\n")}


def template_fields(template: str) -> tuple[str, ...]:
    """The row fields a template names: 'Q: {question} ({year})' -> ('question', 'year')."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"task.template={template!r}: not a template ({e})") from None
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise ConfigError(f"task.template={template!r}: {{{bad[0]}}} is not a field name "
                          "(write a literal brace as {{ or }})")
    return tuple(dict.fromkeys(names))


def render(template: str, row: dict) -> str:
    """The prompt of one row (fields checked beforehand by the data stage)."""
    return template.format_map(row)


def resolve(cfg: TaskConfig) -> Task:
    """The task ``cfg`` names, every field filled; a bad name or combination is refused here."""
    if cfg.name == "custom":
        base = Task(**{"name": "custom", "kind": cfg.kind, "template": "", **KIND_DEFAULTS[cfg.kind]})
    elif cfg.name in BUILTIN:
        base = BUILTIN[cfg.name][0]
    else:
        raise ConfigError(f"task.name={cfg.name!r}: not a built-in task ({', '.join(BUILTIN)}) or 'custom'")
    if cfg.kind and cfg.kind != base.kind and cfg.name != "custom":
        raise ConfigError(f"task.kind={cfg.kind!r}: task {cfg.name} is a {base.kind} task "
                          "(use task.name=custom for your own kind of task)")
    kind = cfg.kind or base.kind
    set_fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                  if f.name not in ("name", "kind") and getattr(cfg, f.name) not in ("", 0)}
    if "tolerance" in set_fields and set_fields["tolerance"] == TaskConfig().tolerance:
        del set_fields["tolerance"]  # the default: the built-in's own stands
    task = dataclasses.replace(base, kind=kind, **set_fields)
    if task.kind != "label" and not task.template:
        raise ConfigError(f"task.template: a {task.kind} task needs a template over its rows' fields, "
                          "e.g. 'Question: {question}\\nAnswer:'")
    if task.template:
        template_fields(task.template)
    if task.kind == "generate":
        from heft.data.answers import check_rule
        check_rule(task.answer)
    if task.kind != "choice" and cfg.choices:
        raise ConfigError(f"task.choices={cfg.choices!r}: only a choice task has choices")
    return task


def hub_source(name: str) -> tuple[str, str]:
    """(hub dataset id, configuration) of a built-in task, ('', '') for others."""
    return BUILTIN[name][1:] if name in BUILTIN else ("", "")


@dataclass(frozen=True)
class Dataset:
    """The data stage's config: the resolved task and where its rows come from (its key hashes
    both, so changing the task reruns everything from the data down)."""
    task: Task
    data: DataConfig


def dataset(task_cfg: TaskConfig, data: DataConfig) -> Dataset:
    """The task resolved and the data source defaulted to the built-in task's hub dataset."""
    task = resolve(task_cfg)
    if not data.source:
        hub, subset = hub_source(task.name)
        if not hub:
            raise ConfigError(f"data.source: task {task.name} has no hub dataset to default to: name a "
                              "folder, a JSONL file or a hub id")
        data = dataclasses.replace(data, source=hub, subset=data.subset or subset)
    elif data.source == hub_source(task.name)[0] and not data.subset:
        data = dataclasses.replace(data, subset=hub_source(task.name)[1])
    if task.kind != "label" and data.format != "passage":
        raise ConfigError(f"data.format={data.format!r}: only BoolQ's label prompt has formats; "
                          f"a {task.kind} task's prompt is task.template")
    return Dataset(task, data)
