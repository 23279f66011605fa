"""The library stays a plain library: heft/ never imports Prefect."""
import re
from pathlib import Path

HEFT = Path(__file__).resolve().parents[1] / "heft"


def test_heft_has_no_prefect_imports():
    offenders = [p.name for p in HEFT.glob("*.py")
                 if re.search(r"^\s*(import|from)\s+prefect\b", p.read_text(), re.M)]
    assert offenders == []
