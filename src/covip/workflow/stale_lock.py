"""A Snakemake lock left behind by a run that was killed, said in one line at parse time.

Snakemake locks the working directory in `.snakemake/locks/` and removes the lock when it ends; a
`kill -9` (or a lost login node) leaves it, and the next run stops on it until `snakemake --unlock`.
The lock files name no process, so a lock counts as stale when no live Snakemake process of this
host other than the caller works in this directory. A run on another host sharing the folder cannot
be seen from here; the message says so.
"""

from __future__ import annotations

import os
from pathlib import Path


def _ancestors(proc: Path) -> set[int]:
    """This process and those above it (a `timeout snakemake ...` or a wrapper script holds no lock)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def live_snakemakes(workdir: str | Path, proc: str | Path = "/proc") -> list[int]:
    """Pids of the live processes of this host, this one and its ancestors aside, that run Snakemake in
    `workdir` (a run's own jobs included: their scripts live under .snakemake/)."""
    workdir, proc = os.path.realpath(workdir), Path(proc)
    mine = _ancestors(proc)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"snakemake" not in cmdline:
                continue
            if os.path.realpath(os.readlink(entry / "cwd")) == workdir:
                found.append(int(entry.name))
        except OSError:  # ended meanwhile, or another user's process
            continue
    return found


def stale_lock_message(workdir: str | Path, argv: list[str] | None = None) -> str | None:
    """One line for the user when `workdir` holds Snakemake lock files that no live run of this host
    holds; None when there are none, when one runs, or when this is `--unlock` / `--nolock` itself."""
    if argv is not None and {"--unlock", "--nolock"} & set(argv):
        return None
    locks = Path(workdir) / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.glob("*.lock")):
        return None
    if live_snakemakes(workdir):
        return None
    return (f"{locks} holds a lock from a Snakemake run that no longer runs on this host (killed?): run "
            "`snakemake --unlock` once (same options), then this command again; finished model calls come from "
            "the cache. If a run on another machine uses this folder, leave it.")
