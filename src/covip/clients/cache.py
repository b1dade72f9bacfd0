"""A durable response cache shared by every job, safe on a network file system.

A finished (paid) call is written the moment it returns, so a crash or a rerun never pays for it
twice. The cache lives in the run's output folder, which on a cluster is a network file system:
SQLite documents its WAL mode, and locking over such file systems in general, as unsafe there. So
no file of the cache is ever written by two processes:

- **Journals.** Each process appends the answers it gets to a journal of its own,
  `<cache>.journal/<host>-<pid>-<id>.jsonl`: one JSON line per answer (large binary answers, the
  generated images, go to a `.blob` file beside it), handed to the kernel at once and fsync'ed at
  least every second. A killed writer loses no finished answer; a torn last line is ignored.
- **The store** (`responses.sqlite`) holds everything merged so far. Jobs only read it (opened
  immutable: no locks, no journal files); it is written by `merge_journals` alone, which Snakemake's
  main process runs when no job is running (onstart, onsuccess, onerror; rules/common.smk).

A lookup reads the store, then every journal: other jobs' answers, those of jobs that crashed, and
its own. Journals are re-read (only their new bytes) at most every two seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from covip.clients.backends import IN_PROCESS_BACKENDS, STAND_IN_BACKENDS, backend_modules
from covip.clients.base import ChatRequest, ImagePart, ImageRequest, TextPart
from covip.clients.claims import Claims, claims_dir, clear_dead_claims
from covip.clients.lora import adapter_path
from covip.clients.spec import ModelSpec
from covip.core.fingerprint import code_fingerprint

_REFRESH_S = 2.0
_FSYNC_S = 1.0
_CLOSED = ".closed.jsonl"
_STALE_S = 3600.0  # a journal untouched this long on another host counts as finished


def _canonical_part(part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ImagePart):
        return {"image_sha256": part.sha256, "mime": part.mime}
    raise TypeError(f"unknown message part {type(part).__name__}")


def request_key(
    backend: str, model: str, request: ChatRequest | ImageRequest, context: dict[str, Any] | None = None
) -> str:
    """A stable hash of everything that determines a response (images by content hash).

    `context` is what else decides the answer besides the request: the registry entry's backend
    options and a fingerprint of the model itself (weights folder, stand-in code), so a retrained
    model or an edited stand-in never hits a stale entry.
    """
    if isinstance(request, ChatRequest):
        body = {
            "messages": [{"role": m.role, "parts": [_canonical_part(p) for p in m.parts]} for m in request.messages],
            "sampling": request.sampling,
            "schema": request.response_schema,
            "task": request.task,
            "seed": request.seed,
        }
    else:
        body = {
            "instruction": request.instruction,
            "references": [_canonical_part(p) for p in request.reference_images],
            "task": request.task,
            "seed": request.seed,
        }
    key = {"backend": backend, "model": model, "request": body}
    if context:
        key["context"] = context
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def journal_dir(path: str | Path) -> Path:
    """Where the journals of the cache at `path` live: `<path without suffix>.journal/`."""
    path = Path(path)
    return path.with_name(path.stem + ".journal")


def _parse_line(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "k" in record else None


class _Journals:
    """An index of every journal's answers: key -> (journal file, offset of its line)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.index: dict[str, tuple[Path, int]] = {}
        self._read_to: dict[Path, int] = {}
        self._scanned = 0.0

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._scanned < _REFRESH_S:
            return
        self._scanned = time.monotonic()
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.jsonl")):
            self.scan(path)

    def scan(self, path: Path) -> None:
        start = self._read_to.get(path, 0)
        try:
            with open(path, "rb") as journal:
                journal.seek(start)
                data = journal.read()
        except OSError:  # merged and removed meanwhile: its answers are in the store now
            return
        end = data.rfind(b"\n") + 1  # a torn last line (its writer was killed mid-write) is ignored
        offset = start
        for line in data[:end].splitlines(keepends=True):
            record = _parse_line(line)
            if record is not None:
                self.index[record["k"]] = (path, offset)
            offset += len(line)
        self._read_to[path] = start + end

    @staticmethod
    def record(path: Path, offset: int) -> tuple[dict[str, Any], bytes | None] | None:
        """The journal line at `offset` and its blob, or None (gone, torn, blob incomplete)."""
        try:
            with open(path, "rb") as journal:
                journal.seek(offset)
                record = _parse_line(journal.readline())
            if record is None:
                return None
            blob = None
            if record.get("blob") is not None:
                start, length = record["blob"]
                with open(path.with_suffix(".blob"), "rb") as blobs:
                    blobs.seek(start)
                    blob = blobs.read(length)
                if len(blob) != length:
                    return None
            return record, blob
        except OSError:
            return None

    @classmethod
    def read(cls, path: Path, offset: int) -> tuple[dict[str, Any], bytes | None] | None:
        found = cls.record(path, offset)
        return None if found is None else (found[0]["p"], found[1])


