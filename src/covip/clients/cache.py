"""A durable response cache shared by every stage: SQLite in WAL mode, one row per request key.

A finished (paid) call is committed the moment it returns, so a crash or a rerun never pays for it
twice. Several Snakemake jobs may use the same file at once; SQLite's locking serialises writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from covip.clients.backends import IN_PROCESS_BACKENDS, STAND_IN_BACKENDS, backend_modules
from covip.clients.base import ChatRequest, ImagePart, ImageRequest, TextPart
from covip.clients.lora import adapter_path
from covip.clients.spec import ModelSpec
from covip.core.fingerprint import code_fingerprint


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


class ResponseCache:
    """Maps request keys to stored responses (JSON payload plus optional binary)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                "payload TEXT NOT NULL, blob BLOB, created REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, key: str) -> tuple[dict[str, Any], bytes | None] | None:
        row = self._connect().execute("SELECT payload, blob FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), row[1]

    def get_many(self, keys: list[str]) -> dict[str, tuple[dict[str, Any], bytes | None]]:
        """Stored responses for many keys at once (missing keys are absent from the result)."""
        found: dict[str, tuple[dict[str, Any], bytes | None]] = {}
        unique = list(dict.fromkeys(keys))
        db = self._connect()
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, payload, blob in db.execute(f"SELECT key, payload, blob FROM responses WHERE key IN ({marks})", chunk):
                found[key] = (json.loads(payload), blob)
        return found

    def put(self, key: str, backend: str, model: str, payload: dict[str, Any], blob: bytes | None = None) -> None:
        self._connect().execute(
            "INSERT OR REPLACE INTO responses (key, backend, model, payload, blob, created) VALUES (?, ?, ?, ?, ?, ?)",
            (key, backend, model, json.dumps(payload), blob, time.time()),
        )

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0]


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
