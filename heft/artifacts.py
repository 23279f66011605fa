"""Content-addressed stage artifacts on a local folder or any fsspec URL (s3:// via s3fs).

Key of a stage = sha256 of canonical JSON {stage, format version, config, parent key}.
So changing the ReFT layer changes the ReFT key (and everything below it) but not
the LoRA or merge keys: those artifacts are found and reused.

Layout: <root>/<stage>/<key>/ holding the stage's files and ``meta.json``.
Atomicity: every artifact is built in a local temporary folder.  On a local root
it is published with one ``os.rename`` (atomic on one filesystem); on an object
store the files are uploaded first and ``meta.json`` last, so an entry counts as
complete only once its meta.json exists, and a half-written entry is never reused.
Concurrency: ``lock(stage, key)`` is an exclusive ``flock`` per key, held while a stage
builds.  A second run that needs the same artifact waits, then finds it finished.  The
kernel drops the lock when its holder dies (even by SIGKILL), so no stale lock survives
a crash.  Locks live next to a local root, or in the local cache for remote roots: they
coordinate runs on one host; two hosts building one key on S3 both build, and the later
meta.json wins (the content is the same by construction).
``meta.json`` also lists every file with its size and sha256.  A lookup compares the
sizes against one listing of the folder (cheap, also on S3); an entry with a missing
or resized file is reported, treated as absent, and replaced when the stage is rebuilt.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from heft.storage import url_to_fs

FORMAT_VERSION = 2  # bump when the on-disk layout of any stage changes
META = "meta.json"
log = logging.getLogger(__name__)


def manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file under folder except meta.json."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != META:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": h.hexdigest()}
    return out


def canonical_json(obj: Any) -> str:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, config: Any, parent_key: str | None) -> str:
    payload = canonical_json({"stage": stage, "format": FORMAT_VERSION,
                              "config": config, "parent": parent_key})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: where it lives and what made it (a copy of meta.json)."""
    stage: str
    key: str
    uri: str          # folder of this artifact (local path or URL); "" for the virtual base stage
    meta: dict

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    @property
    def parent_key(self) -> str | None:
        return self.meta.get("parent")

    def lineage(self, name: str) -> Any:
        """Values inherited along the chain, e.g. lineage('data_uri'), lineage('model')."""
        return self.meta["lineage"][name]


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "heft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class ArtifactStore:
    """Finds, publishes and fetches artifacts under one root (folder or fsspec URL)."""

    def __init__(self, root: str, cache_dir: str | None = None):
        self.root = root.rstrip("/")
        self.fs, self.base = url_to_fs(self.root)
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol
        if self.local:
            self.base = os.path.abspath(self.base)
        # local copies of remote artifacts (keys are content hashes, so sharing is safe)
        self.cache_dir = cache_dir or os.environ.get("HEFT_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), "heft-cache")

    def uri(self, stage: str, key: str) -> str:
        path = f"{self.base}/{stage}/{key}"
        return path if self.local else self.fs.unstrip_protocol(path)

    def find(self, stage: str, key: str) -> Artifact | None:
        """The complete artifact for this key, or None (absent or never finished)."""
        meta_path = f"{self.base}/{stage}/{key}/{META}"
        if not self.fs.exists(meta_path):
            return None
        meta = json.loads(self.fs.cat_file(meta_path))  # one GET; see heft.storage on open()
        problem = self.damage(f"{self.base}/{stage}/{key}", meta.get("files", {}))
        if problem:
            log.warning("ignoring damaged artifact %s/%s (%s); it will be rebuilt", stage, key, problem)
            return None
        return Artifact(stage=stage, key=key, uri=self.uri(stage, key), meta=meta)

    def damage(self, folder: str, files: dict[str, dict]) -> str:
        """'' if every listed file exists with its recorded size, else what is wrong."""
        if not files:
            return ""
        listing = {self.fs._strip_protocol(p).removeprefix(self.fs._strip_protocol(folder)).lstrip("/"): info
                   for p, info in self.fs.find(folder, detail=True).items()}
        for rel, want in files.items():
            got = listing.get(rel)
            if got is None:
                return f"{rel} is missing"
            if int(got.get("size", -1)) != want["size"]:
                return f"{rel} has {got.get('size')} bytes, expected {want['size']}"
        return ""

    def verify(self, art: Artifact) -> str:
        """Full check: '' if every file's sha256 matches meta.json, else the first mismatch."""
        folder = self.local_path(art)
        now = manifest(folder)
        for rel, want in art.meta.get("files", {}).items():
            if now.get(rel, {}).get("sha256") != want["sha256"]:
                return f"{rel}: sha256 differs from meta.json"
        return ""

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the exclusive build lock of (stage, key); waits while another process has it."""
        folder = Path(self.base) / ".locks" if self.local else Path(self.cache_dir) / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{stage.replace('/', '-')}-{key}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("%s %s: another run is building it; waiting for it", stage, key)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def build(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a fresh local folder to fill; nothing is visible under the root until it is done."""
        parent = Path(self.base) / ".tmp" if self.local else Path(self.cache_dir) / ".tmp"
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{stage}-{key}-", dir=parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, tmp: Path, stage: str, key: str, config: Any, parent: Artifact | None,
                metrics: dict, lineage: dict) -> Artifact:
        """Write meta.json into tmp and move the folder into place (meta.json last on object stores)."""
        inherited = dict(parent.meta.get("lineage", {})) if parent else {}
        inherited.update(lineage)
        meta = {"stage": stage, "key": key, "parent": parent.key if parent else None,
                "format": FORMAT_VERSION,
                "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
                "metrics": metrics, "lineage": inherited, "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": manifest(tmp),
                "build": {"id": uuid.uuid4().hex, "host": platform.node(), "pid": os.getpid()}}
        final = f"{self.base}/{stage}/{key}"
        if self.local:
            (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            if os.path.exists(final) and self.find(stage, key) is None:  # a damaged entry: set aside
                trash = Path(self.base) / ".trash"
                trash.mkdir(parents=True, exist_ok=True)
                os.rename(final, tempfile.mkdtemp(prefix=f"{stage.replace('/', '-')}-{key}-", dir=trash))
            try:
                os.rename(tmp, final)
            except OSError:  # another run published the same key first: keep theirs
                if not os.path.exists(os.path.join(final, META)):
                    raise
        else:
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    self.fs.put_file(str(path), f"{final}/{path.relative_to(tmp).as_posix()}")
            self.fs.pipe_file(f"{final}/{META}", json.dumps(meta, indent=2, default=str).encode())
        return self.find(stage, key)

    def local_path(self, artifact: Artifact) -> Path:
        """A local folder holding the artifact's files (downloaded once for remote roots)."""
        if self.local or not artifact.uri:
            return Path(artifact.uri)
        target = Path(self.cache_dir) / artifact.stage / artifact.key
        if not (target / META).exists():
            tmp = Path(tempfile.mkdtemp(dir=self.cache_dir))
            self.fs.get(f"{self.base}/{artifact.stage}/{artifact.key}/", str(tmp), recursive=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
        return target