class ResponseCache:
    """Maps request keys to stored responses (JSON payload plus optional binary), as described above."""

    def __init__(self, path: str | Path, *, job: str | None = None, rule: str | None = None):
        self.path = Path(path)
        self.owner = {"job": job, "rule": rule}  # the journal's first line: whose paid calls these are
        self.journals = _Journals(journal_dir(self.path))
        # Requests in flight, shared by every job; COVIP_CACHE_CLAIMS=0 switches them off (a file
        # system whose O_EXCL cannot be trusted; the benchmark's "before").
        self.claims = None if os.environ.get("COVIP_CACHE_CLAIMS") == "0" else Claims(claims_dir(self.path))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._journal = None  # this process's journal, opened on the first answer it stores
        self._blobs = None
        self._synced = 0.0

    # -- reading ------------------------------------------------------------------------------------
    def _store(self) -> sqlite3.Connection | None:
        db = getattr(self._local, "db", None)
        if db is None and self.path.is_file():
            # immutable: no locks and no side files; only merge_journals writes the store, never while jobs run
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True, check_same_thread=False)
            self._local.db = db
        return db

    def _from_store(self, keys: list[str]) -> dict[str, tuple[dict[str, Any], bytes | None]]:
        found: dict[str, tuple[dict[str, Any], bytes | None]] = {}
        db = self._store()
        if db is None:
            return found
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, payload, blob in db.execute(f"SELECT key, payload, blob FROM responses WHERE key IN ({marks})", chunk):
                found[key] = (json.loads(payload), blob)
        return found

    def get(self, key: str) -> tuple[dict[str, Any], bytes | None] | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str], fresh: bool = False) -> dict[str, tuple[dict[str, Any], bytes | None]]:
        """Stored responses for many keys at once (missing keys are absent from the result).

        `fresh`: re-read the journals now, not at most every two seconds (a job waiting for another's answer)."""
        unique = list(dict.fromkeys(keys))
        found = self._from_store(unique)
        missing = [key for key in unique if key not in found]
        if missing:
            with self._lock:
                self.journals.refresh(force=fresh)
                places = {key: self.journals.index[key] for key in missing if key in self.journals.index}
            for key, (path, offset) in places.items():
                hit = self.journals.read(path, offset)
                if hit is not None:
                    found[key] = hit
        return found

    def __len__(self) -> int:
        keys: set[str] = set()
        db = self._store()
        if db is not None:
            keys.update(row[0] for row in db.execute("SELECT key FROM responses"))
        with self._lock:
            self.journals.refresh(force=True)
            keys.update(self.journals.index)
        return len(keys)

    # -- writing ------------------------------------------------------------------------------------
    def put(self, key: str, backend: str, model: str, payload: dict[str, Any], blob: bytes | None = None,
            role: str | None = None) -> None:
        """Append one answer to this process's journal, handed to the kernel before returning."""
        with self._lock:
            if self._journal is None:
                directory = journal_dir(self.path)
                directory.mkdir(parents=True, exist_ok=True)
                name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self._journal = open(directory / f"{name}.jsonl", "ab")
                self._journal.write(json.dumps({"owner": self.owner}).encode() + b"\n")
            record: dict[str, Any] = {"k": key, "b": backend, "m": model, "p": payload, "t": time.time()}
            if role is not None:
                record["r"] = role
            if blob is not None:
                if self._blobs is None:
                    self._blobs = open(Path(self._journal.name).with_suffix(".blob"), "ab")
                record["blob"] = [self._blobs.tell(), len(blob)]
                self._blobs.write(blob)
                self._blobs.flush()  # the blob before the line that points at it
            offset = self._journal.tell()
            self._journal.write(json.dumps(record).encode() + b"\n")
            self._journal.flush()
            if time.monotonic() - self._synced > _FSYNC_S:
                for handle in (self._blobs, self._journal):
                    if handle is not None:
                        os.fsync(handle.fileno())
                self._synced = time.monotonic()
            path = Path(self._journal.name)
            self.journals.index[key] = (path, offset)

    def close(self) -> None:
        """Sync and close this process's journal and mark it finished (merge may then remove it)."""
        if self.claims is not None:
            self.claims.release_all()
        with self._lock:
            if self._journal is None:
                return
            for handle in (self._blobs, self._journal):
                if handle is not None:
                    handle.flush()
                    os.fsync(handle.fileno())
                    handle.close()
            path = Path(self._journal.name)
            closed = path.with_name(path.name[: -len(".jsonl")] + _CLOSED)
            if self._blobs is not None:
                Path(self._blobs.name).replace(closed.with_suffix(".blob"))
            path.replace(closed)
            self._journal = self._blobs = None
            self.journals.index = {k: ((closed if p == path else p), o) for k, (p, o) in self.journals.index.items()}

    def __del__(self):  # noqa: D105 - best effort; a journal left open is still merged later
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _writer_gone(journal: Path) -> bool:
    """Whether a journal's writer has finished: it closed the journal, it was a process of this host
    that no longer runs, or the file has not changed for an hour (another host's)."""
    if journal.name.endswith(_CLOSED):
        return True
    parts = journal.name[: -len(".jsonl")].rsplit("-", 2)  # <host>-<pid>-<id>
    if len(parts) != 3:
        return time.time() - journal.stat().st_mtime > _STALE_S
    host, pid, _ = parts
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False
    return time.time() - journal.stat().st_mtime > _STALE_S


