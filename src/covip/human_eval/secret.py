"""The key that signs the page's session cookies: never a constant in the code.

It comes from the environment (COVIP_HUMAN_EVAL_SECRET), or else from a file beside the votes
database that is created once, with mode 0600, and reused, so sessions survive a restart. A key
file that others can read is refused rather than trusted.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

SECRET_ENV = "COVIP_HUMAN_EVAL_SECRET"
MIN_LENGTH = 32


class SecretError(RuntimeError):
    """No usable session key; the message says what to change."""


def secret_path(votes_path: str | Path) -> Path:
    votes_path = Path(votes_path)
    return votes_path.with_name(votes_path.name + ".secret")


def session_secret(votes_path: str | Path) -> str:
    from_env = os.environ.get(SECRET_ENV)
    if from_env is not None:
        if len(from_env) < MIN_LENGTH:
            raise SecretError(f"{SECRET_ENV} must hold at least {MIN_LENGTH} characters "
                              f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        return from_env
    path = secret_path(votes_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two servers starting at once cannot both write a key; the loser reads the winner's.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another server may have created the file a moment ago and not written the key yet.
        for _ in range(50):
            if path.stat().st_size >= MIN_LENGTH:
                break
            time.sleep(0.02)
        return _read_existing(path)
    with os.fdopen(handle, "w") as out:
        out.write(secrets.token_hex(32))
    return _read_existing(path)


def _read_existing(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretError(f"{path}: session key readable by others (mode {mode:o}); run `chmod 600 {path}` "
                          f"or set {SECRET_ENV}")
    key = path.read_text().strip()
    if len(key) < MIN_LENGTH:
        raise SecretError(f"{path}: session key shorter than {MIN_LENGTH} characters; delete the file to make a new one")
    return key
