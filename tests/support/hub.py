"""A hub cache seeded by hand, as an air-gapped cluster's HF_HOME is: no network, the real layout."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def seed_hub_cache(hf_home: Path, repo: str, source: Path | dict[str, bytes], revision: str = "main",
                   repo_type: str = "model") -> Path:
    """Put a model (or dataset) repository into `<hf_home>/hub` the way huggingface_hub lays it out
    (refs/<revision> naming a commit, snapshots/<commit>/...), from a folder or {file name: bytes};
    returns the snapshot."""
    org, name = repo.split("/")
    root = Path(hf_home) / "hub" / f"{repo_type}s--{org}--{name}"
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    if isinstance(source, dict):
        for file, data in source.items():
            (snapshot / file).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file).write_bytes(data)
    else:
        shutil.copytree(source, snapshot, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snapshot
