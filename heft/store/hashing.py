"""sha256 of files, and a stamp cache so unchanged big files are not hashed twice.

Hashing is what lets heft notice a changed base model or a corrupted artifact, but the
weights of a 7B model are 13 GB (about 20-40 s of sha256 on one core).  ``StampCache``
remembers a file's digest next to its (size, mtime_ns, inode, ctime_ns) stamp; the digest is
trusted only while the stamp is unchanged.  Any write to the file through the filesystem
(truncate, rewrite, rename over it) moves mtime or ctime, so a changed file is always
hashed again; a same-size in-place corruption by a program that then *restores* both
mtime and ctime cannot happen through normal file APIs (ctime cannot be set).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

CHUNK = 1 << 20
_LOCK = threading.Lock()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def stamp(path: str | Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def cache_dir() -> Path:
    """Local scratch shared by every heft process of this user (HEFT_CACHE_DIR)."""
    return Path(os.environ.get("HEFT_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "heft-cache"))


class StampCache:
    """{absolute path: (stamp, sha256)} persisted as one small JSON file."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "sha256-stamps.json"
        self._entries: dict[str, list] | None = None

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
                if not isinstance(self._entries, dict):
                    self._entries = {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def known(self, path: str | Path) -> str | None:
        """The recorded sha256 if the file's stamp is unchanged since it was recorded."""
        entry = self._load().get(os.path.abspath(path))
        try:
            return entry[1] if entry and entry[0] == stamp(path) else None
        except OSError:
            return None

    def sha256(self, path: str | Path) -> str:
        """sha256 of the file, from the cache while its stamp is unchanged."""
        if (known := self.known(path)) is not None:
            return known
        before = stamp(path)
        value = sha256_file(path)
        if stamp(path) == before:  # not changed while we read it
            self.record(path, before, value)
        return value

    def record(self, path: str | Path, st: list[int], value: str) -> None:
        with _LOCK:
            entries = self._load()
            entries[os.path.abspath(path)] = [st, value]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".stamps-")
                with os.fdopen(fd, "w") as f:
                    json.dump(entries, f)
                os.replace(tmp, self.path)  # atomic: a concurrent writer loses entries, never corrupts
            except OSError:  # a read-only or full cache folder: only a speed-up is lost, not the check
                pass


def folder_digest(folder: str | Path, cache: StampCache | None = None) -> str:
    """One digest over every file under ``folder`` (relative names and contents)."""
    cache = cache or StampCache()
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix != ".md"):  # a model card does not change the model
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + cache.sha256(path).encode())
    return h.hexdigest()[:20]
