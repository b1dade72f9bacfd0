"""Fetch a hub benchmark's files into the Hugging Face cache, ahead of the jobs (which run offline).

`download_benchmark` snapshots the dataset repository (only `allow_patterns`) with huggingface_hub into
HF_HOME's hub cache, unpacks the archives named in `extract` into a folder beside the snapshot, and
returns a manifest: where the data folder is, the revision it resolved to, the files and their size.
The rule `download_benchmark_data` writes it; `general_benchmark` jobs read the data folder from it.
"""

from __future__ import annotations

import fnmatch
import os
import tarfile
import zipfile
from pathlib import Path

from covip.harness.catalog import Benchmark


def _extract(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(into)
    else:
        with tarfile.open(archive) as handle:
            handle.extractall(into, filter="data")


def download_benchmark(benchmark: Benchmark, hf_home: str | None = None) -> dict:
    """Snapshot `benchmark`'s dataset repository into the hub cache and unpack its archives."""
    if not benchmark.from_hub:
        raise ValueError(f"benchmark '{benchmark.name}' is built by the workflow, not downloaded")
    if hf_home:
        os.environ["HF_HOME"] = hf_home
    from huggingface_hub import snapshot_download

    data = benchmark.data
    snapshot = Path(snapshot_download(repo_id=data["repo_id"], repo_type="dataset", revision=data.get("revision"),
                                      allow_patterns=data.get("allow_patterns")))
    files = sorted(p for p in snapshot.rglob("*") if p.is_file())
    folder = snapshot
    if data.get("extract"):
        # Unpacked beside the read-only snapshot, keyed by its revision, so a new revision unpacks anew.
        folder = snapshot.parent.parent / "covip-extracted" / snapshot.name
        for path in files:
            relative = str(path.relative_to(snapshot))
            if any(fnmatch.fnmatch(relative, pattern) for pattern in data["extract"]):
                _extract(path, folder)
        for path in files:  # the non-archive files too, so the data folder holds everything
            relative = path.relative_to(snapshot)
            if not any(fnmatch.fnmatch(str(relative), pattern) for pattern in data["extract"]):
                link = folder / relative
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(path.resolve())
    return {
        "benchmark": benchmark.name, "data": benchmark.data_name, "kind": "hub", "repo_id": data["repo_id"],
        "revision": snapshot.name, "data_dir": str(folder), "files": [str(p.relative_to(snapshot)) for p in files],
        "bytes": sum(p.stat().st_size for p in files), "licence": benchmark.licence,
    }
