"""Assemble a finished study into results.md, its PNGs and the metrics logged to MLflow."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from heft.study import document as results
from heft.study import tables as analysis
from heft.study.grid import GridSpec
from heft.study.spec import CellData, StudySpec, gather

def metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits and _ - . / : and spaces."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def setup_lines(spec: StudySpec, main: list[CellData], wall_s: float, tracking: str) -> list[str]:
    cfg = main[0].cell.config
    n = main[0].artifacts["data"].metrics  # row counts of the split the data stage wrote
    m = main[0].artifacts["eval:" + analysis._final(main[0])].metrics
    return [f"- Model: `{cfg.model.name}` ({main[0].artifacts['base'].meta['lineage']['family']}, "
            f"{main[0].artifacts['base'].meta['lineage']['depth']} blocks), "
            f"max_length {cfg.model.max_length}, "
            f"float32 on {torch.device('cuda' if torch.cuda.is_available() else 'cpu')} "
            f"({os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads).",
            f"- Data: `{cfg.data.source}` ({cfg.data.format} format), re-split with split_seed "
            f"{cfg.data.split_seed}: {n['n_train']:.0f} training, {n['n_valid']:.0f} validation and "
            f"{n['n_eval']:.0f} held-out rows (held-out majority rate {100 * m['majority_rate']:.2f}%).",
            f"- LoRA r={cfg.lora.rank}, alpha={cfg.lora.alpha} on "
            f"{', '.join(cfg.lora.target_modules) or 'the per-architecture default modules'}, lr "
            f"{cfg.lora.lr}; LoReFT layer {cfg.reft.layer}, rank {cfg.reft.rank}, "
            f"positions {cfg.reft.positions}, "
            f"lr {cfg.reft.lr}; batch {cfg.lora.batch_size}; constant LR after warm-up.",
            f"- Scale: study overrides `{' '.join(spec.overrides)}`. Labels name the paper's epochs; the "
            "'epochs trained' column says what ran.",
            f"- Seeds: {sorted({c.cell.seed for c in main})} (initialisation, dropout and batch order; "
            "the split is fixed).",
            f"- Study wall time this run: {wall_s:.0f} s (cached stages are not retrained). "
            f"MLflow: `{tracking}`, experiment `{cfg.experiment}`, one parent run `study: {spec.name}` "
            "with one nested run per grid and per cell. Generated " + time.strftime("%Y-%m-%d") + "."]


def write_results(spec: StudySpec, grids: list[GridSpec], run_ids: dict[str, dict[str, str]], path: str,
          wall_s: float, commands: list[str]) -> dict:
    """Write results.md (at ``path``) and PNGs (beside it, in <stem>/); return files and metrics."""
    doc = Path(path)
    folder = doc.parent / doc.stem
    folder.mkdir(parents=True, exist_ok=True)
    cells = {g.name: gather(g, run_ids.get(g.name)) for g in grids}
    main_name = spec.main if spec.main in cells else grids[0].name
    main = cells[main_name]
    rows = analysis.table(main, spec.paper)
    cmps = analysis.comparisons(main, spec.comparisons)
    files = results.main_plots(main, folder, spec)
    ablation = cells.get(spec.ablation, [])
    ablation_rows = analysis.table(ablation) if ablation else []
    if ablation_rows:
        files["ablation"] = folder / "ablation.png"
        results.plot_bars(ablation_rows, ablation_rows[0]["majority"], "one factor at a time around HEFT 3+3",
                          files["ablation"])
    spectra = analysis.lora_spectra(main + ablation)
    if spectra:
        files["intruders"] = folder / "intruders.png"
        results.plot_spectra(spectra, files["intruders"])
    flip_rows = analysis.reft_flips(main)
    tasks = [(spec.titles.get(name, f"Grid {name}"), analysis.table(cs)) for name, cs in cells.items()
             if name not in (main_name, spec.ablation)]
    verdicts = [f"- **{c['a']} vs {c['b']}** ({c['question']}): {c['mean_diff']:+.2f} points, {c['verdict']}."
                for c in cmps]
    majority = rows[0]["majority"]
    above = [r for r in rows if r["mean"] > majority]
    best = max(rows, key=lambda r: r["mean"])
    verdicts.append(f"- Held-out majority rate (always the majority answer): {majority:.2f}%. "
                    f"{len(above)} of {len(rows)} cells average above it; "
                    f"the best is {best['label']} at {best['mean']:.2f}%. "
                    "Where no cell clears it, the comparisons above measure how much each method "
                    "overfits 600 training rows rather than how much it learns.")
    sections = {"main_rows": rows, "comparisons": cmps, "verdicts": verdicts, "ablation_rows": ablation_rows,
                "tasks": tasks, "spectra": spectra, "flips": analysis.flips_by_label(flip_rows),
                "reproduce": commands}
    tracking = main[0].cell.config.tracking_uri
    text = results.render(spec.name, setup_lines(spec, main, wall_s, tracking), sections)
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
