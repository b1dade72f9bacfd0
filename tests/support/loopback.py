"""Helpers for the tests that start a server process on loopback: a free port, and waiting until it answers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float, failure: Callable[[], str],
                  poll_s: float = 0.5) -> None:
    """Poll `url` until it answers; if `process` exits or `timeout_s` passes, kill it and fail the test
    with `failure()` (e.g. the tail of its log)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(failure())
            time.sleep(poll_s)
