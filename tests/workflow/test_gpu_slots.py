"""GPU slots on one machine, simulated on CPU: disjoint device sets, nothing leaks, not even on SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from covip.workflow.gpu_slots import GpuRequestError, acquire, device_pool, holders

ROOT = Path(__file__).resolve().parents[2]
SIMULATED = 8
JOBS = 24

# What every simulated job runs while it holds its devices: note them with the times it held them.
RECORDER = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.time()
    time.sleep(float(sys.argv[2]))
    with open(sys.argv[1], "w") as f:
        json.dump({"devices": os.environ["CUDA_VISIBLE_DEVICES"].split(","), "start": start, "end": time.time()}, f)
    """
)


def sim_env(lock_dir: Path, count: int = SIMULATED, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_JOB_ID")}
    env.update(COVIP_GPU_COUNT=str(count), COVIP_GPU_LOCK_DIR=str(lock_dir), PYTHONPATH=str(ROOT / "src"))
    env.update(extra)
    return env


def wrapped(env: dict, gpus: int, *cmd: str, rule: str = "sim") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "covip", "gpu-run", "--gpus", str(gpus), "--rule", rule, "--", *cmd],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_pool_respects_assigned_devices():
    assert device_pool({"CUDA_VISIBLE_DEVICES": "3,5,7", "COVIP_GPU_COUNT": "8"}).devices == ("3", "5", "7")
    assert device_pool({"CUDA_VISIBLE_DEVICES": "", "COVIP_GPU_COUNT": "8"}).devices == ()
    assert device_pool({"SLURM_JOB_GPUS": "2,6"}).devices == ("2", "6")
    assert device_pool({"COVIP_GPU_COUNT": "4"}).devices == ("0", "1", "2", "3")


def test_a_job_never_widens_the_assigned_set(tmp_path):
    env = sim_env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="4,6")
    record = tmp_path / "r.json"
    job = wrapped(env, 2, sys.executable, "-c", RECORDER, str(record), "0")
    assert job.wait(timeout=60) == 0, job.stderr.read()
    assert sorted(json.loads(record.read_text())["devices"]) == ["4", "6"]
    job = wrapped(env, 3, sys.executable, "-c", RECORDER, str(record), "0", rule="too_big")
    assert job.wait(timeout=60) != 0
    assert "too_big asks for 3 GPU(s) but only 2" in job.stderr.read()


def test_asking_for_more_than_the_machine_has_fails_before_starting(tmp_path):
    marker = tmp_path / "ran"
    job = wrapped(sim_env(tmp_path / "locks"), 9, "touch", str(marker), rule="train_gspo")
    assert job.wait(timeout=60) == 2
    err = job.stderr.read()
    assert "rule train_gspo asks for 9 GPU(s) but only 8 are available" in err
    assert not marker.exists()


def test_many_concurrent_jobs_get_disjoint_devices_and_free_them(tmp_path):
    locks = tmp_path / "locks"
    env = sim_env(locks)
    wanted = [1 + (i % 3) for i in range(JOBS)]  # 1-3 GPUs each, 48 device-holds over 8 devices
    jobs = []
    for i, gpus in enumerate(wanted):
        jobs.append(wrapped(env, gpus, sys.executable, "-c", RECORDER, str(tmp_path / f"{i}.json"), str(0.2 + 0.05 * (i % 4))))
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()
    records = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(JOBS)]
    for gpus, record in zip(wanted, records):
        assert len(set(record["devices"])) == gpus and set(record["devices"]) <= {str(d) for d in range(SIMULATED)}
    # Any two jobs that ran at the same time held disjoint devices.
    overlapping_pairs = 0
    for i in range(JOBS):
        for j in range(i + 1, JOBS):
            a, b = records[i], records[j]
            if a["start"] < b["end"] and b["start"] < a["end"]:
                overlapping_pairs += 1
                assert not set(a["devices"]) & set(b["devices"]), (i, j, a, b)
    assert overlapping_pairs > 0, "the jobs never ran concurrently, so the test showed nothing"
    assert holders(locks, device_pool(env)) == {str(d): None for d in range(SIMULATED)}


def test_a_killed_holder_gives_its_devices_back(tmp_path):
    locks = tmp_path / "locks"
    env = sim_env(locks)
    holder = wrapped(env, SIMULATED, "sleep", "120", rule="victim")
    pool = device_pool(env)
    deadline = time.monotonic() + 60
    while not all(holders(locks, pool).values()):
        assert holder.poll() is None and time.monotonic() < deadline, "the holder never took the devices"
        time.sleep(0.05)
    assert all('"victim"' in h for h in holders(locks, pool).values())
    with pytest.raises(GpuRequestError, match="waited"):
        acquire(1, "other", pool=pool, directory=locks, wait_s=0.3)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with acquire(SIMULATED, "after", pool=pool, directory=locks, wait_s=30) as slots:
        assert sorted(slots.devices) == sorted(pool.devices)
    assert not any(holders(locks, pool).values())


@pytest.mark.integration
def test_snakemake_gpu_jobs_get_their_own_devices(tmp_path):
    """StageRun (every `script:` rule) takes the job's `resources.gpu` devices from the pool."""
    (tmp_path / "probe.py").write_text(textwrap.dedent(
        """
        import json, os, time
        from covip.workflow.run import StageRun
        with StageRun(snakemake) as run:
            start = time.time()
            time.sleep(0.3)
            record = {"devices": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()}
            open(snakemake.output[0], "w").write(json.dumps(record))
        """
    ))
    (tmp_path / "Snakefile").write_text(textwrap.dedent(
        """
        config.update(seed=1, outdir="out")
        rule all:
            input: expand("out/{i}.json", i=range(8))
        rule probe:
            output: "out/{i}.json"
            log: "out/{i}.log"
            resources: gpu=lambda wc: 1 + int(wc.i) % 2
            script: "probe.py"
        rule greedy:
            output: "greedy.json"
            log: "greedy.log"
            resources: gpu=5
            script: "probe.py"
        """
    ))
    env = sim_env(tmp_path / "locks", count=4)
    run = [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=4"]
    result = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((tmp_path / f"out/{i}.json").read_text()) for i in range(8)]
    for i, record in enumerate(records):
        assert len(record["devices"].split(",")) == 1 + i % 2
        for other in records[i + 1:]:
            if record["start"] < other["end"] and other["start"] < record["end"]:
                assert not set(record["devices"].split(",")) & set(other["devices"].split(","))
    # A rule that wants more than the machine has fails at its start, naming itself and the counts.
    result = subprocess.run([*run[:-1], "gpu=8", "--", "greedy.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "rule greedy asks for 5 GPU(s) but only 4 are available" in (tmp_path / "greedy.log").read_text()


@pytest.mark.integration
def test_the_workflow_refuses_a_rule_bigger_than_the_machine_before_any_job(tmp_path):
    from support.workflow import copy_workflow

    workdir = copy_workflow(tmp_path)
    (workdir / "big.yaml").write_text("resources: {rules: {build_concept_pool: {gpu: 9}}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=9", "--configfile", "tiny.yaml", "big.yaml"],
        cwd=workdir, env=sim_env(tmp_path / "locks", PYTHONPATH=str(workdir / "src")), capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode != 0
    # covip preflight, run when the workflow starts, reports it (one line per problem)
    assert "gpus: rule build_concept_pool: asks for 9 GPU(s) but only 8 are available" in result.stdout + result.stderr
    assert not (workdir / "results" / "concepts").exists(), "no job may start"
