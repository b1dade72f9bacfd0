"""The votes database: raters, the items they were shown, and one row per vote (SQLite, WAL mode).

Every write is one short transaction (`BEGIN IMMEDIATE`), so several server threads, or several
processes on the same file, never interleave half a vote; `synchronous=FULL` makes a committed vote
survive a power cut. A rater votes at most once per item of a plan: the second submit of the same
item (a reload, the back button, a second tab) is not stored as a vote. It is ignored, and noted in
`ignored_submits` with its choices, so the first answer stands and nothing is doubled or overwritten.

Rater links carry a random token; only its SHA-256 is stored, so the file alone does not let anyone
vote as a rater.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
CHOICES = ("A", "B", "tie")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS views (
    rater TEXT NOT NULL REFERENCES raters(name),
    plan_version TEXT NOT NULL,
    item_id TEXT NOT NULL,
    first_shown_at TEXT NOT NULL,
    PRIMARY KEY (rater, plan_version, item_id)
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL REFERENCES raters(name),
    plan_version TEXT NOT NULL,
    item_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    policy_a TEXT NOT NULL,
    policy_b TEXT NOT NULL,
    choice_context TEXT NOT NULL CHECK (choice_context IN ('A', 'B', 'tie')),
    choice_image TEXT NOT NULL CHECK (choice_image IN ('A', 'B', 'tie')),
    shown_at TEXT,
    submitted_at TEXT NOT NULL,
    UNIQUE (rater, plan_version, item_id)
);
CREATE TABLE IF NOT EXISTS ignored_submits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL,
    plan_version TEXT NOT NULL,
    item_id TEXT NOT NULL,
    choice_context TEXT NOT NULL,
    choice_image TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """A request the votes database refuses (unknown or repeated rater name, bad choice)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_rater_name(name: str) -> str:
    cleaned = " ".join(str(name).split())
    if not cleaned or len(cleaned) > 80:
        raise StoreError(f"a rater name must have 1 to 80 characters, got {name!r}")
    return cleaned


@dataclass(frozen=True)
class Vote:
    rater: str
    plan_version: str
    item_id: str
    position: int
    sample_id: str
    policy_a: str  # the policy whose caption was shown as A
    policy_b: str
    choice_context: str  # 'A' | 'B' | 'tie': grounding in the remembered context
    choice_image: str  # 'A' | 'B' | 'tie': description of the new image
    shown_at: str | None
    submitted_at: str


class VoteStore:
    """One SQLite file; a fresh connection per call, so any thread or process may use it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, nor it them
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"{self.path}: votes database of schema version {version}, this code reads "
                                 f"version {SCHEMA_VERSION}")
            # One statement at a time: executescript would commit the open transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    @contextmanager
    def _transaction(self):
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- raters -----------------------------------------------------------------------------------
    def add_rater(self, name: str) -> str:
        """Register a rater and return their secret token (shown once; only its hash is kept)."""
        name = check_rater_name(name)
        token = secrets.token_urlsafe(24)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM raters WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"{self.path}: a rater named {name!r} exists already (use `relink` for a new link)")
            db.execute("INSERT INTO raters VALUES (?, ?, ?)", (name, token_digest(token), utc_now()))
        return token

    def relink(self, name: str) -> str:
        """A new token for an existing rater; the old link stops working, their votes stay theirs."""
        name = check_rater_name(name)
        token = secrets.token_urlsafe(24)
        with self._transaction() as db:
            changed = db.execute("UPDATE raters SET token_sha256 = ? WHERE name = ?", (token_digest(token), name))
            if changed.rowcount == 0:
                raise StoreError(f"{self.path}: no rater named {name!r}")
        return token

    def rater_for_token(self, token: str) -> str | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT name FROM raters WHERE token_sha256 = ?", (token_digest(token),)).fetchone()
        return row[0] if row else None

    def rater_exists(self, name: str) -> bool:
        with closing(self._connect()) as db:
            return db.execute("SELECT 1 FROM raters WHERE name = ?", (name,)).fetchone() is not None

    def raters(self) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT r.name, r.created_at, COUNT(v.id) FROM raters r LEFT JOIN votes v ON v.rater = r.name "
                "GROUP BY r.name ORDER BY r.created_at, r.name").fetchall()
        return [{"name": n, "created_at": c, "votes": k} for n, c, k in rows]

    # -- views and votes --------------------------------------------------------------------------
    def record_view(self, rater: str, plan_version: str, item_id: str) -> None:
        """Note when an item was first shown to a rater (a reload keeps the first time)."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO views VALUES (?, ?, ?, ?)", (rater, plan_version, item_id, utc_now()))

    def record_vote(self, rater: str, plan_version: str, item_id: str, position: int, sample_id: str,
                    policy_a: str, policy_b: str, choice_context: str, choice_image: str) -> bool:
        """Store a vote; True if stored, False if this rater had already voted on this item (then the
        first vote stands and this submit is kept in `ignored_submits` only)."""
        for field_name, value in (("choice_context", choice_context), ("choice_image", choice_image)):
            if value not in CHOICES:
                raise StoreError(f"{field_name} must be one of {list(CHOICES)}, got {value!r}")
        now = utc_now()
        with self._transaction() as db:
            shown = db.execute("SELECT first_shown_at FROM views WHERE rater = ? AND plan_version = ? AND item_id = ?",
                               (rater, plan_version, item_id)).fetchone()
            inserted = db.execute(
                "INSERT INTO votes (rater, plan_version, item_id, position, sample_id, policy_a, policy_b, "
                "choice_context, choice_image, shown_at, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rater, plan_version, item_id) DO NOTHING",
                (rater, plan_version, item_id, position, sample_id, policy_a, policy_b, choice_context, choice_image,
                 shown[0] if shown else None, now),
            ).rowcount == 1
            if not inserted:
                db.execute("INSERT INTO ignored_submits (rater, plan_version, item_id, choice_context, choice_image, "
                           "submitted_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (rater, plan_version, item_id, choice_context, choice_image, now))
        return inserted

    def voted_items(self, rater: str, plan_version: str) -> set[str]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT item_id FROM votes WHERE rater = ? AND plan_version = ?",
                              (rater, plan_version)).fetchall()
        return {row[0] for row in rows}

    def votes(self) -> list[Vote]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT rater, plan_version, item_id, position, sample_id, policy_a, policy_b, choice_context, "
                "choice_image, shown_at, submitted_at FROM votes ORDER BY id").fetchall()
        return [Vote(*row) for row in rows]

    def ignored_count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM ignored_submits").fetchone()[0]

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file (on shutdown: one self-contained file)."""
        with closing(self._connect()) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def vote_rows(votes: list[Vote]) -> list[dict]:
    """Votes as rows of schemas.HUMAN_VOTES: each choice also named by the policy it prefers."""
    rows = []
    for vote in votes:
        row = asdict(vote)
        for criterion in ("context", "image"):
            choice = row[f"choice_{criterion}"]
            row[f"preferred_{criterion}"] = {"A": vote.policy_a, "B": vote.policy_b}.get(choice, "tie")
        rows.append(row)
    return rows


def read_votes(path: str | Path) -> list[dict]:
    """Every vote of a votes database as rows of schemas.HUMAN_VOTES (for the summary rule)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no votes database")
    return vote_rows(VoteStore(path).votes())
