"""Reading an answer out of a generation and judging it (heft/data/answers.py)."""
import pytest

from heft.config import ConfigError
from heft.data import answers


@pytest.mark.parametrize("text,rule,want", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,080", "number", "1,080"),
    ("#### 72\n\nQuestion: next one 5", "number", "72"),          # the mark wins over a later number
    ("She has 5 apples, then 7. The answer is 12.", "number", "12"),
    ("The temperature fell to -3 degrees", "number", "-3"),
    ("about 0.333333 of it", "number", "0.333333"),
    ("It costs $18.50 in all", "number", "$18.50"),
    ("no number here", "number", None),
    ("  The Answer Is Paris. ", "text", "the answer is paris"),
    ("answer: (B) because", r"\(([A-E])\)", "B"),
])
def test_extract(text, rule, want):
    assert answers.extract(text, rule) == want


@pytest.mark.parametrize("answer,gold,rule,ok", [
    ("1,080", "1080", "number", True),
    ("-3", "-3", "number", True),
    ("-3", "3", "number", False),
    ("0.3333", "0.333333", "number", True),      # within 1e-4 of a rounded gold
    ("0.34", "0.333333", "number", False),
    ("12", "12.0", "number", True),
    ("$18.50", "18.5", "number", True),
    (None, "4", "number", False),                 # a generation with no number is wrong, not an error
    ("Paris", "paris.", "text", True),
    ("B", "B", r"\(([A-E])\)", True),
])
def test_same(answer, gold, rule, ok):
    assert answers.same(answer, gold, rule, 1e-4) is ok


def test_a_rule_that_is_no_regex_or_has_no_group_is_refused():
    answers.check_rule(r"#### (\d+)")
    with pytest.raises(ConfigError, match="the regex needs a group around the answer"):
        answers.check_rule(r"#### \d+")
    with pytest.raises(ConfigError, match="'number', 'text' or a regex"):
        answers.check_rule("(")
