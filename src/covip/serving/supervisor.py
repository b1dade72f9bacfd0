"""`python -m covip.serving.supervisor --parent PID [--grace S] -- command ...`

Runs `command` in a session of its own and ends that whole process group (SIGTERM, then SIGKILL
after the grace period) when any of these happens: the parent process ends, even by `kill -9`
(the kernel's parent-death signal, and a poll of the parent for the moment before it was set);
the supervisor gets SIGTERM, SIGINT or SIGHUP; the run owner (COVIP_RUN_OWNER) ends. It exits when
the command has ended, with the command's status (or 143 when it was ended on request).

Descriptors passed by the starting job (the locks of the server's GPUs) are held by the supervisor
and the command alike, so the devices stay locked until every process of the server is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from covip.serving.lifeline import OWNER_ENV, POLL_S, alive, end_group, set_parent_death_signal

_stop = {"signal": None}


def _on_signal(signum, _frame) -> None:
    _stop["signal"] = signum


def supervise(command: list[str], parent: int, grace_s: float, keep_fds: list[int]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the kernel could be asked to tell us
        return 143
    owner = os.environ.get(OWNER_ENV)
    child = subprocess.Popen(command, start_new_session=True, pass_fds=keep_fds)
    print(f"covip supervisor {os.getpid()}: started process group {child.pid}: {' '.join(command)}", flush=True)
    reason = None
    while True:
        status = child.poll()
        if status is not None:
            end_group(child.pid, 2.0, lambda: True)  # workers the command left behind
            print(f"covip supervisor: the command exited with status {status}", flush=True)
            return status
        if _stop["signal"] is not None:
            reason = f"signal {signal.Signals(_stop['signal']).name}"
        elif os.getppid() != parent:
            reason = f"its job (pid {parent}) ended"
        elif owner and not alive(owner):
            reason = "the Snakemake process of the run ended"
        if reason:
            break
        time.sleep(POLL_S)
    print(f"covip supervisor: ending process group {child.pid} ({reason})", flush=True)
    end_group(child.pid, grace_s, lambda: child.poll() is not None)
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return 143


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covip.serving.supervisor")
    parser.add_argument("--parent", type=int, required=True, help="the job's pid; its end ends the command")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--keep-fd", type=int, action="append", default=[], help="descriptor the command keeps open")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the command to supervise goes after --")
    return supervise(command, args.parent, args.grace, args.keep_fd)


if __name__ == "__main__":
    sys.exit(main())
