"""A Snakemake lock left by a run killed with SIGKILL is named at parse time, with the command that clears it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from covip.workflow.stale_lock import live_snakemakes, stale_lock_message
from support.workflow import copy_workflow


def _lock(workdir):
    (workdir / ".snakemake" / "locks").mkdir(parents=True)
    (workdir / ".snakemake" / "locks" / "0.output.lock").write_text(str(workdir / "results" / "x") + "\n")


def test_a_lock_counts_as_stale_only_when_no_snakemake_of_this_host_works_there(tmp_path):
    assert stale_lock_message(tmp_path) is None  # no lock at all
    _lock(tmp_path)
    # A stand-in for a live run: a process whose command line names snakemake, working in the folder.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "snakemake"], cwd=tmp_path)
    try:
        deadline = time.time() + 10
        while live.pid not in live_snakemakes(tmp_path):
            assert time.time() < deadline
            time.sleep(0.05)
        assert stale_lock_message(tmp_path) is None
        elsewhere = tmp_path / "other"
        elsewhere.mkdir()
        _lock(elsewhere)
        assert stale_lock_message(elsewhere) is not None  # a run in another folder holds no lock here
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    message = stale_lock_message(tmp_path)
    assert message is not None and "snakemake --unlock" in message
    assert stale_lock_message(tmp_path, ["snakemake", "--unlock"]) is None


def test_after_kill_9_of_snakemake_the_rerun_names_the_stale_lock(tmp_path):
    workdir = copy_workflow(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "tiny.yaml"]
    run = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = workdir / ".snakemake" / "locks"
    deadline = time.time() + 120
    while not (locks.is_dir() and any(locks.glob("*.lock"))):
        assert run.poll() is None and time.time() < deadline, "the run never took its lock"
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.time() + 60  # its jobs notice their owner is gone and end (covip.serving.lifeline)
    while live_snakemakes(workdir):
        assert time.time() < deadline, "a job of the killed run kept running"
        time.sleep(0.2)

    again = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0  # Snakemake itself still refuses the locked folder ...
    stale = [line for line in again.stderr.splitlines() if "no longer runs" in line]
    assert len(stale) == 1 and "snakemake --unlock" in stale[0]  # ... after one clear line saying why and what to do
    subprocess.run([*command, "--unlock"], cwd=workdir, env=env, capture_output=True, timeout=300, check=True)
    dry = subprocess.run([*command, "-n"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "no longer runs" not in dry.stderr
