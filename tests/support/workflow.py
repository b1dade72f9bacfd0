"""Helpers for tests that run the Snakemake workflow on a private copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny.yaml"


def copy_workflow(dest: Path) -> Path:
    """A private copy of the workflow and package, so a test can edit code without touching ours."""
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "envs", "reference", "report", "profiles"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(TINY, dest / "tiny.yaml")
    return dest


def copy_finished_run(workdir: Path, dest: Path) -> Path:
    """A copy of a workflow directory after a run, with the same file times, so that Snakemake sees the
    same up-to-date outputs (its metadata under .snakemake/ holds relative paths only)."""
    shutil.copytree(workdir, dest, symlinks=True, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("locks", "incomplete", "shadow"))
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result



def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return jobs


def validated_config(name: str = "config.yaml") -> dict:
    """config/<name> with the schema defaults the workflow's validation fills in (what rules see)."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / name).read_text())
    validate(config, str(ROOT / "config" / "schemas" / "config.schema.yaml"))
    return config
