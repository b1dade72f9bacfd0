"""Start the model servers a job calls, on GPUs of its own, and end them with the job.

A registry entry with `serve:` (covip.clients.spec.ServeSpec) is served by the workflow: every job
that calls it starts its own server (`vllm serve` in production, llama.cpp's server in the tests)
through `covip.serving.supervisor`, on devices the job took from covip.workflow.gpu_slots (and so
counted in its Snakemake `gpu` resource), on a free loopback port, with the log under
`<outdir>/logs/servers/`. The job waits until `GET /v1/models` answers before any request is sent,
and its registry entry gets the server's base_url. When the job ends, however it ends, so does the
server: the job stops it, or its supervisor sees the job gone (docs/gpus-and-slurm.md has the design
and its trade-offs).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from covip.clients.spec import ModelSpec
from covip.clients.weights import local_path, source_of

log = logging.getLogger("covip.serving")
HOST = "127.0.0.1"
_PORT_TRIES = 3


class ServerError(RuntimeError):
    """A model server that did not start, or did not answer in time; the message has its log's tail."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_argv(spec: ModelSpec, weights: str, port: int, host: str = HOST) -> list[str]:
    """The server's command line for this entry, with {python}, {weights}, {model}, {host} and {port}
    filled in; any other brace is left alone (vLLM takes JSON flags such as '{"image": 8}')."""
    values = {"python": sys.executable, "weights": weights, "model": spec.model, "host": host, "port": str(port)}
    argv = []
    for part in spec.serve.argv_template:
        for name, value in values.items():
            part = part.replace("{" + name + "}", value)
        argv.append(part)
    return argv


def answers(base_url: str, timeout_s: float = 5.0) -> bool:
    """Whether the server lists its models (`GET <base_url>/models` with status 200)."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as response:
            json.loads(response.read() or b"{}")
            return response.status == 200
    except (OSError, ValueError, urllib.error.HTTPError):
        return False


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class ManagedServer:
    """One running server: its entry, address, devices, log and supervisor process."""

    role: str
    base_url: str
    devices: tuple[str, ...]
    log_path: Path
    process: subprocess.Popen
    grace_s: float
    started_s: float = 0.0

    def stop(self) -> None:
        """End the server's process group and wait for the supervisor (bounded), then close the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.grace_s + 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        log.info("server of %s stopped (supervisor status %s); log: %s", self.role, self.process.returncode, self.log_path)


@dataclass
class ServerSet:
    """The servers of one job; `urls` is what its model registry gets."""

    servers: list[ManagedServer] = field(default_factory=list)

    @property
    def urls(self) -> dict[str, str]:
        return {server.role: server.base_url for server in self.servers}

    def stop(self) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as error:  # noqa: BLE001 - stop the others whatever happens to one
                log.warning("could not stop the server of %s: %s", server.role, error)
        self.servers.clear()

    def __enter__(self) -> "ServerSet":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def served_specs(models: Mapping[str, Mapping], roles: Sequence[str]) -> dict[str, ModelSpec]:
    """The registry entries among `roles` that the workflow serves, in order, each once."""
    specs = {}
    for role in dict.fromkeys(roles):
        if role in models and models[role].get("serve") is not None:
            specs[role] = ModelSpec.from_config(role, dict(models[role]))
    return specs


def split_devices(devices: Sequence[str], specs: Mapping[str, ModelSpec]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(devices for the job's own in-process models, {entry: its server's devices}); servers take
    theirs from the end of the job's devices."""
    rest = list(devices)
    taken: dict[str, tuple[str, ...]] = {}
    for role, spec in specs.items():
        count = spec.serve.gpus
        if count > len(rest):
            raise ServerError(f"models.{role}.serve.gpus is {count} but the job holds only {len(rest)} more GPU(s): {rest}")
        taken[role] = tuple(rest[len(rest) - count:]) if count else ()
        del rest[len(rest) - count:]
    return tuple(rest), taken


def start_server(spec: ModelSpec, devices: Sequence[str], log_path: Path, *, hf_home: str | None = None,
                 keep_fds: Sequence[int] = ()) -> ManagedServer:
    """Start `spec`'s server on `devices` and wait until it answers (ServerError with its log if not)."""
    source = source_of(spec)
    weights = local_path(source, hf_home) if source is not None else spec.model
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(devices), **spec.serve.env)
    last = ""
    for attempt in range(_PORT_TRIES):
        port = free_port()
        argv = server_argv(spec, weights, port)
        base_url = f"http://{HOST}:{port}/v1"
        command = [sys.executable, "-m", "covip.serving.supervisor", "--parent", str(os.getpid()),
                   "--grace", str(spec.serve.grace_s), *[f"--keep-fd={fd}" for fd in keep_fds], "--", *argv]
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} serving models.{spec.name} on GPU(s) "
                      f"[{','.join(devices)}] at {base_url}\n# {' '.join(argv)}\n")
            out.flush()
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       pass_fds=tuple(keep_fds))
        server = ManagedServer(spec.name, base_url, tuple(devices), log_path, process, spec.serve.grace_s)
        started = time.monotonic()
        deadline = started + spec.serve.startup_timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            if answers(base_url):
                server.started_s = time.monotonic() - started
                log.info("server of %s answers at %s after %.1f s (GPU(s) [%s]; log %s)", spec.name, base_url,
                         server.started_s, ",".join(devices), log_path)
                return server
            time.sleep(0.5)
        timed_out = process.poll() is None
        server.stop()
        last = _tail(log_path)
        if timed_out:
            raise ServerError(f"models.{spec.name}: the server did not answer {base_url}/models within "
                              f"{spec.serve.startup_timeout_s:.0f} s (serve.startup_timeout_s); its log {log_path} ends:\n{last}")
        if "address already in use" not in last.lower():
            break  # not a port race: trying again would fail the same way
        log.warning("port %d was taken before the server of %s bound it; trying another", port, spec.name)
    raise ServerError(f"models.{spec.name}: the server exited before answering; its log {log_path} ends:\n{last}")


def start_servers(specs: Mapping[str, ModelSpec], devices: Mapping[str, Sequence[str]], log_dir: Path, job: str, *,
                  hf_home: str | None = None, fds_of=lambda devices: ()) -> ServerSet:
    """Start every served entry of a job (`devices`: entry -> its devices); all or none."""
    servers = ServerSet()
    try:
        for role, spec in specs.items():
            log_path = log_dir / f"{job.replace('/', '.')}.{role}.log"
            servers.servers.append(start_server(spec, devices[role], log_path, hf_home=hf_home,
                                                keep_fds=fds_of(devices[role])))
    except BaseException:
        servers.stop()
        raise
    return servers

