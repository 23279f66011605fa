"""Content fingerprints of what a run reads from outside the store: data files, base model.

They are the ``inputs`` of the data and base keys (heft/store/keys.py), so an edited data
file or replaced model weights give new keys and nothing built from the old ones is reused.

* data: sha256 over the source files' names and bytes (local or any fsspec URL); a hub
  dataset id by its name.
* model: a local folder (or the MiniLM package copy) by ``folder_digest`` of its files,
  hashed once per file stamp (heft/store/hashing.py: 13 GB of weights are not re-read on
  every run); a hub id by the commit its revision resolves to in the local Hugging Face cache
  (``refs/main``), which is what ``from_pretrained`` loads offline.  A hub id that is not in
  the cache keys by name: it is downloaded (and checked by validation) when it is used.

``Fingerprints`` memoises within one planning pass (a grid plans all its cells at once and
reads each source once); there is no process-wide memo.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from heft.config import ConfigError, DataConfig, ModelConfig
from heft.data.sources import DataError
from heft.modeling.names import resolve_name
from heft.store.fs import is_hub_id, url_to_fs
from heft.store.hashing import StampCache, folder_digest


def data_fingerprint(cfg: DataConfig) -> str:
    """Content hash of the data config's source files (hub ids by name)."""
    h = hashlib.sha256()
    for src in filter(None, (cfg.source, cfg.eval_source)):
        if is_hub_id(src):
            h.update(f"hub:{src}".encode())
            continue
        try:
            fs, path = url_to_fs(src)
            exists = fs.exists(path)
        except (ImportError, ValueError) as e:  # an unknown protocol, a malformed URL
            raise DataError(f"data source {src!r}: not a usable file or URL ({e})") from None
        except Exception as e:  # noqa: BLE001 - unreachable endpoint, no permission
            raise DataError(f"data source {src!r}: not reachable ({type(e).__name__}: {e})") from None
        if not exists:
            raise DataError(f"data source {src!r} does not exist")
        files = sorted(fs.find(path)) if fs.isdir(path) else [path]
        for p in (p for p in files if p.endswith((".jsonl", ".json"))):
            h.update(p.rsplit("/", 1)[-1].encode())
            h.update(fs.cat_file(p))  # one whole-object GET (heft/store/fs.py)
    return h.hexdigest()[:20]


def hub_revision(name: str, revision: str = "main") -> str | None:
    """The commit ``revision`` of hub model ``name`` resolves to in the local HF cache."""
    from huggingface_hub import constants
    ref = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def model_fingerprint(cfg: ModelConfig, cache: StampCache | None = None) -> str:
    """What the base model's weights are: a folder digest, or a hub commit."""
    path = resolve_name(cfg.name)
    if os.path.isdir(path):
        return "files:" + folder_digest(path, cache)
    if is_hub_id(cfg.name):
        commit = hub_revision(cfg.name)
        return f"hub:{cfg.name}@{commit}" if commit else f"hub:{cfg.name}@unresolved"
    raise ConfigError(f"model.name={cfg.name!r}: no such folder")


class Fingerprints:
    """Memo of fingerprints for one planning pass (one run, or all cells of a grid)."""

    def __init__(self):
        self._data: dict[tuple, str] = {}
        self._model: dict[str, str] = {}
        self._stamps = StampCache()

    def data(self, cfg: DataConfig) -> str:
        key = (cfg.source, cfg.eval_source)
        if key not in self._data:
            self._data[key] = data_fingerprint(cfg)
        return self._data[key]

    def model(self, cfg: ModelConfig) -> str:
        key = cfg.name + "|" + cfg.gguf_file
        if key not in self._model:
            self._model[key] = model_fingerprint(cfg, self._stamps)
        return self._model[key]
