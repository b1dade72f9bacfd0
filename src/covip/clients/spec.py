"""One entry of the config's `models:` registry, as the registry, the backends and the workflow see it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from covip.clients.backends import BACKENDS, STAND_IN_BACKENDS, UnknownBackendError, resolved_options
from covip.clients.base import MissingCredentialsError
from covip.clients.dialects import DIALECTS, check_reasoning_effort, check_sampling, resolve_dialect


@dataclass(frozen=True)
class ServerCommand:
    """How to start one kind of OpenAI-compatible server. The argv may use {python} (the job's
    interpreter), {weights} (the local weights: a folder or file), {model} (the name the server
    answers to, the entry's `model`), {host} and {port}."""

    argv: tuple[str, ...]
    env: str  # the conda env (envs/<env>.yaml) that has the server installed
    summary: str = ""


# The server commands a registry entry's `serve.command` may name; a list of strings is a command of
# your own (same placeholders). `vllm serve` is the production server; the tests serve the Gemma 3
# GGUF with llama.cpp's server through the very same path.
SERVER_COMMANDS = {
    "vllm": ServerCommand(("vllm", "serve", "{weights}", "--host", "{host}", "--port", "{port}",
                           "--served-model-name", "{model}"), "vllm", "vLLM's OpenAI-compatible server"),
    "llama_cpp": ServerCommand(("{python}", "-m", "llama_cpp.server", "--model", "{weights}", "--host", "{host}",
                                "--port", "{port}", "--model_alias", "{model}"), "data",
                               "llama-cpp-python's server (a GGUF file)"),
}


@dataclass(frozen=True)
class ServeSpec:
    """`serve:` of a registry entry: the workflow starts this server for each job that calls the entry,
    on GPUs of the job's own, and writes the entry's base_url itself (covip.serving)."""

    command: str | tuple[str, ...] = "vllm"
    gpus: int = 1
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 1800.0
    grace_s: float = 30.0

    @classmethod
    def from_config(cls, name: str, entry: Any) -> "ServeSpec":
        where = f"models.{name}.serve"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping (command, gpus, args, env, startup_timeout_s, grace_s), got {entry!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        command = entry.get("command", "vllm")
        if isinstance(command, str):
            if command not in SERVER_COMMANDS:
                raise ValueError(f"{where}.command: unknown server '{command}' (choose from {sorted(SERVER_COMMANDS)}, "
                                 "or give the command as a list of strings)")
        elif isinstance(command, (list, tuple)) and command and all(isinstance(part, str) for part in command):
            command = tuple(command)
        else:
            raise ValueError(f"{where}.command: a server name {sorted(SERVER_COMMANDS)} or a non-empty list of strings, got {command!r}")
        gpus = entry.get("gpus", 1)
        if not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"{where}.gpus: a whole number >= 0, got {gpus!r}")
        args = entry.get("args", ())
        if not isinstance(args, (list, tuple)):
            raise ValueError(f"{where}.args: a list of command-line arguments, got {args!r}")
        env = entry.get("env", {})
        if not isinstance(env, dict):
            raise ValueError(f"{where}.env: a mapping of environment variables, got {env!r}")
        return cls(command=command, gpus=gpus, args=tuple(str(a) for a in args),
                   env={str(k): str(v) for k, v in env.items()},
                   startup_timeout_s=float(entry.get("startup_timeout_s", 1800.0)), grace_s=float(entry.get("grace_s", 30.0)))

    @property
    def argv_template(self) -> tuple[str, ...]:
        base = SERVER_COMMANDS[self.command].argv if isinstance(self.command, str) else self.command
        return (*base, *self.args)

    @property
    def conda_env(self) -> str:
        return SERVER_COMMANDS[self.command].env if isinstance(self.command, str) else "data"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the config's `models:` registry."""

    name: str
    backend: str
    model: str = ""
    base_url: str | None = None
    api_dialect: str | None = None  # backend 'openai': 'openai' | 'vllm' | 'llama_cpp' (covip.clients.dialects)
    api_key_env: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    structured_output: str = "json_schema"  # 'json_schema' | 'json_object' | 'none'
    concurrency: int = 4
    requests_per_minute: float | None = None  # per job; None: unlimited
    tokens_per_minute: float | None = None  # per job, estimated before sending (ratelimit.estimate_tokens)
    timeout_s: float = 120.0
    max_retries: int = 4
    pretrained: str | None = None  # open_clip weights tag or checkpoint path
    device: str = "auto"
    gpus: int = 0  # GPUs a job running this model in-process needs (Snakemake resource gpu)
    stand_in: bool | None = None  # None: offline stand-ins and reference policies; set true for e.g. a random-weight model
    cache: bool | None = None  # None or true: every call goes through the response cache; false: never
    options: dict[str, Any] = field(default_factory=dict)
    # Where the weights come from (rule download_models fetches them before any job that needs them):
    # a hub id ('org/name' or 'hf://org/name[@revision]'), 'local://path' or a path. Default: `model`,
    # for an entry the workflow serves or runs in-process when `model` names a hub repository.
    weights: str | None = None
    serve: ServeSpec | None = None  # the workflow starts this entry's server (covip.serving)

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> "ModelSpec":
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"models.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        if entry.get("backend") not in BACKENDS:
            raise UnknownBackendError(f"models.{name}.backend: unknown backend {entry.get('backend')!r} "
                                      f"(choose from {sorted(BACKENDS)})")
        entry = dict(entry)
        if entry.get("serve") is not None:
            entry["serve"] = ServeSpec.from_config(name, entry["serve"])
            if entry["backend"] != "openai":
                raise ValueError(f"models.{name}.serve: a served model is reached through backend 'openai' "
                                 f"(an OpenAI-compatible server), not '{entry['backend']}'")
            if entry.get("base_url"):
                raise ValueError(f"models.{name}: has both `serve` and `base_url`; the workflow writes the base_url "
                                 "of a model it serves, so drop `base_url` (or drop `serve` to use your own server)")
            if not entry.get("model"):
                raise ValueError(f"models.{name}.serve: set `model` (the name the server answers to, e.g. the hub id)")
        spec = cls(name=name, **entry)
        spec.check()
        return spec

    def check(self) -> None:
        """What can be checked of this entry alone: its options against those its backend declares, and
        for backend 'openai' its dialect, its own sampling keys and reasoning_effort (each error names
        the entry, the key and the known alternatives)."""
        where = f"models.{self.name}"
        options = self.resolved_options()
        if self.api_dialect is not None and self.backend != "openai":
            raise ValueError(f"{where}.api_dialect: only entries of backend 'openai' have a dialect "
                             f"(this one is '{self.backend}')")
        if self.backend == "openai":
            if self.api_dialect is not None and self.api_dialect not in DIALECTS:
                raise ValueError(f"{where}.api_dialect: unknown dialect {self.api_dialect!r} (choose from {list(DIALECTS)})")
            check_sampling(self.sampling, self.dialect, self.model, where)
            check_reasoning_effort(options.get("reasoning_effort"), self.dialect, self.model, where)

    def resolved_options(self) -> dict[str, Any]:
        """This entry's `options:` over the defaults its backend declares (covip.clients.backends); a key
        the backend does not read is an error naming the entry, the key and the known keys."""
        return resolved_options(self.backend, self.options, f"models.{self.name}")

    @property
    def dialect(self) -> str | None:
        """The API dialect of an 'openai' entry (explicit; else, served by the workflow, its server's:
        `vllm` or `llama_cpp`, and 'openai' for a command of your own; else 'openai' without a base_url
        and 'vllm' with one: covip.clients.dialects); None for other backends."""
        if self.backend != "openai":
            return None
        if self.api_dialect is None and self.serve is not None:
            return self.serve.command if isinstance(self.serve.command, str) else "openai"
        return resolve_dialect(self.api_dialect, self.base_url)

    @property
    def is_local(self) -> bool:
        """True for offline stand-ins (code standing in for a model)."""
        return self.backend in STAND_IN_BACKENDS

    @property
    def identity(self) -> str:
        """What produced a row: registry name, backend and model, e.g. 'verifier:openai:Qwen/Qwen3-VL-8B'
        (with '+lora:<adapter>' when a LoRA adapter is applied on the model)."""
        base = f"{self.name}:{self.backend}:{self.model}" if self.model else f"{self.name}:{self.backend}"
        adapter = self.options.get("adapter")
        return f"{base}+lora:{adapter}" if adapter else base

    @property
    def key_env(self) -> str | None:
        """The environment variable holding this entry's API key, or None when it needs none."""
        backend = BACKENDS.get(self.backend)
        if backend is None or backend.kind != "api":
            return None
        if self.api_key_env:
            return self.api_key_env
        if self.backend == "openai" and (self.base_url or self.serve is not None):
            return None  # a self-hosted server (vLLM, llama.cpp) that takes any key
        return backend.key_env

    @property
    def uses_cache(self) -> bool:
        return True if self.cache is None else self.cache

    @property
    def is_stand_in(self) -> bool:
        """True for offline stand-ins, reference policies and models marked `stand_in: true`."""
        return self.is_local if self.stand_in is None else self.stand_in


def is_stand_in(model) -> bool:
    """Whether a built model (anything with a registry `spec`) is a stand-in; False if it has no spec."""
    spec = getattr(model, "spec", None)
    return bool(spec.is_stand_in) if isinstance(spec, ModelSpec) else False


def check_credentials(spec: ModelSpec) -> None:
    """Fail before any work when a remote backend's key variable is unset (never print the key)."""
    env = spec.key_env
    if env is None:
        return
    if not os.environ.get(env):
        raise MissingCredentialsError(
            f"models.{spec.name} uses backend '{spec.backend}' but the environment variable {env} is not set; "
            f"export it (the key is read from the environment only and never written anywhere)"
        )
