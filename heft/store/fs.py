"""fsspec access to artifact roots and data sources, with retries for object stores.

Every remote read or write in heft goes through ``url_to_fs`` here.  For
``s3://`` the filesystem is s3fs with botocore's *standard* retry mode: throttling
(SlowDown, 503), 500/502/504 answers and dropped connections are retried with
exponential backoff and jitter, up to ``AWS_MAX_ATTEMPTS`` attempts (default 8, i.e.
about 20 s of backoff in the worst case).  Endpoint, credentials and region are not
set here: botocore reads them from the environment (AWS_ENDPOINT_URL, AWS_PROFILE, ...).
A fault that outlasts the retries surfaces as an error, and the Prefect task retries
(tasks/stages.py) are the second line.

Small objects (JSONL data, meta.json) are read with one whole-object GET (``cat_file``),
never a streamed ``open()``: measured against injected 500s, a streamed read whose
size-probing HEAD failed came back *empty* instead of raising (tests/test_s3.py).
"""
from __future__ import annotations

import os
import re
from typing import Any

import fsspec

DEFAULT_ATTEMPTS = 8
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def storage_options(url: str) -> dict[str, Any]:
    """Extra fsspec options for ``url``'s protocol (retries for S3; nothing for local)."""
    if url.startswith(("s3://", "s3a://")):
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_ATTEMPTS))
        mode = os.environ.get("AWS_RETRY_MODE", "standard")
        return {"config_kwargs": {"retries": {"max_attempts": attempts, "mode": mode}}}
    return {}


def url_to_fs(url: str):
    """(filesystem, path) for a folder or URL."""
    return fsspec.core.url_to_fs(url, **storage_options(url))


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def normalize_root(root: str) -> str:
    """One spelling per place: an absolute, normalised path for a local folder (relative
    paths are resolved against the current folder *now*), the URL without a trailing '/'
    for anything else.  Tags, meta.json and Prefect cache keys use this form, so a relative
    root copied elsewhere never replays the old place's paths."""
    if "://" not in root or root.startswith("file://"):
        return os.path.normpath(os.path.abspath(os.path.expanduser(root.removeprefix("file://"))))
    return root.rstrip("/")


def is_hub_id(source: str) -> bool:
    """'org/name' that is not an existing local path or a URL: a Hugging Face hub id."""
    return "://" not in source and not os.path.exists(source) and bool(HUB_ID.match(source))
