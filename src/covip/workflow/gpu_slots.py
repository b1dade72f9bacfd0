"""Disjoint GPU sets for the jobs of one machine.

Snakemake counts `--resources gpu=N` but never says which devices a job may use, so two GPU jobs
would both start on device 0. Here every device of the machine's pool has a lock file; a job takes
N of them with `fcntl.flock` (all or none, so two jobs never deadlock on half a set) and sets
`CUDA_VISIBLE_DEVICES` to what it got before torch or vLLM initialise CUDA. The kernel drops a flock
when the last descriptor on it closes, i.e. when the job ends, crashes or is SIGKILLed, so no
device leaks.

The pool respects what was already assigned: an existing `CUDA_VISIBLE_DEVICES` (the user's, or the
one SLURM sets for a `--gres` job) or SLURM's `SLURM_JOB_GPUS`; a job never widens it. Otherwise it is
`COVIP_GPU_COUNT` (for simulations and tests) or the devices `nvidia-smi -L` lists.

Environment: `COVIP_GPU_LOCK_DIR` (default `.snakemake/gpu_slots` under the working directory; inside
a SLURM job a per-job subfolder, since device numbers there are relative to the allocation),
`COVIP_GPU_WAIT_S` (how long to wait for busy devices, default 3600).

Shell rules wrap their command: `covip gpu-run --gpus N --rule NAME -- cmd ...` (covip.workflow.launch:
the command and the model servers it calls run with the locks inherited, so the devices stay taken
until every process of the job has exited).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

POLL_S = 0.05


class GpuRequestError(RuntimeError):
    """A job asked for more GPUs than its pool has, or waited too long for busy ones."""


@dataclass(frozen=True)
class DevicePool:
    devices: tuple[str, ...]
    source: str  # where the pool came from, for messages


def device_pool(env: Mapping[str, str] | None = None) -> DevicePool:
    """The devices jobs here may share out, never more than were already assigned to us."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # Set but empty means "no GPUs", which must be respected too.
        return DevicePool(_split(visible), "CUDA_VISIBLE_DEVICES")
    if env.get("SLURM_JOB_GPUS"):
        return DevicePool(_split(env["SLURM_JOB_GPUS"]), "SLURM_JOB_GPUS")
    if env.get("COVIP_GPU_COUNT") is not None:
        count = int(env["COVIP_GPU_COUNT"])
        return DevicePool(tuple(str(i) for i in range(count)), "COVIP_GPU_COUNT")
    return DevicePool(_nvidia_smi_devices(), "nvidia-smi")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _nvidia_smi_devices() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    return tuple(str(i) for i, line in enumerate(l for l in listing.splitlines() if l.startswith("GPU ")))


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env.get("COVIP_GPU_LOCK_DIR") or Path(".snakemake") / "gpu_slots")
    # Inside a SLURM allocation device numbers are relative to it: another job on the node may also
    # see a "0" that is a different physical GPU, so its locks must not collide with ours.
    if env.get("SLURM_JOB_ID"):
        base = base / f"slurm-{env['SLURM_JOB_ID']}"
    return base.resolve()


@dataclass
class GpuSlots:
    """Held devices; release() (or process exit) frees them."""

    devices: tuple[str, ...]
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def visible(self) -> str:
        return ",".join(self.devices)

    def fds_of(self, devices) -> tuple[int, ...]:
        """The lock descriptors of some of the held devices (to hand to a process that uses them)."""
        return tuple(self._fds[self.devices.index(device)] for device in devices)

    def release(self) -> None:
        for fd in self._fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "GpuSlots":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_path(directory: Path, device: str) -> Path:
    return directory / f"gpu{device}.lock"


def _try_take(directory: Path, devices: Sequence[str], count: int, who: str) -> GpuSlots | None:
    taken: list[tuple[str, int]] = []
    for device in devices:
        fd = os.open(_lock_path(directory, device), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        taken.append((device, fd))
        if len(taken) == count:
            break
    if len(taken) < count:
        # All or nothing: holding half a set while waiting for the rest could deadlock two jobs.
        for _, fd in taken:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return None
    for _, fd in taken:
        # Who holds it, for `status` and for the message of a job that waits too long.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{who}\n".encode(), 0)
    return GpuSlots(tuple(d for d, _ in taken), [fd for _, fd in taken])


def holders(directory: Path | None = None, pool: DevicePool | None = None) -> dict[str, str | None]:
    """{device: holder description or None if free}; probes each lock without keeping it."""
    directory = directory or lock_dir()
    pool = pool or device_pool()
    status: dict[str, str | None] = {}
    for device in pool.devices:
        path = _lock_path(directory, device)
        if not path.exists():
            status[device] = None
            continue
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            status[device] = path.read_text().strip() or "unknown"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            status[device] = None
        finally:
            os.close(fd)
    return status


def check_requests(requests: Mapping[str, int], pool: DevicePool | None = None) -> None:
    """Fail before any job starts when a rule wants more GPUs than this machine's pool has."""
    pool = pool or device_pool()
    too_big = {rule: n for rule, n in requests.items() if n > len(pool.devices)}
    if too_big:
        listing = ", ".join(f"rule {rule} asks for {n} GPU(s)" for rule, n in sorted(too_big.items()))
        raise GpuRequestError(
            f"{listing} but only {len(pool.devices)} are available here ({pool.source}: "
            f"{','.join(pool.devices) or 'none'}); lower its gpu resource or run it on a bigger machine"
        )


def acquire(
    count: int,
    rule: str = "job",
    pool: DevicePool | None = None,
    directory: Path | None = None,
    wait_s: float | None = None,
) -> GpuSlots:
    """Take `count` devices of the pool, waiting (bounded) while others hold them."""
    pool = pool or device_pool()
    if count < 0:
        raise GpuRequestError(f"rule {rule}: gpu must be >= 0, got {count}")
    check_requests({rule: count}, pool)
    if count == 0:
        return GpuSlots(())
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    wait_s = float(os.environ.get("COVIP_GPU_WAIT_S", 3600)) if wait_s is None else wait_s
    who = json.dumps({"rule": rule, "pid": os.getpid(), "host": os.uname().nodename, "since": time.time()})
    # Start the scan at a random device so concurrent jobs do not all contend for device 0 first.
    offset = random.randrange(len(pool.devices))
    order = pool.devices[offset:] + pool.devices[:offset]
    deadline = time.monotonic() + wait_s
    while True:
        slots = _try_take(directory, order, count, who)
        if slots is not None:
            pairs = sorted(zip(slots.devices, slots._fds), key=lambda pair: pool.devices.index(pair[0]))
            slots.devices, slots._fds = tuple(d for d, _ in pairs), [fd for _, fd in pairs]  # in the pool's order
            return slots
        if time.monotonic() >= deadline:
            busy = {d: h for d, h in holders(directory, pool).items() if h}
            raise GpuRequestError(f"rule {rule}: waited {wait_s:.0f} s for {count} free GPU(s); held: {busy}")
        time.sleep(POLL_S * (1 + random.random()))


def status() -> dict:
    """The pool, where its locks live, and who holds each device (`covip gpu-status`)."""
    pool = device_pool()
    return {"source": pool.source, "lock_dir": str(lock_dir()), "devices": holders(pool=pool)}
