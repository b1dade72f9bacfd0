"""The response cache on a shared file system: one journal per writing process, merged while no job runs.

Several processes write at once (as the jobs of a run do), one of them is killed with SIGKILL in the
middle; every answer that was stored is found again, by the other processes while they run and after
the merge, and no file of the cache is ever written by two processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from covip.clients.cache import ResponseCache, journal_dir, merge_journals

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 6
PER_WRITER = 150

WRITER = textwrap.dedent(
    """
    import sys, time
    from covip.clients.cache import ResponseCache
    path, index, count, pause_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cache = ResponseCache(path)
    for i in range(count):
        key = f"shared-{i}" if i % 10 == 0 else f"w{index}-{i}"  # every writer also stores a few shared keys
        blob = bytes([index, i % 256]) * 1000 if i % 7 == 0 else None
        cache.put(key, "openai", "m", {"text": f"{key} from {index}"}, blob)
        if i == pause_after:
            open(path + f".paused{index}", "w").close()
            time.sleep(120)  # killed here
    cache.close()
    """
)


def writer(path: Path, index: int, pause_after: int = -1) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(index), str(PER_WRITER), str(pause_after)],
                            env=env, stderr=subprocess.PIPE, text=True)


def expected_keys(index: int, count: int) -> set[str]:
    return {f"shared-{i}" if i % 10 == 0 else f"w{index}-{i}" for i in range(count)}


def test_concurrent_writers_and_a_killed_one_lose_nothing_and_merge_cleanly(tmp_path):
    path = tmp_path / "cache" / "responses.sqlite"
    killed = WRITERS - 1
    processes = [writer(path, i, pause_after=80 if i == killed else -1) for i in range(WRITERS)]
    for i, process in enumerate(processes[:killed]):
        assert process.wait(timeout=120) == 0, process.stderr.read()
    deadline = time.time() + 60
    while not Path(f"{path}.paused{killed}").exists():
        assert time.time() < deadline and processes[killed].poll() is None
        time.sleep(0.05)
    processes[killed].send_signal(signal.SIGKILL)
    processes[killed].wait()

    everything = set().union(*(expected_keys(i, PER_WRITER) for i in range(killed)), expected_keys(killed, 81))
    reader = ResponseCache(path)
    assert len(reader) == len(everything)
    found = reader.get_many(sorted(everything))
    assert set(found) == everything
    payload, blob = found[f"w{killed}-77"]
    assert payload == {"text": f"w{killed}-77 from {killed}"} and blob == bytes([killed, 77]) * 1000
    assert not path.exists(), "the store is written by the merge alone"

    # A torn line at the end of a journal (a writer killed in the middle of a write) is ignored.
    journal = next(journal_dir(path).glob("*.jsonl"))
    with open(journal, "ab") as handle:
        handle.write(b'{"k": "torn", "p": {"te')
    assert "torn" not in ResponseCache(path).get_many(["torn"])

    stats = merge_journals(path)
    assert stats["journals"] == WRITERS and stats["removed"] == WRITERS  # closed, or their writer is dead
    assert list(journal_dir(path).iterdir()) == []
    after = ResponseCache(path)
    assert set(after.get_many(sorted(everything))) == everything and len(after) == len(everything)
    assert after.get(f"w{killed}-77")[1] == bytes([killed, 77]) * 1000
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # never WAL
    db.close()
    assert not list(path.parent.glob("responses.sqlite-*"))  # no -wal, -shm or -journal left behind
    assert merge_journals(path)["answers"] == 0  # nothing left to merge: idempotent


def test_a_running_job_sees_what_another_job_stored_and_its_open_journal_survives_a_merge(tmp_path):
    path = tmp_path / "responses.sqlite"
    mine, other = ResponseCache(path), ResponseCache(path)
    assert mine.get("k") is None
    other.put("k", "openai", "m", {"text": "answer"})
    time.sleep(2.1)  # journals are re-read at most every two seconds
    assert mine.get("k") == ({"text": "answer"}, None)
    stats = merge_journals(path)  # this process is alive and has not closed its journal: keep it
    assert stats == {"journals": 1, "answers": 1, "removed": 0}
    other.put("k2", "openai", "m", {"text": "later"})
    other.close()
    assert merge_journals(path)["removed"] == 1
    assert ResponseCache(path).get_many(["k", "k2"]).keys() == {"k", "k2"}
