"""The votes database: one row per (rater, plan, item), WAL mode, safe across threads and processes."""

import multiprocessing
import sqlite3
import stat

import pytest

from covip.human_eval.secret import SECRET_ENV, SecretError, secret_path, session_secret
from covip.human_eval.store import StoreError, VoteStore, read_votes, token_digest


def vote(store, rater="ana", item="s1:blind:oracle", context="A", image="tie", plan="v1"):
    return store.record_vote(rater, plan, item, 0, item.split(":")[0], "oracle", "blind", context, image)


def test_the_database_is_in_wal_mode_and_versioned(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    VoteStore(store.path)  # reopening an existing database keeps it


def test_a_second_submit_of_the_same_item_is_ignored_and_noted(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    store.add_rater("ana")
    store.record_view("ana", "v1", "s1:blind:oracle")
    assert vote(store, context="A") is True
    assert vote(store, context="B", image="A") is False
    rows = read_votes(store.path)
    assert len(rows) == 1
    assert rows[0]["choice_context"] == "A" and rows[0]["preferred_context"] == "oracle"
    assert rows[0]["preferred_image"] == "tie"
    assert rows[0]["shown_at"] is not None and rows[0]["shown_at"] <= rows[0]["submitted_at"]
    assert store.ignored_count() == 1
    # The same item under another plan is another question, so it is a vote of its own.
    assert vote(store, plan="v2") is True
    assert len(store.votes()) == 2


def test_only_known_raters_and_valid_choices_are_stored(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        vote(store, rater="nobody")
    store.add_rater("ana")
    with pytest.raises(StoreError, match="choice_image"):
        vote(store, image="C")
    assert store.votes() == []


def test_tokens_are_stored_as_hashes_and_relink_replaces_them(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    token = store.add_rater("  ana   lee ")
    assert store.rater_for_token(token) == "ana lee"
    assert token not in (tmp_path / "votes.sqlite").read_bytes().decode("latin-1")
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT token_sha256 FROM raters").fetchone()[0] == token_digest(token)
    with pytest.raises(StoreError, match="exists already"):
        store.add_rater("ana lee")
    fresh = store.relink("ana lee")
    assert store.rater_for_token(token) is None and store.rater_for_token(fresh) == "ana lee"
    with pytest.raises(StoreError, match="no rater"):
        store.relink("ben")
    with pytest.raises(StoreError, match="1 to 80"):
        store.add_rater("   ")


def _vote_many(path, rater, items, repeats):
    store = VoteStore(path)
    for _ in range(repeats):
        for item in items:
            store.record_vote(rater, "v1", item, 0, item.split(":")[0], "oracle", "blind", "A", "B")


def test_concurrent_processes_never_lose_or_double_a_vote(tmp_path):
    path = tmp_path / "votes.sqlite"
    store = VoteStore(path)
    raters = [f"r{k}" for k in range(4)]
    for rater in raters:
        store.add_rater(rater)
    items = [f"s{k}:blind:oracle" for k in range(25)]
    # Two processes per rater, each submitting every item twice: 400 submits, 100 distinct votes.
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_vote_many, args=(path, rater, items, 2)) for rater in raters for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    votes = store.votes()
    assert len(votes) == len(raters) * len(items)
    assert {(v.rater, v.item_id) for v in votes} == {(r, i) for r in raters for i in items}
    assert store.ignored_count() == 300


def test_the_session_secret_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "x" * 40)
    assert session_secret(tmp_path / "votes.sqlite") == "x" * 40
    assert not secret_path(tmp_path / "votes.sqlite").exists()
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(SecretError, match="at least 32"):
        session_secret(tmp_path / "votes.sqlite")


def test_otherwise_it_is_generated_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    votes = tmp_path / "votes.sqlite"
    first = session_secret(votes)
    assert len(first) >= 32
    assert stat.S_IMODE(secret_path(votes).stat().st_mode) == 0o600
    assert session_secret(votes) == first
    assert session_secret(tmp_path / "other" / "votes.sqlite") != first
    secret_path(votes).chmod(0o644)
    with pytest.raises(SecretError, match="readable by others"):
        session_secret(votes)
