"""Reading an answer out of a text, and judging it against the gold one (generate tasks).

The same rule reads the gold answer from the target and the model's answer from its
generation, so a target written as a worked solution (GSM8K's "... #### 1,080") and a bare
number (MAWPS' "18") are judged alike:
* ``number``: the number after the last '####' if there is one, else the last number in the
  text (lm-evaluation-harness's GSM8K filters: strict '#### N', then flexible last-number);
  thousands separators, '$' and a trailing '.' are dropped, negatives and decimals kept;
* ``text``: the text itself, lower-cased, whitespace collapsed, surrounding punctuation dropped;
* anything else is a regex whose first group is the answer (then compared as numbers when both
  sides are numbers, else as text).
Numbers match when |answer - gold| <= tolerance x max(1, |gold|): MAWPS' golds are rounded to
6 decimals ("0.333333"), so an exact comparison would fail a right answer.
"""
from __future__ import annotations

import re

from heft.config import ConfigError

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
MARK = "####"


def check_rule(rule: str) -> None:
    """Refuse a rule that is neither 'number', 'text' nor a regex with a group."""
    if rule in ("number", "text"):
        return
    try:
        groups = re.compile(rule).groups
    except re.error as e:
        raise ConfigError(f"task.answer={rule!r}: 'number', 'text' or a regex ({e})") from None
    if groups < 1:
        raise ConfigError(f"task.answer={rule!r}: the regex needs a group around the answer, "
                          "e.g. '#### (.+)'")


def to_number(text: str) -> float | None:
    """'1,080' -> 1080.0, '-3.5' -> -3.5, '$18.' -> 18.0; None if it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1] if found else None


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?\"'").lower()


def extract(text: str, rule: str) -> str | None:
    """The answer ``rule`` reads from ``text`` (None: there is none)."""
    if rule == "number":
        if MARK in text:
            after = text.rsplit(MARK, 1)[1]
            found = last_number(after.split("\n")[0]) or last_number(after)
            if found is not None:
                return found
        return last_number(text)
    if rule == "text":
        return normalise(text) or None
    match = list(re.finditer(rule, text))
    return match[-1].group(1).strip() if match else None


def same(answer: str | None, gold: str | None, rule: str, tolerance: float) -> bool:
    """Whether an extracted answer is the gold one (numbers within the tolerance)."""
    if answer is None or gold is None:
        return False
    a, g = to_number(answer), to_number(gold)
    if rule != "text" and a is not None and g is not None:
        return abs(a - g) <= tolerance * max(1.0, abs(g))
    return normalise(answer) == normalise(gold)
