"""Tie a job's processes to the Snakemake process that runs it, so nothing outlives the run.

Snakemake starts a job as a child of its own process (through a shell). If Snakemake is killed with
`kill -9`, the kernel reparents the job, and the job, its model server and the GPUs they hold would
live on. Three mechanisms close that gap, each tested:

- **The run owner.** rules/common.smk records the Snakemake process that parsed the workflow (the
  one that starts the jobs, on this machine or inside a SLURM allocation) in `COVIP_RUN_OWNER` as
  `pid:start-time`, so a recycled pid is never mistaken for it. A job's `watch_owner` thread ends the
  job when that process is gone.
- **Parent-death signals.** A supervised process asks the kernel (`PR_SET_PDEATHSIG`) for SIGTERM
  when its parent dies, so a server's supervisor learns at once that its job is gone, even after
  `kill -9`; it also polls its parent, in case the parent died before the request was made.
- **Process groups.** A supervisor starts its command in a session of its own and ends the whole
  group, so workers the command forked (vLLM's engine core, accelerate's ranks) go with it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

OWNER_ENV = "COVIP_RUN_OWNER"
PR_SET_PDEATHSIG = 1
POLL_S = 0.5

log = logging.getLogger("covip.serving")


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, from /proc), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields and fields[0] == "Z":  # a zombie has ended; only its exit status is left
        return None
    return fields[19] if len(fields) > 19 else None


def owner_token(pid: int | None = None) -> str:
    """`pid:start-time` of a process (default: this one), the value of COVIP_RUN_OWNER."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start(pid) or ''}"


def alive(token: str) -> bool:
    """Whether the process a token names still runs (the same process, not a reused pid)."""
    pid, _, start = token.partition(":")
    try:
        now = process_start(int(pid))
    except ValueError:
        return True  # a malformed token: never end a job because of it
    return now is not None and (not start or now == start)


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent ends (False where that is not possible)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_owner(on_gone: Callable[[], None] | None = None, token: str | None = None, poll_s: float = 1.0) -> threading.Thread | None:
    """Start a daemon thread that calls `on_gone` (default: end this process at once) when the run
    owner named by COVIP_RUN_OWNER (or `token`) has ended. None when there is no owner to watch
    (the code runs outside Snakemake, e.g. in a test)."""
    token = token or os.environ.get(OWNER_ENV)
    if not token or not alive(token):
        return None

    def end() -> None:
        log.error("the Snakemake process that started this job (%s) is gone; ending the job", token)
        os._exit(75)  # no cleanup of our own: supervisors see us go and end their process groups

    def loop() -> None:
        while alive(token):
            time.sleep(poll_s)
        (on_gone or end)()

    thread = threading.Thread(target=loop, name="covip-run-owner", daemon=True)
    thread.start()
    return thread


def end_group(pgid: int, grace_s: float, is_done: Callable[[], bool]) -> None:
    """SIGTERM a process group, then SIGKILL what is left after `grace_s` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if is_done() and not group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
