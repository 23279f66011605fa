"""BoolQ: sources and the recorded split (sources.py), prompt formats (prompts.py),
tokenised, length-grouped batches (batching.py)."""
