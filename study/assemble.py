"""Assemble a finished study into results.md, its PNGs and the metrics logged to MLflow."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import torch

from heft.config import flat_params
from study import document, measured, open_question, tables, verdicts
from heft.grids.spec import GridSpec
from study.spec import CellData, StudySpec, gather

def metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits and _ - . / : and spaces."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def lora_targets(cfg) -> str:
    return ", ".join(cfg.lora.target_modules) or "the per-architecture default modules"


def setup_lines(spec: StudySpec, main: list[CellData], wall_s: float, tracking: str) -> list[str]:
    """The setup, read off the configs and artifacts of the cells (nothing assumed)."""
    first = main[0]
    cfg, lineage = first.cell.config, first.artifacts["base"].meta["lineage"]
    n = first.artifacts["data"].metrics  # row counts of the split the data stage wrote
    m = first.final_metrics
    record = json.loads((first.store.open(first.artifacts["data"]) / "split.json").read_text())
    precision = lineage["model_config"]["autocast"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if record["resplit"]:
        data = (f"`{cfg.data.source}` re-split with split_seed {cfg.data.split_seed}: {n['n_train']:.0f} "
                f"training, {n['n_valid']:.0f} validation and {n['n_eval']:.0f} held-out rows")
    else:
        data = (f"trained on `{record['sources']['train']}` ({n['n_train']:.0f} rows, {n['n_valid']:.0f} "
                f"carved out for validation with split_seed {cfg.data.split_seed}), evaluated on all "
                f"{n['n_eval']:.0f} rows of `{record['sources']['eval']}`")
    schedules = sorted({c.cell.config.lora.schedule for c in main}
                       | {c.cell.config.reft.schedule for c in main})
    return [f"- Model: `{cfg.model.name}` ({lineage['family']}, {lineage['depth']} blocks), max_length "
            f"{cfg.model.max_length}, weights {cfg.model.dtype}, matmuls "
            f"{'in bf16 autocast' if precision == 'bfloat16' else 'in ' + cfg.model.dtype} on {device} "
            f"({os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads).",
            f"- Data ({cfg.data.format} format): {data}; held-out majority rate "
            f"{100 * m['majority_rate']:.2f}%.",
            f"- LoRA r={cfg.lora.rank}, alpha={cfg.lora.alpha} on {lora_targets(cfg)}, "
            f"lr {cfg.lora.lr} "
            f"(head {cfg.lora.head_learning_rate}); LoReFT layer {cfg.reft.layer}, rank {cfg.reft.rank}, "
            f"positions {cfg.reft.positions}, lr {cfg.reft.lr}; batch {cfg.lora.batch_size}; "
            f"{' and '.join(schedules)} learning-rate schedule.",
            f"- Scale: study overrides `{' '.join(spec.overrides)}`. Labels name the paper's epochs; the "
            "'epochs trained' column says what ran.",
            f"- Seeds: {sorted({c.cell.seed for c in main})} (initialisation, dropout and batch order; "
            "the split is fixed).",
            f"- Study wall time this run: {wall_s:.0f} s (cached stages are not retrained). "
            f"MLflow: `{tracking}`, experiment `{cfg.experiment}`, one parent run `study: {spec.name}` "
            "with one nested run per grid and per cell. Generated " + time.strftime("%Y-%m-%d") + "."]


# What a recipe of the search is: the LoRA fields and the pooling its cells vary or fix (epochs,
# schedule and row counts are the study's scale, not the recipe).
RECIPE_FIELDS = ("lora.target_modules", "lora.rank", "lora.alpha", "lora.lr", "lora.head_lr",
                 "lora.dropout", "lora.warmup_ratio", "lora.batch_size", "model.pooling")


def recipe_of(cfg) -> dict:
    """The recipe fields of a run config, named and formatted as its MLflow params."""
    params = flat_params(cfg)
    return {f: params[f] for f in RECIPE_FIELDS}


def recipe_rows(cells: list[CellData], used: dict | None = None) -> list[dict]:
    """The recipe search: validation accuracy after each epoch (it chooses), held-out shown.
    ``used`` is the recipe the study's other sections ran (recipe_of of their config); each row
    says whether it is that one, so the document states it instead of assuming it."""
    rows = tables.table(cells)
    for r, c in zip(rows, [cs[0] for cs in tables.by_label(cells).values()]):
        r["valid_curve"] = [100 * h["valid_accuracy"] for s in c.cell.epochs for h in c.history(s)
                            if "valid_accuracy" in h]
        r["recipe"] = recipe_of(c.cell.config)
        r["used"] = used is not None and r["recipe"] == used
    best = max((r for r in rows if r["valid_curve"]), key=lambda r: max(r["valid_curve"]), default=None)
    for r in rows:
        r["chosen"] = r is best
    return rows


def write_section(doc: Path, name: str, text: str, commands: list[str]) -> None:
    """Put ``text`` between the document's markers of section ``name`` (before its Reproduce
    section the first time), leaving every other section as it is: a study of one section
    rewrites only what it measured."""
    start, end = f"<!-- heft study section {name} -->", f"<!-- end of heft study section {name} -->"
    how = "\n".join(["", "Reproduce this section:", "", *commands])
    block = f"{start}\n{text}{how}\n{end}\n"
    old = doc.read_text() if doc.exists() else ""
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end) + 1:]
    elif "\n## Reproduce" in old:
        at = old.index("\n## Reproduce") + 1
        new = old[:at] + block + "\n" + old[at:]
    else:
        new = old + ("\n" if old else "") + block
    doc.write_text(new)


def task_metrics(cells: dict, spec: StudySpec) -> dict:
    """accuracy/<grid>/<cell> of the open-question grids, for the study's MLflow run."""
    return {metric_name(f"accuracy/{grid}/{r['label']}"): r["mean"]
            for grid in spec.open_question.get("grids", ()) if grid in cells
            for r in tables.table(cells[grid])}


