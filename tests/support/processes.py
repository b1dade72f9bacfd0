"""Processes of this machine, as the tests that check for orphans see them."""

from __future__ import annotations

import os
from pathlib import Path

from covip.serving.lifeline import process_start


def live_processes(marker: str) -> dict[int, str]:
    """pid -> command line (first 200 characters) of every live (not zombie) process but this one whose
    command line contains `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and process_start(int(entry.name)) is not None:
            found[int(entry.name)] = cmdline[:200]
    return found