def _owner(journal: Path) -> dict[str, Any]:
    """The job and rule a journal's first line names (empty for journals of other writers)."""
    try:
        with open(journal, "rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return {}
    return first.get("owner") or {} if isinstance(first, dict) else {}


def merge_journals(path: str | Path, usage_dir: str | Path | None = None,
                   prices: dict | None = None) -> dict[str, int]:
    """Copy every journal's answers into the store, then remove the journals whose writers are done.

    Run only while no job of the run uses the cache (Snakemake's onstart, onsuccess and onerror in the
    main process do). Idempotent: an answer merged twice is the same row.

    A journal left open by a writer that died (a killed job) holds paid calls that its job never
    wrote to its usage table; with `usage_dir`, their usage (from the answers' own token counts) is
    written to `<usage_dir>/recovered/<journal>.parquet` before the journal goes."""
    path = Path(path)
    clear_dead_claims(claims_dir(path))
    directory = journal_dir(path)
    journals = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    stats = {"journals": len(journals), "answers": 0, "removed": 0}
    if not journals:
        return stats
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")  # never WAL: see the module's docstring
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                   "payload TEXT NOT NULL, blob BLOB, created REAL)")
        for journal in journals:
            index = _Journals(directory)
            index.scan(journal)
            rows = []
            for key, (where, offset) in index.index.items():
                found = _Journals.record(where, offset)
                if found is not None:
                    record, blob = found
                    rows.append((key, record.get("b"), record.get("m"), json.dumps(record["p"]), blob, record.get("t")))
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO responses (key, backend, model, payload, blob, created) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            stats["answers"] += len(rows)
            if _writer_gone(journal):
                if usage_dir is not None and not journal.name.endswith(_CLOSED):
                    from covip.clients.usage import write_recovered_usage

                    answers = [_Journals.record(where, offset) for where, offset in index.index.values()]
                    write_recovered_usage([found[0] for found in answers if found is not None], _owner(journal),
                                          Path(usage_dir) / "recovered" / f"{journal.stem}.parquet", prices or {})
                    stats["recovered"] = stats.get("recovered", 0) + 1
                journal.with_suffix(".blob").unlink(missing_ok=True)
                journal.unlink()
                stats["removed"] += 1
    finally:
        db.close()
    return stats