def write_results(spec: StudySpec, grids: list[GridSpec], run_ids: dict[str, dict[str, str]], path: str,
          wall_s: float, commands: list[str]) -> dict:
    """Write results.md (at ``path``) and PNGs (beside it, in <stem>/); return files and metrics."""
    doc = Path(path)
    folder = doc.parent / doc.stem
    folder.mkdir(parents=True, exist_ok=True)
    cells = {g.name: gather(g, run_ids.get(g.name)) for g in grids}
    if spec.only == "open_question":  # one section, written into the document in place
        text = "\n".join(open_question.section(cells, spec.open_question))
        write_section(doc, "open-question", text, commands)
        return {"markdown": text, "files": {"results": doc}, "metrics": task_metrics(cells, spec),
                "cell_metrics": {}}
    main_name = spec.main if spec.main in cells else grids[0].name
    main = cells[main_name]
    rows = tables.table(main, spec.paper)
    cmps = tables.comparisons(main, spec.comparisons)
    files = document.main_plots(main, folder, spec)
    ablation = cells.get(spec.ablation, [])
    ablation_rows = tables.table(ablation) if ablation else []
    if ablation_rows:
        files["ablation"] = folder / "ablation.png"
        document.plot_bars(ablation_rows, ablation_rows[0]["majority"],
                           spec.titles.get(spec.ablation, spec.ablation), files["ablation"])
    spectra = tables.lora_spectra(main + ablation)
    if spectra:
        files["intruders"] = folder / "intruders.png"
        document.plot_spectra(spectra, files["intruders"])
    flip_rows = tables.reft_flips(main)
    tasks = [(spec.titles.get(name, f"Grid {name}"), tables.table(cs)) for name, cs in cells.items()
             if name not in (main_name, spec.ablation, spec.recipes)]
    judged = [verdicts.comparison_line(c, spec.paper) for c in cmps] + [verdicts.learning_line(rows)]
    claims = verdicts.summary(cmps, spec.paper)
    used = recipe_of(main[0].cell.config)  # the recipe sections 1-7 ran
    recipes = recipe_rows(cells[spec.recipes], used) if spec.recipes in cells else []
    sections = {"main_rows": rows, "comparisons": cmps, "verdicts": judged, "claims": claims,
                "recipes": recipes, "recipe_used": used,
                "lora_targets": lora_targets(main[0].cell.config),
                "ablation_rows": ablation_rows,
                "tasks": tasks, "measured": measured.load(spec.measured),
                "spectra": spectra, "flips": tables.flips_by_label(flip_rows),
                "reproduce": commands}
    tracking = main[0].cell.config.tracking_uri
    text = document.render(spec.title, spec.name, setup_lines(spec, main, wall_s, tracking), sections,
                           spec.sections, spec.paper_model)
    doc.write_text(text.replace("](results/", f"]({folder.name}/"))
    files["results"] = doc
    metrics = {metric_name(f"accuracy/{r['label']}"): r["mean"] for r in rows}
    metrics |= {metric_name(f"diff/{c['a']} vs {c['b']}"): c["mean_diff"] for c in cmps}
    metrics |= {metric_name(f"mcnemar_p/{c['a']} vs {c['b']}"): c["mcnemar_p"] for c in cmps}
    for f in sections["flips"]:
        metrics |= {metric_name(f"reft_fix_rate/{f['label']}"): f["fix_rate"],
                    metric_name(f"reft_break_rate/{f['label']}"): f["break_rate"]}
    for sp in spectra:
        name = f"{sp['lora_epochs']} LoRA epochs r{sp['lora_rank']} seed {sp['seed']}"
        metrics |= {metric_name(f"intruders_0.5/{name}"): sp["intruders@0.5"],
                    metric_name(f"intruders_0.7/{name}"): sp["intruders@0.7"],
                    metric_name(f"relative_update/{name}"): sp["relative_update"]}
    cell_metrics: dict[str, dict] = {}  # nested cell run id -> its diagnostics
    by_merge = {s["merge_key"]: s for s in spectra}
    for c in main + ablation:  # every cell whose model contains that merged LoRA
        s = by_merge.get(c.artifacts["merge"].key) if "merge" in c.artifacts else None
        if s and c.run_id:
            cell_metrics.setdefault(c.run_id, {}).update({"lora_intruders_0.5": s["intruders@0.5"],
                                                     "lora_intruders_0.7": s["intruders@0.7"],
                                                     "lora_relative_update": s["relative_update"]})
    for f in flip_rows:
        run = next((c.run_id for c in main if c.cell.label == f["label"] and c.cell.seed == f["seed"]), "")
        if run:
            cell_metrics.setdefault(run, {}).update({"reft_fixed": f["fixed"], "reft_broken": f["broken"],
                                                     "reft_fix_rate": f["fix_rate"]})
    return {"markdown": text, "files": files, "metrics": metrics, "cell_metrics": cell_metrics}
