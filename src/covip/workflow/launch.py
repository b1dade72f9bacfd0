"""`covip gpu-run`: a shell rule's command on GPUs of its own, with the model servers it calls.

The job takes its devices from the pool (covip.workflow.gpu_slots), starts a server for every served
registry entry it calls on the last of them (covip.serving), then runs the command on the rest with
`CUDA_VISIBLE_DEVICES` set and the servers' addresses in `COVIP_SERVED`. The command runs in a
process group of its own, which gpu-run ends when the command ends (stray workers), when gpu-run is
told to stop (SIGTERM, SIGINT, SIGHUP: forwarded), or when the Snakemake process of the run is gone;
the command also gets SIGTERM if gpu-run itself is killed. The lock descriptors are inherited, so the
devices stay taken until every process of the job has exited; then the servers stop and the devices
are released.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from covip.clients.registry import SERVED_ENV
from covip.serving.lifeline import OWNER_ENV, POLL_S, alive, end_group, set_parent_death_signal
from covip.serving.server import ServerSet, served_specs, split_devices, start_servers
from covip.workflow.gpu_slots import acquire

log = logging.getLogger("covip.workflow")
GRACE_S = 30.0


def run_with_gpus(count: int, rule: str, command: Sequence[str], *, models: Mapping[str, Mapping] | None = None,
                  log_dir: str | Path | None = None, job: str | None = None, hf_home: str | None = None) -> int:
    """Run `command` holding `count` devices, with servers for the served entries among `models`
    (name -> registry entry); returns the command's exit status."""
    set_parent_death_signal(signal.SIGTERM)
    stop: dict[str, int | None] = {"signal": None}

    def on_signal(signum, _frame) -> None:
        stop["signal"] = signum

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    slots = acquire(count, rule)
    specs = served_specs(models or {}, list(models or {}))
    own, server_devices = split_devices(slots.devices, specs)
    servers = ServerSet()
    try:
        if specs:
            logs = Path(log_dir or ".") / "servers"
            servers = start_servers(specs, server_devices, logs, job or rule, hf_home=hf_home, fds_of=slots.fds_of)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(own))
        if servers.urls:
            env[SERVED_ENV] = json.dumps(servers.urls)
        if stop["signal"] is not None:
            return 128 + stop["signal"]
        child = subprocess.Popen(list(command), env=env, start_new_session=True, pass_fds=slots.fds_of(own),
                                 preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
        owner = os.environ.get(OWNER_ENV)
        status = None
        while status is None:
            status = child.poll()
            if status is not None:
                break
            if stop["signal"] is not None or (owner and not alive(owner)):
                why = f"signal {stop['signal']}" if stop["signal"] is not None else "the run's Snakemake process is gone"
                log.warning("rule %s: ending its command (%s)", rule, why)
                end_group(child.pid, GRACE_S, lambda: child.poll() is not None)
                status = child.wait()
                break
            time.sleep(POLL_S)
        end_group(child.pid, 5.0, lambda: True)  # workers the command left behind
        return status
    finally:
        servers.stop()
        slots.release()
