"""MLflow runs whose process is gone: closed on the next start instead of RUNNING forever.

An interrupted run closes its own runs on the way out (KILLED); a process killed with SIGKILL
(the OOM killer, ``kill -9``) cannot.  So every run heft opens is tagged with the process that
opened it (``heft.host``, ``heft.pid`` and, on Linux, the process's start time, so a pid the
system has since reused is not mistaken for the old process), and ``close_orphans``, called
when a run, grid or study starts, marks KILLED the runs of this experiment still RUNNING whose
process on this host no longer exists.  Runs opened on another host are left alone: whether
their process lives cannot be told from here.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from heft.tracking.client import call, client

HOST, PID, PID_STARTED = "heft.host", "heft.pid", "heft.pid_started"


def process_started(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def process_tags() -> dict[str, str]:
    """The tags that say which process opened a run."""
    pid = os.getpid()
    started = process_started(pid)
    return {HOST: socket.gethostname(), PID: str(pid), **({PID_STARTED: started} if started else {})}


def alive(pid: int, started: str | None) -> bool:
    """Whether the process that opened a run still runs on this host."""
    if Path("/proc/self/stat").exists():
        now = process_started(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def close_orphans(uri: str, experiment: str) -> list[str]:
    """Mark KILLED the runs of ``experiment`` left RUNNING by a process of this host that is gone;
    their names.  Nothing is created: an experiment that does not exist has no runs."""
    c = client(uri)
    exp = call(c.get_experiment_by_name, experiment, what="read experiment")
    if exp is None:
        return []
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'"
    closed = []
    for run in call(c.search_runs, [exp.experiment_id], query, max_results=5000, what="search runs"):
        tags = run.data.tags
        if not tags.get(PID, "").isdigit() or alive(int(tags[PID]), tags.get(PID_STARTED)):
            continue
        call(c.set_tag, run.info.run_id, "heft.closed_by",
             f"a later heft start: its process {host}:{tags[PID]} was gone", what="tag run")
        call(c.set_terminated, run.info.run_id, status="KILLED", what="close run")
        closed.append(run.info.run_name or run.info.run_id)
    return closed


def close_orphans_note(uri: str, experiment: str) -> str:
    """``close_orphans``, said in one line for a flow's log ('' when nothing was closed)."""
    closed = close_orphans(uri, experiment)
    return (f"closed {len(closed)} MLflow run(s) of {experiment!r} left RUNNING by a heft process that is "
            f"gone (killed?): {', '.join(closed)}") if closed else ""
