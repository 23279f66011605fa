"""A study: several grids run as one (flow ``heft-study``), analysed into docs/results.md.

A study spec (YAML under deployments/study/) names its grids, the grid fields and run
overrides applied to every one of them (scale: epoch_scale, data.max_train, or a preset
for another model), the derived tasks to build first, and the results file:

    name: minilm-boolq
    grids: [deployments/study/comparison.yaml, deployments/study/ablation.yaml]
    overrides: [epoch_scale=0.25, data.max_train=600]
    derived: [{task: passage-match, source: ..., out: .heft/derived/x.jsonl, seed: 0}]
    results: docs/results.md
    facts: deployments/study/paper.yaml   # main/ablation grids, titles, the paper's figures,
                                          # the comparisons and curves to report (or inline)

``gather`` reads back, from the artifact store, what each finished cell produced (stage
artifacts, held-out predictions, per-epoch histories): the analysis needs no MLflow and no
Prefect, only the cache that the grids filled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from heft.config import ConfigError
from heft.fingerprints import Fingerprints
from heft.grids.spec import Cell, GridSpec, expand, load_grid
from heft.plan import Plan, plan
from heft.presets import read_preset
from heft.run.execute import built
from heft.run.result import validation_accuracy
from heft.store.artifacts import Artifact, ArtifactStore
from study import measured

# the sections of results.md, in order (study/document.py): a study's facts give their headings
SECTIONS = ("recipes", "comparison", "paired", "curves", "ablation", "tasks", "intruders", "flips")
FACTS = ("main", "ablation", "recipes", "titles", "paper", "comparisons", "curves", "title", "sections",
         "paper_model", "reproduce", "open_question")
OPEN_QUESTION_KEYS = ("heading", "grids", "floor", "heft", "match", "beat", "comparisons")
STUDY_FIELDS = ("name", "grids", "overrides", "derived", "results", "facts", "standalone", "measured",
                "only") + FACTS


@dataclass(frozen=True)
class StudySpec:
    name: str
    grids: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    derived: tuple[dict, ...] = ()
    results: str = "docs/results.md"
    standalone: tuple[str, ...] = ()       # grids the study's overrides do not apply to
    measured: tuple[dict, ...] = ()        # bench/gpu_check.py records shown beside the task grids
    main: str = ""                         # grid of the comparison sections (default: the first)
    ablation: str = ""                     # grid of the sensitivity section (optional)
    recipes: str = ""                      # grid of the recipe search (section 0, optional)
    titles: dict = field(default_factory=dict)       # grid name -> section title
    paper: dict = field(default_factory=dict)        # cell label -> the paper's accuracy (%)
    comparisons: tuple = ()                # (a, b, question) rows of the paired table
    curves: tuple = ()                     # labels whose validation curves are drawn
    title: str = ""                        # the document's title
    sections: dict = field(default_factory=dict)     # section -> its numbered heading
    paper_model: str = ""                  # the model the paper's figures are on
    reproduce: tuple[str, ...] = ()        # the Reproduce lines; {make} and {heft} are the commands
    open_question: dict = field(default_factory=dict)  # facts of the open-question section
    only: str = ""                         # 'open_question': write only that section into `results`

    def __post_init__(self):
        if not self.name:
            raise ConfigError("study.name: a study needs a name (it names the MLflow parent run)")
        if not self.grids:
            raise ConfigError(f"study {self.name!r}: grids: needs at least one grid YAML")
        for g in self.grids:
            if not Path(g).is_file():
                raise ConfigError(f"study {self.name!r}: grid {g!r} does not exist")
        measured.load(self.measured)  # a missing or incomplete record fails before any training
        if self.only not in ("", "open_question"):
            raise ConfigError(f"study {self.name!r}: only={self.only!r}: '' (the whole document) or "
                              "'open_question'")
        lacking = [k for k in OPEN_QUESTION_KEYS if k not in self.open_question]
        if (self.open_question or self.only) and lacking:
            raise ConfigError(f"study {self.name!r}: open_question lacks {lacking}")
        missing = [s for s in SECTIONS if not self.sections.get(s)] if not self.only else []
        if (not self.title and not self.only) or missing:
            raise ConfigError(f"study {self.name!r}: its facts need a title and a heading for each section "
                              f"(missing: {['title'] * (not self.title) + missing})")
        for d in self.derived:
            missing = {"task", "source", "out"} - set(d)
            if missing:
                raise ConfigError(f"study {self.name!r}: derived entry {d!r} lacks {sorted(missing)}")

    def grid_specs(self, extra: list[str] = ()) -> list[GridSpec]:
        """Each grid with the study's overrides, except those listed in ``standalone`` (the
        recipe search runs at its own scale; only ``extra``, e.g. a store, applies to it)."""
        return [load_grid(g, (list(extra) if g in self.standalone else list(self.overrides) + list(extra)))
                for g in self.grids]


def load_study(path: str) -> StudySpec:
    values = read_preset(path)
    unknown = sorted(set(values) - set(STUDY_FIELDS))
    if unknown:
        raise ConfigError(f"study {path!r}: unknown key(s) {unknown} (known: {', '.join(STUDY_FIELDS)})")
    if values.get("facts"):  # a shared facts file; the study's own keys win
        facts = read_preset(values["facts"])
        extra = sorted(set(facts) - set(FACTS))
        if extra:
            raise ConfigError(f"facts {values['facts']!r}: unknown key(s) {extra} "
                              f"(known: {', '.join(FACTS)})")
        values = {**facts, **values}
    return StudySpec(name=str(values.get("name", "")), grids=tuple(values.get("grids") or ()),
                     overrides=tuple(values.get("overrides") or ()),
                     derived=tuple(values.get("derived") or ()),
                     results=str(values.get("results") or "docs/results.md"),
                     standalone=tuple(values.get("standalone") or ()),
                     measured=tuple(values.get("measured") or ()),
                     main=str(values.get("main") or ""), ablation=str(values.get("ablation") or ""),
                     recipes=str(values.get("recipes") or ""),
                     titles=dict(values.get("titles") or {}), paper=dict(values.get("paper") or {}),
                     comparisons=tuple(tuple(c) for c in values.get("comparisons") or ()),
                     curves=tuple(values.get("curves") or ()), title=str(values.get("title") or ""),
                     sections=dict(values.get("sections") or {}),
                     paper_model=str(values.get("paper_model") or ""),
                     reproduce=tuple(values.get("reproduce") or ()),
                     open_question=dict(values.get("open_question") or {}),
                     only=str(values.get("only") or ""))


@dataclass
class CellData:
    """One finished cell, read back from the artifact store."""
    cell: Cell
    planned: Plan
    artifacts: dict[str, Artifact]
    store: ArtifactStore
    run_id: str = ""
    _preds: dict = field(default_factory=dict)

    @property
    def final_metrics(self) -> dict:
        """The held-out metrics of the cell's final evaluation."""
        return self.artifacts[self.planned.final.name].metrics

    @property
    def accuracy(self) -> float:
        return self.final_metrics["accuracy"]

    @property
    def valid_accuracy(self) -> float | None:
        return validation_accuracy(self.planned, self.artifacts)

    def predictions(self, evaluation: str | None = None) -> tuple[list[int], list[int]]:
        """(predictions, labels) of one evaluation ('merged', 'heft', ...; default: final); for a
        generate task (1 if right, 0 if wrong) against all 1s, so pairs compare right or wrong."""
        name = (self.planned.evaluations[evaluation] if evaluation else self.planned.final).name
        if name not in self._preds:
            path = self.store.open(self.artifacts[name]) / "predictions.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            rows.sort(key=lambda r: r["index"])
            if rows and "correct" in rows[0]:  # a generate task: right or wrong is what pairs compare
                self._preds[name] = ([int(r["correct"]) for r in rows], [1] * len(rows))
            else:
                self._preds[name] = ([r["pred"] for r in rows], [r["label"] for r in rows])
        return self._preds[name]

    def history(self, stage: str) -> list[dict]:
        """Per-epoch metrics of a training stage of this cell ([] if it has none)."""
        art = self.artifacts.get(stage)
        if art is None:
            return []
        path = self.store.open(art) / "history.json"
        return json.loads(path.read_text()) if path.exists() else []


def gather(spec: GridSpec, run_ids: dict[str, str] | None = None) -> list[CellData]:
    """Every cell of a grid that has run, its artifacts looked up by their planned keys
    (nothing is trained: a missing artifact is an error, the grid is meant to have finished)."""
    out, fingerprints = [], Fingerprints()
    for cell in expand(spec):
        planned = plan(cell.config, fingerprints)
        store = ArtifactStore(cell.config.artifact_root)
        arts = built(planned, store)
        missing = [s.label for s in planned.steps if s.name not in arts]
        if missing:
            raise FileNotFoundError(f"cell {cell.run_name!r}: {', '.join(missing)} not in {store.root}: "
                                    "run the study's grids first")
        out.append(CellData(cell, planned, arts, store, (run_ids or {}).get(cell.run_name, "")))
    return out
