"""The docs stay true to the tree: the config reference is the dataclasses' own text, and every
file or folder the README and docs/ name exists."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a repository path in backticks or a markdown link: heft/run/execute.py, deployments/grids/, docs/x.md
PATH = re.compile(r"(?:`|\]\()((?:\.\./shared/|\./)?"
                  r"(?:heft|flows|tasks|study|tests|bench|tools|docs|deployments|\.ci|\.\./shared)/[\w./-]*)")


def reference_module():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_is_generated_from_the_dataclasses():
    """docs/config.md == tools/config_reference.py's rendering: a field added, renamed or re-helped
    without `make docs` fails here."""
    module = reference_module()
    assert (ROOT / "docs" / "config.md").read_text() == module.render(), \
        "docs/config.md is stale: run `make docs`"
    import dataclasses

    from heft.config import RunConfig
    text = module.render()
    for section in dataclasses.fields(RunConfig):  # every field of every section has a row
        value = getattr(RunConfig(), section.name)
        names = [f"{section.name}.{f.name}" for f in dataclasses.fields(value)] \
            if dataclasses.is_dataclass(value) else [section.name]
        assert all(f"| `{n}` |" in text for n in names), section.name


def named_paths(text: str) -> set[str]:
    out = set()
    for path in PATH.findall(text):
        path = path.rstrip(".,:;")
        if not any(ch in path for ch in "*<>{}"):
            out.add(path)
    return out


def test_every_path_the_docs_name_exists():
    missing = [f"{doc.relative_to(ROOT)}: {p}" for doc in DOCS for p in sorted(named_paths(doc.read_text()))
               if not (ROOT / p).exists()]
    assert missing == []


def test_the_path_check_sees_paths():
    """The check above must be able to fail: it finds the paths in a sentence, gone or not."""
    found = named_paths("see `heft/run/execute.py`, [the grid](deployments/grids/paper.yaml), `heft/gone.py`")
    assert found == {"heft/run/execute.py", "deployments/grids/paper.yaml", "heft/gone.py"}
    assert not (ROOT / "heft/gone.py").exists()
