"""Damaged artifacts: found by their content, set aside, rebuilt; never served.

An artifact is damaged when its meta.json is unreadable or not an artifact record, a listed
file is missing or has another size (``ArtifactStore.find``, one listing), or a file's bytes
no longer hash to the sha256 in meta.json (``content_problem``, checked by
``ArtifactStore.open`` before a stage, ``heft.load`` or the study reads the files).

Cost, measured here (hashlib.sha256 of 90 MB in memory, one core, 2026-12-03): ~1 GB/s, so the
90 MB MiniLM merge takes ~0.1 s and Llama-2-7B's 13 GB would take ~13 s (more from disk): negligible beside
loading those weights, but not beside a cached rerun.  Decision: every file is hashed in full
the first time it is read, and the digest is trusted afterwards only while the file's
(size, mtime, inode, ctime) stamp is unchanged (heft/store/hashing.py); a builder records the
stamps of what it publishes.  Any rewrite of a file changes its stamp, so corrupted bytes are
hashed again and caught.

A damaged artifact is set aside (``.trash/`` beside a local root, a ``.trash/`` prefix on an
object store), so a rebuild can publish in its place; a damaged *local copy* of a remote
artifact is dropped and downloaded again first: the good copy on S3 is not thrown away.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from pathlib import Path

from heft.store.hashing import StampCache

log = logging.getLogger(__name__)


class DamagedArtifact(Exception):
    """An artifact whose content does not match its meta.json; it has been set aside."""

    def __init__(self, stage: str, key: str, problem: str):
        super().__init__(f"{stage} artifact {key} is damaged ({problem}); "
                         "it was set aside and will be rebuilt")
        self.stage, self.key, self.problem = stage, key, problem


def content_problem(files: dict[str, dict], folder: Path, stamps: StampCache,
                    record: str = "meta.json") -> str | None:
    """None if every listed file under ``folder`` hashes to its recorded sha256 (listed in
    ``record``: an artifact's meta.json, an export's heft.json)."""
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != want["size"]:
            return f"{rel} has {path.stat().st_size} bytes, expected {want['size']}"
        if stamps.sha256(path) != want["sha256"]:
            return f"{rel}: sha256 differs from {record}"
    return None


def set_aside(store, stage: str, key: str, why: str) -> None:
    """Move the entry out of the store's lookup path (kept in .trash for inspection)."""
    log.warning("damaged artifact %s/%s (%s): set aside, it will be rebuilt", stage, key, why)
    src = f"{store.base}/{stage}/{key}"
    name = f"{stage.replace('/', '-')}-{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        if store.local:
            trash = Path(store.base) / ".trash"
            trash.mkdir(parents=True, exist_ok=True)
            os.rename(src, tempfile.mkdtemp(prefix=name + "-", dir=trash))
        else:
            set_aside_objects(store.fs, src, f"{store.base}/.trash/{name}-{uuid.uuid4().hex[:8]}")
    except (FileNotFoundError, OSError) as e:  # set aside by a concurrent run already
        log.warning("could not set aside %s/%s: %s", stage, key, e)


def set_aside_objects(fs, src: str, dest: str) -> None:
    """An object store has no rename: copy each object under ``src`` to ``dest``, then delete
    meta.json first (from then on the entry is absent for every reader, and a rebuild's
    create-if-absent meta.json can land), then the rest.  s3fs's recursive ``mv`` of a prefix
    failed with "The specified key does not exist" (it copies the prefix itself as a key),
    which left the damaged entry, and its meta.json, in place for good."""
    objects = fs.find(src)
    if not objects:
        return
    for path in objects:
        fs.copy(path, f"{dest}/{path[len(src):].lstrip('/')}")
    meta = [p for p in objects if p == f"{src}/meta.json"]
    if meta:
        fs.rm(meta)
    fs.rm([p for p in objects if p not in meta])
    fs.invalidate_cache(src)


def remember(files: dict[str, dict], folder: Path, stamps: StampCache) -> None:
    """Record the stamps of files whose sha256 was just computed (by the builder)."""
    from heft.store.hashing import stamp
    for rel, info in files.items():
        path = folder / rel
        if path.is_file():
            stamps.record(path, stamp(path), info["sha256"])
