"""The prompt formats: what the model reads for one BoolQ row.

* encoder (seq-cls): (question?, passage) as a text pair, or the question alone;
* causal LM: the prompt ends where the answer starts, and the model is scored on the first
  token of ' true' / ' false' after it (heft/modeling/models.py: answer_token_ids).
"""
from __future__ import annotations

ANSWERS = {True: "true", False: "false"}  # the words a causal LM is scored on
ANSWER_CUE = "Answer:"                    # the text the answer token follows


def prompt(row: dict, fmt: str, causal: bool) -> tuple[str, str | None]:
    """(text, text_pair) for an encoder; (prompt, None) for a causal LM scored on ' true'/' false'."""
    question = row["question"].rstrip("?") + "?"
    if not causal:
        return (question, row["passage"]) if fmt == "passage" else (question, None)
    if fmt == "passage":
        return f"{row['passage']}\nQuestion: {question}\n{ANSWER_CUE}", None
    # LLM-Adapters / LoReFT question-only template (their BoolQ train and test files)
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nPlease answer the following question with "
            f"true or false, question: {question}\n\nAnswer format: true/false\n\n### Response:\n"
            "the correct answer is", None)