# ---------------------------------------------------------------------------------------------------
# What else keys a cached answer besides the request: the entry's options and a fingerprint of the model

# Files up to this size are hashed by content; larger ones (multi-GB weights) by size and mtime.
_HASH_LIMIT = 64 * 2**20


@lru_cache(maxsize=None)
def path_fingerprint(path: str) -> str:
    """A hash of a local model folder or file, computed once per process.

    Every file (hidden files such as Snakemake's timestamp aside) contributes its relative path and
    size, plus its content hash when it is at most 64 MiB, else its mtime. Configs, tokenizers and
    small weights are thus compared by content (a rebuilt identical model still hits the cache),
    and a retrained large model changes at least its weights' mtime.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if file != root else file.name}\0{stat.st_size}\0".encode())
        if stat.st_size <= _HASH_LIMIT:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def _local_model_path(name: str | None) -> str | None:
    """A local folder or file for a model name: the path itself, or a hub snapshot already cached."""
    if not name:
        return None
    if os.path.exists(name):
        return name
    try:  # a hub id: its cached snapshot (the folder name is the commit), never a download
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not a hub id, or not cached: the id alone keys the cache
        return None


def model_fingerprint(spec: ModelSpec) -> str:
    """What identifies the model behind an entry beyond its name (see `cache_context`)."""
    if spec.backend in STAND_IN_BACKENDS:
        return "code:" + code_fingerprint(*backend_modules(spec.backend))
    if spec.serve is not None:  # a server the workflow starts: its weights are on this disk
        from covip.clients.weights import local_path, source_of

        source = source_of(spec)
        try:
            path = local_path(source) if source is not None else (spec.model if os.path.exists(spec.model) else None)
        except Exception:  # noqa: BLE001 - not fetched (yet): the name alone keys the cache
            path = None
        return f"files:{path_fingerprint(os.path.abspath(path))}" if path else f"served:{spec.model}"
    if spec.backend in IN_PROCESS_BACKENDS:
        weights = spec.pretrained if spec.backend == "open_clip" else spec.model
        path = _local_model_path(weights)
        found = f"files:{path_fingerprint(os.path.abspath(path))}" if path else f"id:{weights}"
        adapter = spec.options.get("adapter")
        if adapter:  # a LoRA adapter on the base: its files key the cache as much as the base's
            adapter_dir = adapter_path(adapter)
            found += f"+adapter-files:{path_fingerprint(os.path.abspath(adapter_dir))}" if adapter_dir else f"+adapter-id:{adapter}"
        return found
    return "remote"  # the endpoint's model name is all we can know


def cache_context(spec: ModelSpec) -> dict[str, Any]:
    """Besides backend, model and request, a cache key includes the entry's backend options and a
    fingerprint of the model: a local model folder's files, or a stand-in's code."""
    return {"options": spec.options, "fingerprint": model_fingerprint(spec)}
