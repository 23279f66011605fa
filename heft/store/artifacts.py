"""Content-addressed stage artifacts on a local folder or any fsspec URL (s3:// via s3fs).

Layout: ``<root>/<stage>/<key>/`` holding the stage's files and ``meta.json`` (key, parent
key, the exact dict the key hashes, full config, metrics, lineage, versions, and every file's
size and sha256).  Keys: heft/store/keys.py.

``get_or_build(step, parent, build)`` is the one find-or-build: it returns the finished
artifact, or holds the key's build lock, looks again (another run may have finished it while
we waited), lets ``build`` fill a fresh local folder and publishes it.  Publishing is atomic:
on a local root one ``os.rename``; on an object store the files first and ``meta.json``
last, so an entry counts as complete only once its meta.json exists.

Fencing on object stores: the files are uploaded under a per-attempt prefix
(``<root>/.tmp/<stage>-<key>-<attempt>/``) and copied into the artifact's place (server-side)
only after the build lock is confirmed to be still ours (``Held.check``, heft/store/locks.py),
before and after the upload and again before meta.json.  A holder whose lease ran out while it
was suspended used to write its files over the artifact the next holder had published; now it
raises LeaseLost and writes nothing.  The copy costs a server-side copy of each file (no
download); an attempt killed mid-upload leaves its prefix under ``.tmp/``, never a half-written
entry in the artifact's place.  A disk that fills up while a stage writes or publishes is named
with the free space (heft/store/space.py).

A lookup (``find``) reads meta.json and compares every listed file's size against one
listing of the folder (cheap, also on S3).  An unreadable or malformed meta.json, or a
missing or resized file, makes the entry *damaged*: it is logged with the artifact named,
treated as absent, and set aside into ``.trash/`` when the stage is rebuilt.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from heft.store.fs import is_local, normalize_root, url_to_fs
from heft.store.damage import DamagedArtifact, content_problem, remember, set_aside
from heft.store.hashing import StampCache, cache_dir, sha256_file
from heft.store.keys import FORMAT_VERSION, digest, key_payload
from heft.store.locks import FileLock, Held, LeaseLock, lock_name
from heft.store.space import named_when_full

META = "meta.json"
log = logging.getLogger(__name__)
# the build lock of the build running in this thread: what a checkpoint publish checks
_HELD: ContextVar[Held | None] = ContextVar("heft_held_lock", default=None)
UNFENCED = Held("", "")  # publishing outside a build (tests, tools): nothing to check


def check_held() -> None:
    """Raise LeaseLost if the build running in this thread no longer holds its key's lease."""
    (_HELD.get() or UNFENCED).check()


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: where it lives and what made it (a copy of meta.json)."""
    stage: str
    key: str
    uri: str          # folder of this artifact (local path or URL)
    meta: dict

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    @property
    def parent_key(self) -> str | None:
        return self.meta.get("parent")

    def lineage(self, name: str) -> Any:
        """Values inherited along the chain, e.g. lineage('data_key'), lineage('weights')."""
        return self.meta["lineage"][name]


@dataclass
class Built:
    """What a stage function returns besides the files it wrote."""
    metrics: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)  # entries it sets (None clears an inherited one)
    provenance: dict = field(default_factory=dict)  # who built it (MLflow run, Prefect task run)


def manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file under folder except meta.json."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != META}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True


def log_build(art: Artifact) -> None:
    """Append one line per built artifact to $HEFT_BUILD_LOG, if set: stage, key, when, by which
    process (the audit trail the grid benchmarks and tests read: who built what, when)."""
    path = os.environ.get("HEFT_BUILD_LOG")
    if path:
        b = art.meta.get("build", {})
        line = json.dumps({"stage": art.stage, "key": art.key, "started": b.get("started"),
                           "finished": b.get("finished"), "pid": b.get("pid"), "host": b.get("host")}) + "\n"
        with open(path, "a") as f:  # one short O_APPEND write: lines from many processes never interleave
            f.write(line)


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
    """Finds, builds, publishes and fetches artifacts under one root (folder or fsspec URL)."""

    def __init__(self, root: str, cache: str | None = None):
        self.root = normalize_root(root)
        self.fs, self.base = url_to_fs(self.root)
        self.local = is_local(self.fs)
        if self.local:
            self.base = os.path.abspath(self.base)
        # local copies of remote artifacts (keys are content hashes, so sharing is safe)
        self.cache_dir = Path(cache) if cache else cache_dir()
        self.stamps = StampCache()
        lock_url = os.environ.get("HEFT_LOCK_URL", "")
        if lock_url and not self.local:  # many hosts share a remote root: a lease lock on a lock server
            self.locks = LeaseLock(lock_url, namespace=digest(self.root, 12))
        else:
            self.locks = FileLock(Path(self.base) / ".locks" if self.local else self.cache_dir / ".locks")

    def uri(self, stage: str, key: str) -> str:
        path = f"{self.base}/{stage}/{key}"
        return path if self.local else self.fs.unstrip_protocol(path)

    # -- lookup -----------------------------------------------------------------------------
    def find(self, stage: str, key: str) -> Artifact | None:
        """The complete, undamaged artifact for this key, or None."""
        folder = f"{self.base}/{stage}/{key}"
        try:
            raw = self.fs.cat_file(f"{folder}/{META}")  # one GET; see heft/store/fs.py on open()
        except FileNotFoundError:
            return None
        problem = None
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) \
                    or not isinstance(meta.get("lineage"), dict):
                problem = "meta.json is not an artifact record (no 'files'/'lineage')"
        except (ValueError, UnicodeDecodeError) as e:
            problem = f"meta.json is not valid JSON ({e})"
        if problem is None and meta.get("key") not in (None, key):
            problem = f"meta.json names key {meta.get('key')!r}"
        problem = problem or self.file_problem(folder, meta["files"])
        if problem:
            set_aside(self, stage, key, problem)  # treated as absent from now on, and rebuilt
            return None
        return Artifact(stage=stage, key=key, uri=self.uri(stage, key), meta=meta)

    def file_problem(self, folder: str, files: dict[str, dict]) -> str | None:
        """None if every listed file exists with its recorded size, else what is wrong."""
        if not files:
            return None
        strip = self.fs._strip_protocol
        listing = {strip(p).removeprefix(strip(folder)).lstrip("/"): info
                   for p, info in self.fs.find(folder, detail=True).items()}
        for rel, want in files.items():
            got = listing.get(rel)
            if got is None:
                return f"{rel} is missing"
            if int(got.get("size", -1)) != want.get("size"):
                return f"{rel} has {got.get('size')} bytes, expected {want.get('size')}"
        return None

    def verify(self, art: Artifact) -> str | None:
        """Full check: None if every file's sha256 matches meta.json, else the first mismatch."""
        folder = self.local_path(art)
        for rel, want in art.meta.get("files", {}).items():
            path = folder / rel
            if not path.is_file() or sha256_file(path) != want["sha256"]:
                return f"{rel}: sha256 differs from meta.json"
        return None

    # -- building ---------------------------------------------------------------------------
    def get_or_build(self, step, parent: Artifact | None, build: Callable[[Path], Built]) -> Artifact:
        """The artifact of ``step`` (a heft.plan.Step): found, or built by ``build(folder)``
        under the key's lock and published.  Nothing is visible until it is complete."""
        if (found := self.find(step.stage, step.key)) is not None:
            return found
        with self.lock(step.stage, step.key) as held:
            if (found := self.find(step.stage, step.key)) is not None:
                return found  # another run built it while we waited
            with self.scratch(step.stage, step.key) as tmp:
                started = time.time()
                token = _HELD.set(held)  # epoch checkpoints published during the build are fenced too
                try:
                    with named_when_full(tmp, f"building {step.stage} {step.key}"):
                        built = build(tmp)
                finally:
                    _HELD.reset(token)
                inherited = dict(parent.meta.get("lineage", {})) if parent else {}
                inherited.update(built.lineage)
                meta = {"stage": step.stage, "key": step.key, "parent": step.parent_key,
                        "format": FORMAT_VERSION, "keyed": key_payload(step.stage, step.config,
                                                                       step.parent_key, step.inputs),
                        "config": dataclasses.asdict(step.config), "metrics": built.metrics,
                        "lineage": inherited, "build": {"started": started, "finished": time.time(),
                                                        **built.provenance}}
                with named_when_full(tmp, f"publishing {step.stage} {step.key}"):
                    art = self.publish(tmp, step.stage, step.key, meta, held=held)
                log_build(art)
                return art

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[Held]:
        with self.locks.hold(stage, key) as held:
            yield held

    @contextmanager
    def scratch(self, stage: str, key: str) -> Iterator[Path]:
        """A fresh local folder to fill; removed afterwards whatever happens."""
        parent = self.scratch_root()
        parent.mkdir(parents=True, exist_ok=True)
        # the builder's pid in the name: clean_scratch can tell a live build from a killed one
        tmp = Path(tempfile.mkdtemp(prefix=f"{lock_name(stage, key)}-{os.getpid()}-", dir=parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def scratch_root(self) -> Path:
        return Path(self.base) / ".tmp" if self.local else self.cache_dir / ".tmp"

    def clean_scratch(self) -> list[str]:
        """Remove the scratch folders of builds whose process is gone (killed with SIGKILL, an
        OOM kill, a lost host session); a live build's folder is left alone."""
        removed = []
        root = self.scratch_root()
        for folder in root.iterdir() if root.is_dir() else ():
            parts = folder.name.rsplit("-", 2)
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is not None and pid != os.getpid() and not _alive(pid):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        if removed:
            log.warning("removed %d scratch folder(s) of builds that were killed: %s", len(removed), removed)
        return removed

    def publish(self, tmp: Path, stage: str, key: str, meta: dict, held: Held | None = None) -> Artifact:
        """Add the file manifest and provenance to ``meta``, write it into tmp and move the
        folder into place (meta.json last on object stores), once ``held`` (by default the
        lock of the build running in this thread) is confirmed to be still ours."""
        held = held or _HELD.get() or UNFENCED
        meta = dict(meta, versions=_versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    files=manifest(tmp), build={"id": uuid.uuid4().hex, "host": platform.node(),
                                                "pid": os.getpid(), **meta.get("build", {})})
        meta.setdefault("lineage", {})
        final = f"{self.base}/{stage}/{key}"
        text = json.dumps(meta, indent=2)
        if self.local:
            (tmp / META).write_text(text)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            held.check()
            if os.path.exists(final) and self.find(stage, key) is None and os.path.exists(final):
                set_aside(self, stage, key, "an entry without meta.json")  # never published completely
            try:
                os.rename(tmp, final)
                remember(meta["files"], Path(final), self.stamps)  # hashed just now: trusted while unchanged
            except OSError:  # another run published the same key first: keep theirs
                if not os.path.exists(os.path.join(final, META)):
                    raise
        else:
            self.publish_remote(tmp, stage, key, text, held)
        found = self.find(stage, key)
        if found is None:
            raise RuntimeError(f"{stage} artifact {key} was published but cannot be read back "
                               f"from {self.root}")
        return found

    def publish_remote(self, tmp: Path, stage: str, key: str, text: str, held: Held) -> None:
        """Upload under a per-attempt prefix, then copy into place only while ``held`` is ours
        (see the module docstring); meta.json last, create-if-absent."""
        held.check()  # lost already (suspended past the lease): write nothing at all
        final = f"{self.base}/{stage}/{key}"
        staging = f"{self.base}/.tmp/{lock_name(stage, key)}-{uuid.uuid4().hex[:12]}"
        files = [p.relative_to(tmp).as_posix() for p in sorted(tmp.rglob("*")) if p.is_file()]
        try:
            for rel in files:
                self.fs.put_file(str(tmp / rel), f"{staging}/{rel}")
            held.check()  # the upload took time: only now may anything reach the artifact's place
            if self.find(stage, key) is not None:  # (a damaged entry is set aside by find)
                log.warning("%s %s: published by another builder first; keeping theirs", stage, key)
                return
            if self.fs.find(final):  # files without meta.json: a publish killed while copying
                set_aside(self, stage, key, "an entry without meta.json")
            for rel in files:
                self.fs.copy(f"{staging}/{rel}", f"{final}/{rel}")
            held.check()
            try:  # create-if-absent (S3 If-None-Match): a second publisher never overwrites the first
                self.fs.pipe_file(f"{final}/{META}", text.encode(), mode="create")
            except FileExistsError:
                log.warning("%s %s: published by another builder first; keeping theirs", stage, key)
        finally:
            try:
                self.fs.rm(staging, recursive=True)
            except FileNotFoundError:  # nothing was uploaded
                pass

    # -- reading ----------------------------------------------------------------------------
    def open(self, art: Artifact) -> Path:
        """A local folder of the artifact's files, each checked against its sha256 in meta.json
        before anyone reads it (heft/store/damage.py).  A damaged local copy of a remote
        artifact is downloaded again; a damaged artifact is set aside and DamagedArtifact
        raised, so the caller rebuilds it instead of reading corrupt bytes."""
        folder = self.local_path(art)
        if (problem := self.content_problem(art, folder)) is not None:
            if not self.local:  # the copy may be bad while the object store's is good
                log.warning("local copy of %s/%s is damaged (%s): downloading it again", art.stage, art.key,
                            problem)
                os.rename(folder, tempfile.mkdtemp(dir=self.cache_dir, prefix=".damaged-"))
                folder = self.local_path(art)
                problem = self.content_problem(art, folder)
            if problem is not None:
                set_aside(self, art.stage, art.key, problem)
                if not self.local:  # and its local copy: the rebuild's files must be downloaded, not these
                    shutil.rmtree(folder, ignore_errors=True)
                raise DamagedArtifact(art.stage, art.key, problem)
        return folder

    def content_problem(self, art: Artifact, folder: Path) -> str | None:
        return content_problem(art.meta.get("files", {}), folder, self.stamps)

    def local_path(self, artifact: Artifact) -> Path:
        """A local folder holding the artifact's files (downloaded once for remote roots)."""
        if self.local:
            return Path(artifact.uri)
        target = self.cache_dir / artifact.stage / artifact.key
        if not (target / META).exists():
            # download into a fresh folder and rename it into place in one step: the copy appears
            # complete or not at all, and a copy another worker already placed (and may be
            # reading) is never removed: the later download is thrown away instead
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if target.exists() and not (target / META).exists():  # lost its meta.json: incomplete
                log.warning("local copy of %s/%s has no meta.json: downloading it again", artifact.stage,
                            artifact.key)
                gone = tempfile.mkdtemp(dir=self.cache_dir, prefix=".damaged-")
                try:
                    os.rename(target, gone)  # one step, so no reader sees it half removed
                except OSError:  # another worker moved it first
                    pass
                shutil.rmtree(gone, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".download-"))
            need = sum(f.get("size", 0) for f in artifact.meta.get("files", {}).values())
            try:
                with named_when_full(tmp, f"downloading {artifact.stage} {artifact.key}", need):
                    self.fs.get(f"{self.base}/{artifact.stage}/{artifact.key}/", str(tmp), recursive=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, target)
            except OSError:
                if not (target / META).exists():
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target
