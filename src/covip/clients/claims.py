"""Claims on requests in flight, so that jobs running at the same time send each request once.

Before a job sends a request the cache does not hold, it claims the request's key: it creates
`<cache>.claims/<key>` with O_CREAT|O_EXCL, which is atomic on one machine and on NFS (v3 and later),
the shared file system of a cluster. A job that finds the key claimed waits for the owner's answer
(it reads the journals, covip.clients.cache) instead of sending it. The owner removes its claim once
the answer is in its journal, or once the call failed (the waiter then sends it itself).

A claim whose owner is gone is taken over: a process of this host that no longer runs (its pid gone,
or reused by a process started at another time), or (another host's) a claim whose file was not
touched for `STALE_S` seconds; owners touch their claims every `BEAT_S` seconds. The taker renames the dead claim aside first, so of two waiters only one wins.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

STALE_S = 300.0
BEAT_S = 30.0


def claims_dir(cache_path: str | Path) -> Path:
    """Where the claims of the cache at `cache_path` live: `<path without suffix>.claims/`."""
    path = Path(cache_path)
    return path.with_name(path.stem + ".claims")


def _name(key: str) -> str:
    return key.replace(":", "_").replace("/", "_")


def _started(pid: int) -> str | None:
    """When a process of this host started (clock ticks since boot), or None where /proc cannot say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_gone(owner: dict, mtime: float) -> bool:
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError, TypeError):
            return False
        # The pid runs, but a reused pid is another process: compare start times.
        started = owner.get("started")
        return started is not None and _started(int(owner["pid"])) not in (None, started)
    return time.time() - mtime > STALE_S


class Claims:
    """This process's claims in one claims folder (thread-safe)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid()),
                      "id": uuid.uuid4().hex[:12]}
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None

    def claim(self, key: str) -> bool:
        """Claim `key`; False when another claim (of any process, this one included) holds it."""
        path = self.directory / _name(key)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except FileNotFoundError:  # first claim of the run: make the folder, then try again
                self.directory.mkdir(parents=True, exist_ok=True)
                continue
            try:
                os.write(fd, json.dumps(self.owner).encode())
            finally:
                os.close(fd)
            with self._lock:
                self.held.add(key)
                if self._beat is None:
                    self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="covip-claims")
                    self._beat.start()
            return True
        return False

    def release(self, key: str) -> None:
        with self._lock:
            if key not in self.held:
                return
            self.held.discard(key)
        (self.directory / _name(key)).unlink(missing_ok=True)

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def state(self, key: str) -> str:
        """'free' (no claim), 'held' (its owner runs) or 'dead' (its owner is gone)."""
        path = self.directory / _name(key)
        try:
            mtime = path.stat().st_mtime
            owner = json.loads(path.read_bytes() or b"{}")
        except FileNotFoundError:
            return "free"
        except ValueError:  # created but not written yet: its owner is alive a moment ago
            return "held" if time.time() - mtime < STALE_S else "dead"
        return "dead" if _owner_gone(owner, mtime) else "held"

    def take_over(self, key: str) -> bool:
        """Claim `key` whose owner is gone. Of several waiters, only one gets it."""
        path = self.directory / _name(key)
        aside = path.with_name(f"{path.name}.dead-{self.owner['id']}")
        try:
            os.rename(path, aside)  # atomic: one waiter moves the dead claim, the others find none
        except FileNotFoundError:
            return self.claim(key)
        try:
            owner = json.loads(aside.read_bytes() or b"{}")
            alive = not _owner_gone(owner, aside.stat().st_mtime)
        except (OSError, ValueError):
            alive = False
        if alive:  # another waiter took it over between our look and the rename: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return self.claim(key)

    def _heartbeat(self) -> None:
        # Touch the claims in flight, so that other hosts see their owner alive.
        while True:
            time.sleep(BEAT_S)
            with self._lock:
                keys = list(self.held)
            for key in keys:
                try:
                    os.utime(self.directory / _name(key))
                except OSError:
                    pass


def clear_dead_claims(directory: str | Path) -> int:
    """Remove the claims whose owners are gone (the merge does, while no job runs); how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.iterdir():
        try:
            owner = json.loads(path.read_bytes() or b"{}")
            dead = ".dead-" in path.name or _owner_gone(owner, path.stat().st_mtime)
        except (OSError, ValueError):
            dead = True
        if dead:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
