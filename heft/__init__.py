"""heft: HEFT fine-tuning (LoRA -> merge -> LoReFT) as a plain library.

Each stage is a function ``(stage config, parent artifact, store) -> artifact``; see
heft/pipeline.py for the chain.  No Prefect imports here: tasks/ and flows/ wrap it.
"""
