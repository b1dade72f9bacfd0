"""The workflow on a real (one-node) SLURM cluster through `--profile profiles/slurm`.

A session fixture brings SLURM up on this machine with tests/slurm/bring_up.sh (installing Debian's
slurm-wlm, slurmdbd, munge and mariadb-server when they are missing), runs the tiny workflow once
locally and once through the SLURM executor, and checks that both runs wrote the same artifacts.
Without root or apt-get the test is skipped with the reason; under CI=true it must run, so there
that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support.workflow import copy_workflow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "slurm"
# Columns that measure the run rather than describe its results.
VOLATILE_COLUMNS = {"latency_s", "wall_s"}  # timings
TRAINED_POLICY = "tiny_vlm_gspo"  # in tests/data/tiny.yaml

pytestmark = pytest.mark.integration


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"SLURM integration test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a cluster that is up and idle for this session; stopped afterwards."""
    if os.geteuid() != 0:
        _unavailable("bringing up SLURM needs root (to install and start slurmctld, slurmd, slurmdbd, munged, mariadbd)")
    state = tmp_path_factory.mktemp("slurm")
    started = time.perf_counter()
    try:
        result = subprocess.run([str(SCRIPTS / "bring_up.sh"), str(state)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        subprocess.run([str(SCRIPTS / "tear_down.sh"), str(state)], timeout=120)
        pytest.fail("SLURM bring-up took more than 15 minutes")
    bring_up_s = time.perf_counter() - started
    if result.returncode == 3:
        _unavailable(result.stderr.strip())
    if result.returncode != 0:
        subprocess.run([str(SCRIPTS / "tear_down.sh"), str(state)], timeout=120)
        pytest.fail(f"SLURM bring-up failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    print(f"\nSLURM bring-up: {bring_up_s:.1f} s ({result.stdout.strip().splitlines()[-1]})")
    try:
        yield {"SLURM_CONF": str(state / "etc" / "slurm.conf"), "bring_up_s": bring_up_s}
    finally:
        subprocess.run([str(SCRIPTS / "tear_down.sh"), str(state)], timeout=120)


def run_snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 1500) -> float:
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(workdir / "src"), PYTHONDONTWRITEBYTECODE="1")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-6000:]}\n{logs[-4000:]}")
    return time.perf_counter() - started


def artifacts(outdir: Path) -> dict[str, object]:
    return {
        str(p.relative_to(outdir)): pq.read_table(p)
        for p in sorted(outdir.rglob("*.parquet"))
        if not p.name.startswith(".") and p.relative_to(outdir).parts[0] != "usage"  # timings, cache hits
    }


def same_table(local: pa.Table, cluster: pa.Table) -> bool:
    """Equal, column by column, once the output folder's name is the same in both: a model the run
    trained itself is named by its path (`<outdir>/training/<run>/model`), so its identity strings
    differ by `local/` against `cluster/` and nothing else."""
    if local.column_names != cluster.column_names or local.num_rows != cluster.num_rows:
        return False
    for name in local.column_names:
        mine = cluster.column(name).to_pylist()
        if pa.types.is_string(cluster.column(name).type):
            mine = [v.replace("cluster/", "local/") if v is not None else v for v in mine]
        if mine != local.column(name).to_pylist():
            return False
    return True


def test_workflow_on_slurm_matches_a_local_run(slurm_cluster, tmp_path):
    if shutil.which("sbatch") is None:
        pytest.fail("bring_up.sh reported success but sbatch is not on PATH")
    workdir = copy_workflow(tmp_path)
    (workdir / "local.yaml").write_text("outdir: local\n")
    (workdir / "cluster.yaml").write_text("outdir: cluster\n")
    submitted_after = time.strftime("%Y-%m-%dT%H:%M:%S")
    local_s = run_snakemake(workdir, "--cores", "2", "--configfile", "tiny.yaml", "local.yaml")
    cluster_s = run_snakemake(
        workdir,
        "--profile", "profiles/slurm",
        "--slurm-init-seconds-before-status-checks", "2",
        "--configfile", "tiny.yaml", "cluster.yaml",
        # Not the cluster's default partition: every job must land in it all the same.
        env={"SLURM_CONF": slurm_cluster["SLURM_CONF"], "SBATCH_PARTITION": "covip"},
    )
    print(f"\ntiny workflow: local --cores 2 {local_s:.0f} s, SLURM executor {cluster_s:.0f} s")

    # Every job really went through SLURM and finished there.
    accounted = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobName,State,Partition", "-S", submitted_after],
        env=dict(os.environ, SLURM_CONF=slurm_cluster["SLURM_CONF"]), capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    states = [line.split("|")[1] for line in accounted if "|" in line]
    assert len(states) >= 20 and set(states) == {"COMPLETED"}, accounted
    # SBATCH_PARTITION was honoured (the plugin's `-p <default partition>` did not override it).
    assert {line.split("|")[2] for line in accounted if "|" in line} == {"covip"}, accounted

    local, cluster = artifacts(workdir / "local"), artifacts(workdir / "cluster")
    assert set(local) == set(cluster) and len(local) >= 20
    for name, table in local.items():
        keep = [c for c in table.column_names if c not in VOLATILE_COLUMNS]
        assert same_table(table.select(keep), cluster[name].select(keep)), f"{name} differs between the local and the SLURM run"
    assert any(TRAINED_POLICY in name for name in local)  # the GSPO-trained policy was compared too
    assert (workdir / "cluster" / "report" / "summary.md").is_file()
