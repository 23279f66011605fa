"""Prefect's temporary API server for ``heft run|grid|study``, booted beside this process.

Without PREFECT_API_URL, a flow's first API call starts Prefect's temporary server
(``prefect.server.api.server.SubprocessASGIServer``) and waits for it.  That costs this
process ~4.4 s importing the server's modules (FastAPI app, database models) only to spawn
a uvicorn child that imports them again, and the import holds the GIL that the CLI's own
imports need.  Here the same child (Prefect's command line and environment for it, pinned
with prefect==3.8.8) is spawned at once, boots on the other core while this process imports
MLflow and the flow, and the flow is then pointed at it with ``temporary_settings``.
Measured (docs/benchmarks.md section 4, ``bench/cached_rerun.py --compare-server``): a
fully cached ``make demo`` rerun 15.6 s -> 10.5 s.  Anything that goes wrong here falls
back to Prefect's own start (the flow then starts the server as usual and reports its
errors); ``HEFT_TEMPORARY_SERVER=prefect`` asks for Prefect's own start outright.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext


def detach_and_follow_parent() -> None:
    """In the server child before exec: its own session, so a Ctrl-C or SIGTERM to the CLI's
    process group does not kill the server under a flow that still has states to report (that
    made the CLI retry a dead API for minutes); and a parent-death signal (Linux prctl), so the
    server goes when the CLI dies, SIGKILL and OOM kills included, instead of lingering."""
    os.setsid()
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the CLI's atexit still stops it
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryServer:
    """One uvicorn child serving Prefect's API on a free loopback port, UI off."""

    def __init__(self) -> None:
        import prefect
        from prefect.settings import get_current_settings
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        # the temporary server sends no usage telemetry unless asked (offline it logs an ERROR a minute)
        env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ, "PREFECT_UI_ENABLED": "0",
               "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"], env=env,
            preexec_fn=detach_and_follow_parent)
        # stopped at exit, as Prefect stops its own: atexit runs last-in first-out, so the
        # log and event workers that Prefect registers later drain into a live server first
        atexit.register(self.stop)

    def wait(self, timeout: float) -> bool:
        """True once /health answers 200; False if the child exits or the time runs out."""
        import httpx
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def prefect_api():
    """Boot the temporary server now (unless PREFECT_API_URL names one); yields ``serve``,
    a context manager to run the flow in, pointed at that server."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, PREFECT_UI_URL,
                                  temporary_settings)
    server = None
    own_start = os.environ.get("HEFT_TEMPORARY_SERVER", "heft") == "prefect"
    if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value() and not own_start:
        try:
            server = TemporaryServer()
        except Exception:  # noqa: BLE001 - server stays None: Prefect's own start takes over
            pass

    def serve():
        if server is None or not server.wait(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()):
            if server is not None:
                server.stop()
            return nullcontext()  # the flow starts Prefect's temporary server itself
        # PREFECT_UI_URL "": no "View at" link to a UI this server does not serve (as Prefect's own)
        return temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""})

    yield serve
